# The device host's network transport: listeners (TCP, Unix), one thread per connection
# that reads frames, feeds the sans-I/O Connection and hands messages to the Session.
# Owns sockets, the hello exchange and shutdown. Must not know about devices: everything
# device-related is the Session's and the backends'.
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from . import __version__
from .host import Host
from .limits import Deadlines
from .loop import Loop, Starved
from .loopconn import Conn
from .protocol import (
    FEATURES,
    Call,
    Connection,
    Error,
    Hello,
    Message,
    ProtocolError,
    Reply,
    Role,
    negotiate,
)
from .session import Session
from .tls import peer_names, server_context

log = logging.getLogger("hwbridge.server")

RECV_SIZE = 64 * 1024
HELLO_TIMEOUT = 10.0
ACCEPT_RETRY = 0.1  # seconds before accepting again after running out of descriptors
SHUTDOWN_GRACE = 10.0  # seconds shutdown() waits for connections to close their handles


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
        self._conn_threads: set[threading.Thread] = set()
        self.on_session: Callable[[Session], None] | None = None
        m = host.manifest
        self.limits = m.limits
        self.tls: ssl.SSLContext | None = None if m.tls is None else server_context(
            m.tls, require_client_cert=not (m.policy.wants_tokens or m.policy.allow_anonymous))
        self._principals: dict[str, int] = {}  # connections per principal
        self._handshakes = 0
        # Plain connections are served by one event loop, made here so that its file
        # descriptors exist from the start (tests compare the host's fd count to a baseline).
        self._loop: Loop | None = Loop(self) if self.tls is None else None

    # -- listening ------------------------------------------------------------------------

    def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen on TCP; returns the bound address (port 0 picks a free one)."""
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(512)
        except OSError as e:  # in use, not an address of this machine, a privileged port
            s.close()
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise OSError(e.errno, f"cannot listen on {where}: {e.strerror}") from None
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
        """Serve on background threads: the event loop for plain connections, or a thread
        per connection for TLS (the ssl module's non-blocking mode is not used here)."""
        if self._loop is not None:
            for s in self._listeners:
                self._loop.add_listener(s)
            t = threading.Thread(target=self._loop.run, daemon=True, name="hwbridge-loop")
            t.start()
            self._threads.append(t)
            return
        for s in self._listeners:
            t = threading.Thread(target=self._accept_loop, args=(s,), daemon=True,
                                 name=f"hwbridge-accept-{s.fileno()}")
            t.start()
            self._threads.append(t)

    def serve_forever(self) -> None:
        self.start()
        # Timed: the kernel may hand SIGTERM to another thread (one being started, say),
        # and Python runs the handler only when the main thread next runs Python code; a
        # wait with no end would never get there (seen: a host with lane threads coming
        # and going ignored SIGTERM).
        while not self._stopping.is_set():
            self._stopping.wait(0.5)

    def shutdown(self) -> None:
        """Stop accepting, drop every connection (closing its handles), release backends."""
        self._stopping.set()
        if self._loop is not None:
            self._loop.stop()
            for t in self._threads:
                t.join(timeout=2)
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
        # Each connection thread closes its handles on the way out: wait for all of them
        # (bounded), so a stopped server has released every device.
        end = time.monotonic() + SHUTDOWN_GRACE
        with self._lock:
            live = list(self._conn_threads)
        for t in live:
            t.join(timeout=max(0.0, end - time.monotonic()))
        self.host.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        starved = Starved(ACCEPT_RETRY)
        while not self._stopping.is_set():
            try:
                sock, addr = listener.accept()
            except OSError as e:
                if self._stopping.is_set() or e.errno in (errno.EBADF, errno.EINVAL):
                    return
                if starved.failed(e):  # retried shortly, not again at once
                    self._stopping.wait(ACCEPT_RETRY)
                else:
                    log.warning("accept failed: %s", e)
                continue
            starved.ok()
            if not self.start_handshake(addr):
                sock.close()
                continue
            try:
                self.spawn(functools.partial(self._serve_conn, sock, addr), "hwbridge-conn")
            except RuntimeError as e:  # no thread for it: refuse this one, serve on
                log.warning("%s: no thread for the connection: %s; closed", addr, e)
                self.end_handshake()
                sock.close()
                self._stopping.wait(ACCEPT_RETRY)

    def start_handshake(self, addr: Any) -> bool:
        """Count a new connection as handshaking; False (close it) past the limit."""
        with self._lock:
            busy = self._handshakes >= self.limits.max_handshakes
            self._handshakes += not busy
        if busy:
            log.warning("%s: more than %d handshakes at once; closed", addr,
                        self.limits.max_handshakes)
        return not busy

    def spawn(self, run: Callable[[], None], name: str) -> None:
        """Run a connection's thread, joined by shutdown()."""
        def tracked() -> None:
            try:
                run()
            finally:
                with self._lock:
                    self._conn_threads.discard(threading.current_thread())

        t = threading.Thread(target=tracked, daemon=True, name=name)
        with self._lock:
            self._conn_threads.add(t)
        try:
            t.start()
        except RuntimeError:  # can't start new thread: not one shutdown() should wait for
            with self._lock:
                self._conn_threads.discard(t)
            raise

    def track(self, sock: socket.socket, live: bool) -> None:
        """Keep the set of open connection sockets that shutdown() drops."""
        with self._lock:
            if live:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    # -- one connection -------------------------------------------------------------------

    def _serve_conn(self, sock: socket.socket, addr: Any) -> None:
        peer = _peer_name(sock, addr)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._conns.add(sock)
        conn = Connection(Role.SERVER, self.max_frame)
        send_lock = threading.Lock()
        deadlines = Deadlines(sock, self.limits)
        if self.tls is not None:
            raw = sock
            try:
                sock = deadlines.sock = self._start_tls(raw, conn, deadlines)
            except (OSError, ValueError) as e:
                log.info("%s: TLS handshake failed: %s", peer, e)
                if self.host.audit is not None:
                    self.host.audit.write("connect", principal="", peer=peer, op="refuse",
                                          detail=f"TLS handshake failed: {e}", allowed=False,
                                          errno=errno.EACCES)
                self.end_handshake()
                with self._lock:
                    self._conns.discard(raw)
                raw.close()
                return
            with self._lock:
                self._conns.discard(raw)
                self._conns.add(sock)

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

        def reply(rid: int, result: Any) -> None:
            with send_lock:
                raw = conn.reply_bytes(rid, result)
                if raw is None:
                    bufs = conn.send(Reply(rid, result))
                try:
                    if raw is not None:
                        sock.sendall(raw)
                    elif len(bufs) == 1:
                        sock.sendall(bufs[0])
                    else:
                        _sendall_vec(sock, bufs)
                except OSError:
                    pass  # the peer went away; the read side notices and cleans up

        session = Session(self.host, send, peer, reply=reply)
        try:
            self._run(sock, conn, session, send, deadlines)
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
            if not deadlines.handshake_done:
                self.end_handshake()
            if deadlines.admitted:
                self.leave(session)
            with self._lock:
                self._conns.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _run(self, sock: socket.socket, conn: Connection, session: Session,
             send: Callable[[Message], None], deadlines: Deadlines) -> None:
        greeted = False
        recv = sock.recv
        while True:
            # recv() (not recv_into a per-connection buffer): an idle connection holds no
            # buffer, and the bytes object goes to the protocol core without another copy.
            if not greeted:
                deadlines.handshake()
            try:
                chunk = recv(RECV_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError):
                if greeted and not conn.buffered() and session._waiting:
                    continue  # an operation is waiting on a device: not idle
                log.info("%s: receive deadline passed; closing", session.peer)
                return
            n = len(chunk)
            for ev in conn.receive(chunk):
                if type(ev) is Call:
                    if not greeted:
                        raise ProtocolError("a call before the hello")
                    session.handle(ev)
                    continue
                if isinstance(ev, Hello):
                    if not self.greet(sock, session, ev, deadlines, send):
                        return
                    greeted = True
                    continue
                assert greeted and not isinstance(ev, Hello)
                session.handle(ev)
            conn.check()
            if n == 0:
                return
            if greeted:
                deadlines.greeted(conn.buffered())

    # -- identity and limits (bridge/tls.py, grants.py, limits.py) -------------------------

    def greet(self, sock: socket.socket, session: Session, hello: Hello,
              state: Deadlines | Conn, send: Callable[[Message], None]) -> bool:
        """Admit the client of ``hello`` and answer it; False if it was refused (told why)."""
        try:
            self._admit(sock, session, hello.info.get("token"), state)
        except OSError as e:  # refused: say why, to this client alone
            self._audit(session, "refuse", e.strerror or str(e), e.errno)
            send(Error(0, e.errno or errno.EACCES, e.strerror or str(e)))
            log.info("%s: refused: %s", session.peer, e)
            return False
        self._audit(session, "admit", "TLS" if self.tls else "plain", 0)
        feats = negotiate(FEATURES, hello.features)
        send(Hello(features=feats, info={
            "server": f"hwbridge {__version__}",
            "devices": session.device_list(),
            "max_frame": self.max_frame,
            "principal": session.principal,
        }))
        if self.on_session is not None:
            self.on_session(session)
        return True


    def _start_tls(self, sock: socket.socket, conn: Connection,
                   deadlines: Deadlines) -> ssl.SSLSocket:
        """The TLS handshake within the handshake deadline; a plaintext hwbridge client
        gets a readable refusal instead of a TLS alert."""
        assert self.tls is not None
        deadlines.handshake()
        first = sock.recv(1, socket.MSG_PEEK)
        # The ssl module keeps one deadline over the whole handshake (SO_RCVTIMEO would
        # restart with every trickled byte).
        sock.settimeout(max(deadlines.handshake_end - time.monotonic(), 0.001))
        if first and first != b"\x16":  # not a TLS handshake record
            with contextlib.suppress(OSError):
                sock.sendall(conn.send(Error(0, errno.EPROTO, "this host speaks TLS only: "
                                                              "connect with hwbridges://"))[0])
            raise ValueError("plaintext on the TLS port")
        tls = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            tls.do_handshake()
            tls.settimeout(None)
        except BaseException:
            tls.close()
            raise
        return tls

    def _admit(self, sock: socket.socket, session: Session, token: object,
               deadlines: Deadlines | Conn) -> None:
        """Decide who the client is and what it sees; PermissionError refuses it."""
        policy = self.host.manifest.policy
        names = peer_names(sock.getpeercert()) if isinstance(sock, ssl.SSLSocket) else []
        deadlines.handshake_done = True
        self.end_handshake()
        who = policy.admit(names, token, isinstance(sock, ssl.SSLSocket))
        with self._lock:
            n = self._principals.get(who, 0)
            if n >= self.limits.max_connections_per_principal:
                raise ConnectionRefusedError(
                    errno.ECONNREFUSED, f"{who} has {n} connections to this host already "
                    f"(limit {self.limits.max_connections_per_principal})")
            self._principals[who] = n + 1
        deadlines.admitted = True
        view = policy.view(who, self.host.manifest.devices)
        session.principal, session.devices = who, view.devices
        session.fit = view.fit if view.functions else None

    def _audit(self, session: Session, op: str, detail: str, err: int | None) -> None:
        a = self.host.audit
        if a is not None:
            who = session.principal if op == "admit" else ""  # a refused client is nobody
            a.write("connect", principal=who, peer=session.peer, op=op,
                    detail=detail, allowed=op == "admit", errno=err or 0)

    def end_handshake(self) -> None:
        with self._lock:
            self._handshakes -= 1

    def leave(self, session: Session) -> None:
        with self._lock:
            n = self._principals.get(session.principal, 0) - 1
            if n > 0:
                self._principals[session.principal] = n
            else:
                self._principals.pop(session.principal, None)


def _sendall_vec(sock: socket.socket, bufs: list[bytes | memoryview]) -> None:
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg() on TLS: one record write each
        for b in bufs:
            sock.sendall(b)
        return
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
