# The device host's network transport: listeners (TCP, Unix), one thread per connection
# that reads frames, feeds the sans-I/O Connection and hands messages to the Session.
# Owns sockets, the hello exchange and shutdown. Must not know about devices: everything
# device-related is the Session's and the backends'.
from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from . import __version__
from .protocol import (
    FEATURES,
    NEED_DATA,
    Connection,
    Error,
    Hello,
    Message,
    ProtocolError,
    Role,
    negotiate,
)
from .session import Host, Session

log = logging.getLogger("hwbridge.server")

RECV_SIZE = 64 * 1024
HELLO_TIMEOUT = 10.0


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address must be HOST:PORT, not {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class Server:
    """Serves one Host on any number of listening sockets."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.max_frame = host.manifest.max_frame
        self._listeners: list[socket.socket] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.on_session: Callable[[Session], None] | None = None

    # -- listening ------------------------------------------------------------------------

    def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on TCP; returns the bound address (port 0 picks a free one)."""
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(512)
        self._listeners.append(s)
        addr = s.getsockname()
        return addr[0], addr[1]

    def listen_unix(self, path: str) -> str:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        os.chmod(path, 0o660)
        s.listen(512)
        self._listeners.append(s)
        return path

    def start(self) -> None:
        """Accept connections on background threads."""
        for s in self._listeners:
            t = threading.Thread(target=self._accept_loop, args=(s,), daemon=True,
                                 name=f"hwbridge-accept-{s.fileno()}")
            t.start()
            self._threads.append(t)

    def serve_forever(self) -> None:
        self.start()
        self._stopping.wait()

    def shutdown(self) -> None:
        """Stop accepting, drop every connection (closing its handles), release backends."""
        self._stopping.set()
        for s in self._listeners:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=2)
        self.host.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                sock, addr = listener.accept()
            except OSError as e:
                if self._stopping.is_set() or e.errno in (errno.EBADF, errno.EINVAL):
                    return
                log.warning("accept failed: %s", e)
                continue
            t = threading.Thread(target=self._serve_conn, args=(sock, addr), daemon=True,
                                 name="hwbridge-conn")
            t.start()

    # -- one connection -------------------------------------------------------------------

    def _serve_conn(self, sock: socket.socket, addr: Any) -> None:
        peer = _peer_name(sock, addr)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns.add(sock)
        conn = Connection(Role.SERVER, self.max_frame)
        send_lock = threading.Lock()

        def send(msg: Message) -> None:
            with send_lock:
                bufs = conn.send(msg)
                try:
                    if len(bufs) == 1:
                        sock.sendall(bufs[0])
                    else:
                        _sendall_vec(sock, bufs)
                except OSError:
                    pass  # the peer went away; the read side notices and cleans up

        session = Session(self.host, send, peer)
        try:
            self._run(sock, conn, session, send)
        except ProtocolError as e:
            log.info("%s: protocol error: %s", peer, e)
            with contextlib.suppress(Exception):
                send(Error(0, errno.EPROTO, f"protocol error: {e}"))
        except OSError as e:
            log.debug("%s: connection ended: %s", peer, e)
        except Exception:
            log.exception("%s: connection failed", peer)
        finally:
            session.close()
            with self._lock:
                self._conns.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _run(self, sock: socket.socket, conn: Connection, session: Session,
             send: Callable[[Message], None]) -> None:
        sock.settimeout(HELLO_TIMEOUT)
        greeted = False
        recv = sock.recv
        while True:
            # recv() (not recv_into a per-connection buffer): an idle connection holds no
            # buffer, and the bytes object goes to the protocol core without another copy.
            chunk = recv(RECV_SIZE)
            n = len(chunk)
            conn.receive_data(chunk)
            while True:
                ev = conn.next_event()
                if ev is NEED_DATA:
                    break
                if ev is None:
                    return
                if isinstance(ev, Hello):
                    feats = negotiate(FEATURES, ev.features)
                    send(Hello(features=feats, info={
                        "server": f"hwbridge {__version__}",
                        "devices": self.host.device_list(),
                        "max_frame": self.max_frame,
                    }))
                    greeted = True
                    sock.settimeout(None)
                    if self.on_session is not None:
                        self.on_session(session)
                    continue
                assert greeted and not isinstance(ev, Hello)
                session.handle(ev)
            if n == 0:
                return


def _sendall_vec(sock: socket.socket, bufs: list[bytes | memoryview]) -> None:
    views = [memoryview(b).cast("B") for b in bufs]
    while views:
        sent = sock.sendmsg(views)
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def _peer_name(sock: socket.socket, addr: Any) -> str:
    if sock.family == socket.AF_UNIX:
        return "unix"
    try:
        return f"{addr[0]}:{addr[1]}"
    except (TypeError, IndexError):
        return str(addr)
