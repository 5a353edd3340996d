# One plain (TCP or Unix) connection as the host's event loop (bridge/loop.py) serves it:
# sending from any thread without blocking the loop (an output queue per connection, the
# back-pressure it gives, dropping a peer that reads nothing), holding what a call the loop
# runs pushes so it leaves with the call's reply, and the connection's lane: the thread
# that runs, in order, its calls that must not run on the loop. The loop owns reading,
# the selector and teardown.
from __future__ import annotations

import collections
import contextlib
import errno
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from .poller import READ
from .protocol import Connection, Error, Message, Reply, Role
from .session import Session

if TYPE_CHECKING:
    from .loop import Loop

log = logging.getLogger("hwbridge.server")

WAIT_OUT = 4 << 20  # threads pushing events wait while this many bytes are queued
# Stop reading a client's requests while this much output waits for it. Above what pushes
# alone queue (WAIT_OUT and one push), so a client that streams still has its requests
# read (stream(False) among them); a client that sends requests without reading the
# replies stops being read here.
PAUSE_OUT = 2 * WAIT_OUT
# The loop thread itself never waits: events it causes for another connection (a write to
# one end of a simulated UART pair, say) queue there. A client that lets this much pile
# up is not reading at all, and is dropped.
DROP_OUT = 64 << 20
LANE_LINGER = 1.0  # an idle lane thread waits this long for more work before it ends
CLOSE = object()  # lane sentinel: the connection ended; close its session


class Conn:
    """One plain connection served by the loop."""

    def __init__(self, loop: Loop, sock: socket.socket, peer: str, max_frame: int) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.conn = Connection(Role.SERVER, max_frame)
        self.lock = threading.Lock()  # the Connection's packer and the output queue
        self.drained = threading.Condition(self.lock)
        self.out: collections.deque[bytes | memoryview] = collections.deque()
        self.out_bytes = 0
        self.lane: collections.deque[Any] = collections.deque()
        self.lane_cv = threading.Condition(threading.Lock())
        self.lane_busy = 0  # messages queued on the lane or running there
        self.lane_thread = False
        self.mask = 0
        self.greeted = False
        self.handshake_done = False
        self.admitted = False
        self.closing = False  # the loop stopped serving it; its lane finishes the rest
        self.ended = False  # closed: nothing is sent any more
        self.accepted = time.monotonic()
        self.last_rx = self.accepted
        self.rx = False  # bytes arrived since the last sweep
        self.frame_started: float | None = None
        # While the loop thread runs one of this connection's calls, messages that call
        # pushes from the loop thread (events its op raised, say a GPIO edge on a line the
        # same client watches) are held and leave with the reply, in one send: the client
        # then wakes once for both, not once per frame. See Loop._readable (bridge/loop.py).
        self.corked = False
        self.held: list[bytes | memoryview] = []
        self.session = Session(loop.server.host, self.send, peer, reply=self.reply)

    # -- sending (any thread) -------------------------------------------------------------

    def send(self, msg: Message) -> None:
        with self.lock:
            if self.ended:
                return
            bufs = self.conn.send(msg)
            # Held while the loop runs a call of this connection, and behind anything held
            # (a device thread pushing meanwhile must not overtake what the call pushed).
            if self.held or self.corked and threading.get_ident() == self.loop.tid:
                # Copied unless immutable: the op may reuse its buffer before the reply.
                self.held += [b if type(b) is bytes else bytes(b) for b in bufs]
                return
            self._write(bufs)
        self._after_write()

    def send_held(self) -> None:
        """Send what a call that ran on the loop pushed and did not reply to (loop thread,
        after the call)."""
        with self.lock:
            held, self.held = self.held, []
            if not self.ended:
                self._write(held)
        self._after_write()

    def reply(self, rid: int, result: Any) -> None:
        with self.lock:
            if self.ended:
                return
            raw = self.conn.reply_bytes(rid, result)
            if self.held:  # what this call pushed goes first, in the same send
                bufs: list[bytes | memoryview] = \
                    self.conn.send(Reply(rid, result)) if raw is None else [raw]
                held, self.held = self.held, []  # (kept if the reply raised: too large)
                self._write(held + bufs)
            elif raw is None:
                self._write(self.conn.send(Reply(rid, result)))
            elif self.out:
                self._write([raw])
            else:
                # The hot path: the whole reply fits in the socket buffer at once.
                try:
                    sent = self.sock.send(raw)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return  # the peer went away; the read side notices and cleans up
                if sent == len(raw):
                    return
                self.out.append(memoryview(raw)[sent:])
                self.out_bytes += len(raw) - sent
        self._after_write()

    def _write(self, bufs: list[bytes | memoryview]) -> None:
        """Send what the socket takes now, queue the rest (called with the lock held).

        Queued bytes objects are kept as they are (immutable); anything else is copied,
        since a handle may reuse its buffer once the call returns."""
        sent = 0
        if not self.out:
            try:
                sent = self.sock.send(bufs[0]) if len(bufs) == 1 else self.sock.sendmsg(bufs)
            except BlockingIOError:
                sent = 0
            except OSError:
                return  # the peer went away; the read side notices and cleans up
        for b in bufs:
            view = memoryview(b).cast("B")
            n = len(view)
            if sent >= n:
                sent -= n
                continue
            rest = view[sent:] if type(b) is bytes else bytes(view[sent:])
            sent = 0
            self.out.append(rest)
            self.out_bytes += len(rest)
        if self.out_bytes > DROP_OUT:
            log.warning("%s: %d bytes queued and not read; closing", self.peer, self.out_bytes)
            self.out.clear()
            self.out_bytes = 0
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # the loop sees the end and cleans up

    def _after_write(self) -> None:
        if not self.out:
            return
        if threading.get_ident() == self.loop.tid:
            self.loop.update(self)
            return
        self.loop.dirty(self)
        with self.lock:  # back-pressure on threads that push (events, waiting ops)
            while self.out_bytes > WAIT_OUT and not self.closing:
                self.drained.wait(1.0)

    def flush(self) -> bool:
        """Send queued bytes (loop thread, socket writable); False if the peer is gone."""
        with self.lock:
            out = self.out
            while out:
                b = out[0]
                try:
                    n = self.sock.send(b)
                except BlockingIOError:
                    break
                except OSError:
                    out.clear()
                    self.out_bytes = 0
                    self.drained.notify_all()
                    return False
                self.out_bytes -= n
                if n == len(b):
                    out.popleft()
                else:
                    out[0] = memoryview(b)[n:]
                    break
            if self.out_bytes <= WAIT_OUT:
                self.drained.notify_all()
        return True

    # -- the lane: this connection's calls that must not run on the loop ------------------

    def to_lane(self, item: Any) -> None:
        with self.lane_cv:
            self.lane.append(item)
            self.lane_busy += 1
            if self.lane_thread:
                self.lane_cv.notify()
                return
            self.lane_thread = True
        try:
            self.loop.server.spawn(self._lane, "hwbridge-lane")
        except RuntimeError as e:  # no thread to be had (a process, pid or memory limit)
            with self.lane_cv:  # the lane had no thread: ``item`` is all it holds
                self.lane.clear()
                self.lane_busy -= 1
                self.lane_thread = False
            self._without_lane(item, e)

    def _without_lane(self, item: Any, e: RuntimeError) -> None:
        """What becomes of ``item`` when no lane thread could start (loop thread): a call
        or batch fails with EAGAIN, the connection lives on; its end is done right here."""
        log.warning("%s: no thread for its lane: %s", self.peer, e)
        if item is CLOSE:
            self.loop.finish(self)
        elif type(item) is Error:
            self.send(item)
        elif isinstance(getattr(item, "id", None), int):
            self.send(Error(item.id, errno.EAGAIN,
                            f"the host could not start a thread for this call ({e}); "
                            "try again"))

    def _lane(self) -> None:
        while True:
            with self.lane_cv:
                while not self.lane:
                    if not self.lane_cv.wait(LANE_LINGER) and not self.lane:
                        self.lane_thread = False
                        return
                item = self.lane.popleft()
            try:
                if item is CLOSE:
                    self.loop.finish(self)
                    return
                if type(item) is Error:  # why the loop ended the connection, after the
                    self.send(item)  # replies of the calls before it
                else:
                    self.session.handle(item)
            except Exception:
                log.exception("%s: call failed", self.peer)
            finally:
                with self.lane_cv:
                    self.lane_busy -= 1
                if not self.mask & READ and not self.ended:
                    self.loop.dirty(self)  # reading may have paused on a full lane: resume
