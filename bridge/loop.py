# The device host's event loop for plain (TCP and Unix) connections: one thread waits on
# every socket with a selector, reads frames, and runs the calls that cannot wait right
# there; everything else goes to the connection's own "lane" thread, in order. Owns
# reading, the receive deadlines (handshake, frame, idle) as a periodic sweep, and
# connection teardown; sending and the lane are bridge/loopconn.py. TLS connections keep a
# thread each (bridge/server.py).
#
# Why a loop: with a thread per connection, every request wakes a thread that then fights
# for the GIL; many busy clients turn into a convoy of GIL hand-offs. One thread serving
# every ready socket in turn does the same work with none of them.
#
# What runs on the loop: an allowed op on an open handle, with no tap, that cannot wait:
# a blocking op's probe (which raises WouldBlock instead of waiting; the wait then happens
# on a thread, as before) or a non-blocking op the handle declares inline
# (DeviceHandle.inline). Anything else (open, close, batches, ioctls that may sleep in the
# kernel, library calls, taps) runs on the lane, so a slow device never stalls the loop.
# Once a connection has work on its lane, its later calls queue behind it, keeping their
# order.
from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

from .loopconn import CLOSE, PAUSE_OUT, Conn
from .poller import READ, READABLE, WRITE, make_poller
from .protocol import MISS, Call, Error, Hello, ProtocolError

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("hwbridge.server")

RECV_SIZE = 64 * 1024
SWEEP = 0.1  # seconds between deadline sweeps (deadlines are whole seconds or halves)
FINAL_SEND = 2.0  # seconds a closing connection may take to send its last replies
#: accept() errors that mean "out of descriptors or memory now": the connection waits in
#: the listen queue and accepting is tried again a little later
STARVED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Starved:
    """Whether accept() is failing for want of descriptors or memory: logged once when it
    starts (``failed``, True for such an error) and once when it works again (``ok``), not
    once per retry. Used by the event loop and by the TLS accept thread alike."""

    def __init__(self, retry: float) -> None:
        self.retry = retry  # seconds between tries, for the message
        self.on = False

    def failed(self, e: OSError) -> bool:
        if e.errno not in STARVED:
            return False
        if not self.on:
            self.on = True
            log.warning("accept failed: %s; new connections wait until it succeeds (tried "
                        "every %.1f s)", e, self.retry)
        return True

    def ok(self) -> None:
        if self.on:
            self.on = False
            log.warning("accepting connections again")


class Loop:
    """The event loop serving every plain connection of a Server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.poller = make_poller()
        self.conns: dict[int, Conn] = {}
        self.listeners: dict[int, socket.socket] = {}
        # Listeners not polled until the next sweep: accept failed for want of file
        # descriptors or memory, and a level-triggered poll would spin on them meanwhile.
        self.paused: set[int] = set()
        self._starved = Starved(SWEEP)
        self.tid = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.poller.register(self._wake_r.fileno(), READ)
        self._dirty: set[Conn] = set()
        self._dirty_lock = threading.Lock()
        self._woken = False
        self._stopping = False
        # One receive buffer for every connection between frames (only the loop thread
        # reads): a request is decoded in place from it, with no allocation per receive.
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)
        self.max_in_flight = server.limits.max_in_flight

    def add_listener(self, s: socket.socket) -> None:
        s.setblocking(False)
        self.listeners[s.fileno()] = s
        self.poller.register(s.fileno(), READ)

    def stop(self) -> None:
        self._stopping = True
        self._wake()

    # -- requests from other threads ------------------------------------------------------

    def dirty(self, c: Conn) -> None:
        """Ask the loop to recompute what ``c`` waits for (output queued, lane drained)."""
        with self._dirty_lock:
            self._dirty.add(c)
            if self._woken:
                return
            self._woken = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        self.tid = threading.get_ident()
        poll = self.poller.poll
        conns = self.conns
        readable = self._readable
        monotonic = time.monotonic
        read, write, ready = READ, WRITE, READABLE
        wake = self._wake_r.fileno()
        next_sweep = monotonic() + SWEEP
        try:
            while not self._stopping:
                for fd, ev in poll(SWEEP if conns or self.paused else None):
                    c = conns.get(fd)
                    if c is not None:
                        try:  # (free in 3.11 unless something raises)
                            if ev == read:  # the common event: a request came
                                readable(c)
                            elif ev & write and not c.flush():
                                self.end(c)
                            elif ev & ready:
                                readable(c)
                            else:
                                self.update(c)
                        except Exception:  # a bug serving one client ends that client only
                            log.exception("%s: connection failed", c.peer)
                            self.end(c)
                    elif fd == wake:
                        self._drain_wake()
                    elif fd in self.listeners:
                        self._accept(self.listeners[fd])
                if conns or self.paused:
                    now = monotonic()
                    if now >= next_sweep:
                        next_sweep = now + SWEEP
                        self._sweep(now)
        finally:
            for c in list(conns.values()):
                self.end(c)
            self.poller.close()
            self._wake_r.close()
            self._wake_w.close()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_r.recv(4096)
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            self._woken = False
        for c in dirty:
            self.update(c)

    def update(self, c: Conn) -> None:
        """Wait for what ``c`` needs now: output room while replies are queued; more
        requests unless too many replies wait or the lane is full (back-pressure)."""
        if self.conns.get(c.fd) is not c:
            return  # ended: its lane sends what is left
        want = WRITE if c.out else 0
        if c.out_bytes < PAUSE_OUT and c.lane_busy < self.max_in_flight:
            want |= READ
        if want != c.mask:
            if want and c.mask:
                self.poller.modify(c.fd, want)
            elif want:
                self.poller.register(c.fd, want)
            else:
                self.poller.unregister(c.fd)
            c.mask = want

    def _accept(self, listener: socket.socket) -> None:
        srv = self.server
        for _ in range(64):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if self._starved.failed(e):  # retried at the next sweep, not at once
                    self.poller.unregister(listener.fileno())
                    self.paused.add(listener.fileno())
                return
            self._starved.ok()
            if not srv.start_handshake(addr):
                sock.close()
                continue
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            from .server import _peer_name

            c = Conn(self, sock, _peer_name(sock, addr), srv.max_frame)
            self.conns[c.fd] = c
            srv.track(sock, True)
            self.update(c)

    def _readable(self, c: Conn) -> None:
        try:
            if c.frame_started is None:  # between frames: into the shared buffer
                n = c.sock.recv_into(self._rbuf)
                if c.greeted and not c.lane_busy:
                    call = c.conn.call_in(self._rview, n)
                    if call is not MISS:  # one whole call: the hot path
                        c.rx = True
                        c.corked = True
                        try:
                            if not c.session.call_inline(call):
                                c.to_lane(call)
                        finally:
                            c.corked = False
                            if c.held:
                                c.send_held()
                        if c.out or c.lane_busy >= self.max_in_flight:
                            self.update(c)
                        return
                chunk: bytes | bytearray = self._rbuf[:n] if n else b""
            else:  # the rest of a frame: kept by the Connection as it is, no copy
                chunk = c.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            log.debug("%s: connection ended: %s", c.peer, e)
            chunk = b""
        c.rx = True
        session = c.session
        try:
            for ev in c.conn.receive(chunk):
                if type(ev) is Call and c.greeted:
                    if c.lane_busy or not session.call_inline(ev):
                        c.to_lane(ev)
                elif isinstance(ev, Hello) and not c.greeted:
                    if not self._greet(c, ev):
                        self.end(c)
                        return
                elif not c.greeted:
                    raise ProtocolError("a call before the hello")
                else:
                    c.to_lane(ev)
            c.conn.check()
        except ProtocolError as e:
            log.info("%s: protocol error: %s", c.peer, e)
            self.end(c, Error(0, errno.EPROTO, f"protocol error: {e}"))
            return
        except Exception:
            log.exception("%s: connection failed", c.peer)
            self.end(c)
            return
        if not chunk:
            self.end(c)
            return
        if c.conn.buffered():
            if c.frame_started is None:
                c.frame_started = time.monotonic()
        else:
            c.frame_started = None
        if c.lane_busy >= self.max_in_flight or c.out:
            self.update(c)

    def _greet(self, c: Conn, hello: Hello) -> bool:
        if not self.server.greet(c.sock, c.session, hello, c, c.send):
            return False
        c.greeted = True
        return True

    def _sweep(self, now: float) -> None:
        for fd in self.paused:
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile (shutdown)
                self.poller.register(fd, READ)
        self.paused.clear()
        limits = self.server.limits
        for c in list(self.conns.values()):
            if c.rx:
                c.rx = False
                c.last_rx = now
            why = ""
            if not c.greeted:
                if now - c.accepted > limits.handshake_timeout:
                    why = "handshake deadline passed"
            elif c.frame_started is not None:
                if now - c.frame_started > limits.frame_timeout:
                    why = "frame deadline passed"
            elif limits.idle_timeout and now - c.last_rx > limits.idle_timeout:
                if c.session._waiting or c.lane_busy:
                    c.last_rx = now  # an operation is waiting on a device: not idle
                else:
                    why = "idle deadline passed"
            if why:
                log.info("%s: %s; closing", c.peer, why)
                self.end(c)

    # -- teardown -------------------------------------------------------------------------

    def end(self, c: Conn, error: Error | None = None) -> None:
        """Stop serving ``c`` (loop thread). Its lane finishes: the calls queued there,
        then ``error`` (why it ended) if any, then closing its handles and socket, so
        closing devices never stalls the loop."""
        if self.conns.pop(c.fd, None) is None:
            return
        if c.mask:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(c.fd)
            c.mask = 0
        with c.lock:
            c.closing = True
            c.drained.notify_all()
        if error is not None:
            c.to_lane(error)
        c.to_lane(CLOSE)

    def finish(self, c: Conn) -> None:
        """The last act of a connection's lane: send what is queued (briefly, best
        effort), close its handles, close its socket."""
        srv = self.server
        with c.lock:
            c.ended = True
            out = list(c.out)
            c.out.clear()
            c.out_bytes = 0
            c.drained.notify_all()
        try:
            if out:
                _send_briefly(c.sock, out, FINAL_SEND)
            c.session.close()
        finally:
            if not c.handshake_done:
                srv.end_handshake()
            if c.admitted:
                srv.leave(c.session)
            srv.track(c.sock, False)
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
            c.sock.close()


def _send_briefly(sock: socket.socket, bufs: list[bytes | memoryview], seconds: float) -> None:
    end = time.monotonic() + seconds
    try:
        for b in bufs:
            sock.settimeout(max(end - time.monotonic(), 0.001))
            sock.sendall(b)
    except OSError:
        pass  # the peer is gone or does not read: what is left is dropped
