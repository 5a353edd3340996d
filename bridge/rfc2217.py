# RFC 2217 export of a host's serial device (`hwbridge serve --rfc2217 uart0=HOST:PORT`), so
# third-party tools (pyserial's rfc2217:// client, ser2net clients, terminal programs) reach
# a bridged port. The telnet and COM-PORT-OPTION handling is pyserial's own PortManager; this
# module only gives it a local pyserial view of a host-side SerialHandle (no network hop) and
# moves bytes between the handle and one TCP client at a time. Must not know about the
# hwbridge wire protocol or the session.
from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
from typing import TYPE_CHECKING, Any

import serial
from serial.rfc2217 import PortManager

from .serialhost import SerialHandle

if TYPE_CHECKING:
    from .host import Host

log = logging.getLogger("hwbridge.rfc2217")

MODEM_POLL = 0.5  # seconds between modem-line checks (notifications to the client)


class LocalPort(serial.SerialBase):  # type: ignore[misc]
    """pyserial's interface over a host-side SerialHandle, for PortManager."""

    def __init__(self, handle: SerialHandle) -> None:
        super().__init__()
        self.handle = handle
        s = handle.settings
        self._baudrate, self._bytesize, self._parity = s.baudrate, s.bytesize, s.parity
        self._stopbits, self._xonxoff, self._rtscts = s.stopbits, s.xonxoff, s.rtscts
        self._dsrdtr = s.dsrdtr
        self._port = handle.spec.name
        self.is_open = True

    def _reconfigure_port(self, force_update: bool = False) -> None:
        self.handle.configure({
            "baudrate": int(self._baudrate), "bytesize": self._bytesize,
            "parity": self._parity, "stopbits": self._stopbits,
            "xonxoff": bool(self._xonxoff), "rtscts": bool(self._rtscts),
            "dsrdtr": bool(self._dsrdtr)})

    def _update_dtr_state(self) -> None:
        self.handle.set_lines(bool(self._dtr_state), None)

    def _update_rts_state(self) -> None:
        self.handle.set_lines(None, bool(self._rts_state))

    def _update_break_state(self) -> None:
        self.handle.break_condition(bool(self._break_state))

    @property
    def cts(self) -> bool:
        return self.handle.modem_lines()["cts"]

    @property
    def dsr(self) -> bool:
        return self.handle.modem_lines()["dsr"]

    @property
    def ri(self) -> bool:
        return self.handle.modem_lines()["ri"]

    @property
    def cd(self) -> bool:
        return self.handle.modem_lines()["cd"]

    def reset_input_buffer(self) -> None:
        self.handle.reset_input()

    def reset_output_buffer(self) -> None:
        self.handle.reset_output()

    def write(self, data: Any) -> int:
        view = memoryview(serial.to_bytes(data))
        while view:
            n = self.handle.write_nowait(view.tobytes())
            if n is None:
                self.handle.wait(True, 1.0)
                continue
            view = view[n:]
        return len(data)


class _Connection:
    """The thread-safe ``write`` PortManager sends through."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.sock.sendall(data)


def parse_export(text: str) -> tuple[str, str, int]:
    """'uart0=HOST:PORT' (or 'uart0=PORT', loopback) -> (device, host, port)."""
    from .server import parse_listen

    device, sep, addr = text.partition("=")
    if not sep or not device:
        raise ValueError(f"--rfc2217 takes DEVICE=HOST:PORT, not {text!r}")
    host, port = parse_listen(addr if ":" in addr else f":{addr}")
    return device, host, port


class Rfc2217Export:
    """Serves one serial device of ``host`` as an RFC 2217 port, one client at a time."""

    def __init__(self, host: Host, device: str, addr: tuple[str, int]) -> None:
        spec = host.manifest.devices.get(device)
        if spec is None:
            raise ValueError(f"--rfc2217: no device {device!r} in the manifest")
        if spec.kind != "serial":
            raise ValueError(f"--rfc2217: {device} is a {spec.kind} device, not a serial port")
        self.host = host
        self.spec = spec
        fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.listener = socket.socket(fam, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(addr)
        self.listener.listen(4)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"hwbridge-rfc2217-{device}")

    @classmethod
    def start(cls, host: Host, text: str) -> Rfc2217Export:
        """Parse 'DEVICE=HOST:PORT', listen and start serving."""
        device, h, port = parse_export(text)
        export = cls(host, device, (h, port))
        export._thread.start()
        return export

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                sock, peer = self.listener.accept()
            except OSError:
                return
            try:
                self._serve(sock)
            except Exception:
                log.exception("rfc2217 %s: client %s", self.spec.name, peer)
            finally:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handle = self.host.backend(self.spec.backend).open(self.spec, self.spec.access)
        if not isinstance(handle, SerialHandle):
            handle.close()
            raise OSError(errno.ENOTTY, f"{self.spec.name} is not a serial port")
        conn = _Connection(sock)
        done = threading.Event()
        try:
            manager = PortManager(LocalPort(handle), conn)
            pump = threading.Thread(target=self._to_client, args=(handle, manager, conn, done),
                                    daemon=True, name=f"hwbridge-rfc2217-tx-{self.spec.name}")
            pump.start()
            while not self._closed.is_set():
                data = sock.recv(64 * 1024)
                if not data:
                    break
                out = b"".join(manager.filter(data))
                if out:
                    manager.serial.write(out)
        except OSError as e:
            log.debug("rfc2217 %s: connection ended: %s", self.spec.name, e)
        finally:
            done.set()
            handle.close()

    def _to_client(self, handle: SerialHandle, manager: PortManager, conn: _Connection,
                   done: threading.Event) -> None:
        """Device -> client, IAC-escaped; modem-line changes notified as they happen."""
        try:
            while not done.is_set():
                if handle.wait(False, MODEM_POLL):
                    data = handle.take(64 * 1024)
                    if data:
                        conn.write(b"".join(manager.escape(data)))
                    elif handle.gone is not None:  # all it received is sent: end too
                        raise handle.gone
                if not done.is_set():
                    manager.check_modem_lines()
        except OSError as e:
            log.debug("rfc2217 %s: send ended: %s", self.spec.name, e)
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
