# Serial ports of the posix backend: a tty opened through the hardened path code, put in
# raw mode and driven with termios; a reader thread per open port fills the SerialHandle's
# buffer from the moment of opening. Modem-line ioctls a pty lacks (TIOCMGET and friends
# fail there) are emulated from the last DTR/RTS set, so pyserial code and RFC 2217
# negotiation work on a pty. Must not know about the wire or the session.
from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import struct
import termios
import threading
import time
from typing import TYPE_CHECKING

from .backend import Access
from .posix import WAIT_SLICE, open_fd
from .serialhost import LineSettings, SerialHandle, initial_settings

if TYPE_CHECKING:
    from .manifest import DeviceSpec
    from .posix import PosixBackend

READ_CHUNK = 64 * 1024
#: read errors that mean the port is gone for good: EIO (a pty whose other end closed, a
#: USB adapter unplugged), ENXIO and ENODEV (the device node's device went away)
GONE = frozenset({errno.EIO, errno.ENXIO, errno.ENODEV})

# Linux asm-generic/termbits.h and ioctls.h: arbitrary rates through struct termios2.
_BOTHER = 0o010000
_CBAUD = 0o010017
_CMSPAR = 0o10000000000
_TCGETS2 = 0x802C542A
_TCSETS2 = 0x402C542B
_TIOCSBRK = 0x5427  # asm-generic/ioctls.h (not in Python's termios module)
_TIOCCBRK = 0x5428

_BYTESIZE = {5: termios.CS5, 6: termios.CS6, 7: termios.CS7, 8: termios.CS8}
_TIOCM = {"cts": termios.TIOCM_CTS, "dsr": termios.TIOCM_DSR, "ri": termios.TIOCM_RI,
          "cd": termios.TIOCM_CD}
# errno values by which a tty says "I have no modem lines" (a pty says EINVAL or ENOTTY)
_NO_MODEM = (errno.EINVAL, errno.ENOTTY, errno.ENOIOCTLCMD if hasattr(errno, "ENOIOCTLCMD")
             else errno.ENOTTY)


def _speed(baudrate: int) -> int | None:
    """The termios Bxxx constant for a standard rate, None for any other rate."""
    value = getattr(termios, f"B{baudrate}", None)
    return value if isinstance(value, int) else None


class PosixSerial(SerialHandle):
    """A real tty (or pty) on the host."""

    def __init__(self, spec: DeviceSpec, fd: int) -> None:
        self.fd = fd
        super().__init__(spec, _current(fd).changed(_line_options(spec)))
        self._lock = threading.Lock()
        self._emulated = False  # modem lines answered from our own state
        self._locked = False
        self.apply_settings(self.settings)
        self.apply_lines()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._reader = threading.Thread(target=self._read_loop, daemon=True,
                                        name=f"hwbridge-serial-{spec.name}")
        self._reader.start()

    # -- the reader thread ----------------------------------------------------------------

    def _read_loop(self) -> None:
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        p.register(self._wake_r, select.POLLIN)
        while not self.closed:
            try:
                ready = p.poll(WAIT_SLICE * 1000)
                if not ready or self.closed:
                    continue
                data = os.read(self.fd, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError as e:
                if self.closed or e.errno == errno.EBADF:
                    return
                if e.errno in GONE:  # an adapter unplugged, a pty's other end closed
                    self.lost(e)
                    return
                time.sleep(WAIT_SLICE / 5)
                continue
            if not data and any(fd == self.fd and ev & select.POLLHUP for fd, ev in ready):
                # Hung up: readable with nothing to read (a raw pty whose other end closed);
                # pyserial says "device disconnected" for the same.
                self.lost(OSError(errno.EIO, "hung up (the other end closed)"))
                return
            self.feed(data)

    # -- SerialHandle primitives ----------------------------------------------------------

    def transmit_nowait(self, data: bytes) -> int | None:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return None

    def wait_writable(self, timeout: float | None) -> bool:
        p = select.poll()
        p.register(self.fd, select.POLLOUT)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            step = WAIT_SLICE if end is None else max(0.0, min(WAIT_SLICE, end - time.monotonic()))
            if p.poll(step * 1000):
                return True
            self._check()
            if end is not None and time.monotonic() >= end:
                return False

    def apply_settings(self, new: LineSettings) -> None:
        try:
            self._apply_settings(new)
        except termios.error as e:  # not an OSError: give it its errno back
            code, text = e.args if len(e.args) == 2 else (errno.EIO, str(e))
            raise OSError(code, f"the port refused the settings: {text}") from None

    def _apply_settings(self, new: LineSettings) -> None:
        iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(self.fd)
        # raw mode, as pyserial sets it
        lflag &= ~(termios.ICANON | termios.ECHO | termios.ECHOE | termios.ECHOK |
                   termios.ECHONL | termios.ISIG | termios.IEXTEN | termios.ECHOCTL |
                   termios.ECHOKE)
        oflag &= ~(termios.OPOST | termios.ONLCR | termios.OCRNL)
        iflag &= ~(termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IGNBRK |
                   termios.IUCLC | termios.PARMRK | termios.INPCK | termios.ISTRIP)
        cflag |= termios.CLOCAL | termios.CREAD
        cflag &= ~(termios.CSIZE | termios.PARENB | termios.PARODD | _CMSPAR |
                   termios.CSTOPB | termios.CRTSCTS)
        cflag |= _BYTESIZE[new.bytesize]
        if new.stopbits != 1:
            cflag |= termios.CSTOPB  # 1.5 is CSTOPB too, as in pyserial
        cflag |= {"N": 0, "E": termios.PARENB, "O": termios.PARENB | termios.PARODD,
                  "M": termios.PARENB | _CMSPAR | termios.PARODD,
                  "S": termios.PARENB | _CMSPAR}[new.parity]
        if new.parity != "N":
            iflag |= termios.INPCK
        iflag &= ~(termios.IXON | termios.IXOFF | termios.IXANY)
        if new.xonxoff:
            iflag |= termios.IXON | termios.IXOFF
        if new.rtscts:
            cflag |= termios.CRTSCTS
        cc[termios.VMIN], cc[termios.VTIME] = 0, 0
        std = _speed(new.baudrate)
        if std is not None:
            ispeed = ospeed = std
        with self._lock:
            termios.tcsetattr(self.fd, termios.TCSANOW,
                              [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])
            if std is None:
                self._custom_speed(new.baudrate)

    def _custom_speed(self, baudrate: int) -> None:
        """Any rate the driver accepts, through struct termios2 and BOTHER (Linux)."""
        buf = array.array("i", [0] * 64)
        try:
            fcntl.ioctl(self.fd, _TCGETS2, buf)
            buf[2] = (buf[2] & ~_CBAUD) | _BOTHER
            buf[9] = buf[10] = baudrate
            fcntl.ioctl(self.fd, _TCSETS2, buf)
        except OSError as e:
            raise ValueError(f"baudrate {baudrate} is not supported by this port: "
                             f"{e.strerror}") from None

    def apply_lines(self) -> None:
        with self._lock:
            for name, bit in (("dtr", termios.TIOCM_DTR), ("rts", termios.TIOCM_RTS)):
                req = termios.TIOCMBIS if getattr(self, name) else termios.TIOCMBIC
                self._modem_ioctl(req, struct.pack("I", bit))
            self._modem_ioctl(_TIOCSBRK if self.break_on else _TIOCCBRK, 0)

    def modem_lines(self) -> dict[str, bool]:
        with self._lock:
            raw = self._modem_ioctl(termios.TIOCMGET, struct.pack("I", 0))
        if raw is None:
            # A pty has no modem lines: answer as a port whose peer is always ready.
            return {"cts": True, "dsr": True, "ri": False, "cd": True}
        bits = struct.unpack("I", raw)[0]
        return {name: bool(bits & bit) for name, bit in _TIOCM.items()}

    def _modem_ioctl(self, request: int, arg: bytes | int) -> bytes | None:
        """Run a modem-line ioctl; None (and emulation from now on) if the tty has none."""
        if self._emulated:
            return None
        try:
            result = fcntl.ioctl(self.fd, request, arg)
        except OSError as e:
            if e.errno not in _NO_MODEM:
                raise
            self._emulated = True
            return None
        return result if isinstance(result, bytes) else b""

    def output_pending(self) -> int:
        buf = array.array("i", [0])
        fcntl.ioctl(self.fd, termios.TIOCOUTQ, buf, True)
        return buf[0]

    def discard_output(self) -> None:
        _tcflush(self.fd, termios.TCOFLUSH)

    def discard_input(self) -> None:
        _tcflush(self.fd, termios.TCIFLUSH)

    def set_exclusive(self, on: bool) -> None:
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if on else fcntl.LOCK_UN)
        except BlockingIOError:
            raise OSError(errno.EBUSY, "the port is locked by another user") from None
        self._locked = on

    def do_ioctl(self, request: int, arg: int | bytearray) -> int:
        with self._lock:
            if isinstance(arg, bytearray):
                return int(fcntl.ioctl(self.fd, request, arg, True))
            return int(fcntl.ioctl(self.fd, request, arg))

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            super().close()
        os.write(self._wake_w, b"x")
        self._reader.join(WAIT_SLICE * 4)
        for fd in (self.fd, self._wake_r, self._wake_w):
            os.close(fd)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "fd": self.fd, "modem_emulated": self._emulated}


def _line_options(spec: DeviceSpec) -> dict[str, object]:
    initial_settings(spec.options)  # validates
    keys = set(LineSettings.__dataclass_fields__)
    return {k: v for k, v in spec.options.items() if k in keys}


def _current(fd: int) -> LineSettings:
    """The tty's settings now, so a port keeps what another user set (unless the manifest
    says otherwise)."""
    _, _, cflag, _, _, ospeed, _ = termios.tcgetattr(fd)
    if cflag & _CBAUD == _BOTHER:
        buf = array.array("i", [0] * 64)
        fcntl.ioctl(fd, _TCGETS2, buf)
        baudrate = buf[10]
    else:
        baudrate = next((int(name[1:]) for name in dir(termios) if name[:1] == "B"
                         and name[1:].isdigit() and getattr(termios, name) == ospeed), 9600)
    size = {v: k for k, v in _BYTESIZE.items()}[cflag & termios.CSIZE]
    parity = "N"
    if cflag & termios.PARENB:
        odd = bool(cflag & termios.PARODD)
        parity = ("M" if odd else "S") if cflag & _CMSPAR else ("O" if odd else "E")
    return LineSettings(baudrate=baudrate or 9600, bytesize=size, parity=parity,
                        stopbits=2 if cflag & termios.CSTOPB else 1,
                        xonxoff=False,  # raw mode, as pyserial opens a port: no IXON
                        rtscts=bool(cflag & termios.CRTSCTS))


def _tcflush(fd: int, queue: int) -> None:
    try:
        termios.tcflush(fd, queue)
    except termios.error as e:
        raise OSError(*e.args) from None


def open_device(backend: PosixBackend, spec: DeviceSpec, access: Access) -> PosixSerial:
    """Open the tty of ``spec``, raw, with the manifest's line settings."""
    fd = open_fd(spec, backend.path(spec), access)
    try:
        if not os.isatty(fd):
            raise OSError(errno.ENOTTY, f"{spec.name} is not a terminal device")
        return PosixSerial(spec, fd)
    except BaseException:
        os.close(fd)
        raise
