# The read side of a client connection: receiving frames from the socket (into a reusable
# buffer, or at their exact size), leader/follower reading, delivering replies to the
# Pendings of waiting calls and pushed events to their handlers, the background reader and
# pulling. Client (client.py) builds calls and sends on top of it. Pure Python and
# importable on Windows: no fcntl, termios or resource here. Must not know how calls are
# made or sent, nor anything about devices.
#
# Whoever holds the read side (_recv_lock) reads: a thread waiting for its reply when
# nobody else is (the leader), and the others wait on _cv until the reply arrives or the
# read side is free (followers).
#
# Pushed events (serial data, GPIO edges) are read by whoever holds the read side. Once a
# handler exists, a background reader waits for the socket to become readable WITHOUT
# holding the read side (so calls keep their fast path) and reads only then. A thread that
# waits for pushed data can read it itself (pull_events): while it does, the background
# reader stays aside, so a stream arrives on the thread that consumes it, with no hand-off.
from __future__ import annotations

import errno as _errno
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .messages import unpack_header
from .protocol import (
    BULK_DIRECT,
    BatchReply,
    Connection,
    Error,
    Event,
    Hello,
    Message,
    ProtocolError,
    Reply,
    Role,
)
from .url import URL

RECV_SIZE = 64 * 1024
_POLL = hasattr(select, "poll")  # no FD_SETSIZE limit; select.select where it is missing
#: Seconds the background reader stays aside after a thread pulled events (pull_events):
#: the time an application may take between two reads of a stream and still receive it
#: on its own thread. Events for other handlers wait at most this long meanwhile.
PULL_LINGER = 0.002
#: Seconds the background reader stays aside when calls took (or are taking) what it woke
#: for: bytes that come meanwhile wait at most this long when no call takes them (calls
#: take them at once).
CALL_LINGER = 0.001

EventHandler = Callable[[Event], None]


def remote_error(err: int, message: str) -> OSError:
    """The OSError subclass Python picks for ``err`` (PermissionError for EACCES, ...)."""
    return OSError(err, message)


class Pending:
    """The outcome of one request: filled in by whichever thread reads its reply."""

    __slots__ = ("id", "done", "value", "error", "transform", "bulk")

    def __init__(self, id: int, transform: Callable[[Any], Any] | None = None) -> None:
        self.id = id
        self.bulk = False
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.transform = transform


class ReadSide:
    """The receiving half of :class:`bridge.client.Client`: everything that reads the
    socket and hands what it read to the thread or handler waiting for it."""

    def __init__(self, url: URL, sock: socket.socket, max_frame: int) -> None:
        self.url = url
        self._sock = sock
        self._conn = Connection(Role.CLIENT, max_frame)
        self._recv_lock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._sleepers = 0  # followers waiting on _cv; notify only when there are some
        # Requests for exact-size receives: bulk calls in flight and exact_receives(True).
        # Changed only under _cv; read without it (a stale value changes how bytes are
        # received for one recv, never what is received).
        self._bulk = 0
        # Until this time.monotonic() value the background reader stays aside (waiting on
        # _aside), because a thread pulls pushed events itself (see pull_events).
        self._pull_until = 0.0
        self._aside = threading.Condition(threading.Lock())
        self._pending: dict[int, Pending] = {}
        self._broken: BaseException | None = None
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self._tls = isinstance(sock, ssl.SSLSocket)
        # Exact-size receives wait for all the bytes where the socket can (TLS takes no
        # flags); a shorter receive is fine anyway: the Connection keeps the partial piece.
        self._waitall: int = 0 if self._tls else getattr(socket, "MSG_WAITALL", 0)
        self._handlers: list[tuple[str | None, int | None, EventHandler]] = []
        self._direct: list[tuple[str | None, int | None, EventHandler]] = []
        self._lost: list[Callable[[BaseException], None]] = []  # see on_lost
        self._events: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._event_threads: list[threading.Thread] = []
        self.closed = False
        # Whether a call may take the client's fast path (Client.call): one flag for the
        # several conditions _fast_ok() names, so the common call tests one thing. Every
        # change of a condition is made holding _cv and followed by _refresh_fast(), so
        # two changes racing cannot leave a stale value; the Client sets it once ready.
        self._fast = False

    # -- public API -----------------------------------------------------------------------

    def on_event(self, handler: EventHandler, topic: str | None = None,
                 handle: int | None = None, direct: bool = False) -> None:
        """Call ``handler(event)`` for server-pushed events, on a dedicated thread.

        ``direct=True`` runs the handler on the thread that received the event instead,
        with no hand-off: for short handlers that only store data (a serial port's
        buffer). A direct handler must not call the client: the reading thread is busy
        running it.
        """
        if direct:
            self._direct.append((topic, handle, handler))
        else:
            self._handlers.append((topic, handle, handler))
        if not self._event_threads:
            for target, name in ((self._event_reader, "reader"),
                                 (self._event_dispatcher, "events")):
                t = threading.Thread(target=target, daemon=True, name=f"hwbridge-{name}")
                t.start()
                self._event_threads.append(t)

    def on_lost(self, handler: Callable[[BaseException], None]) -> None:
        """Call ``handler(error)`` once when the connection breaks or is closed, on the
        thread that finds out, as a direct event handler (it must not call the client):
        for proxies whose waits should end then (a serial read, a GPIO wait_event)."""
        self._lost.append(handler)

    def remove_handler(self, handler: Any) -> None:
        """Stop calling ``handler`` (given to :meth:`on_event` or :meth:`on_lost`)."""
        # (equality, not identity: each access to a bound method makes a new one)
        self._handlers = [h for h in self._handlers if h[2] != handler]
        self._direct = [h for h in self._direct if h[2] != handler]
        self._lost = [h for h in self._lost if h != handler]

    def exact_receives(self, on: bool) -> None:
        """Ask for frames to be received piece by piece at their exact size (True), or
        withdraw one such request (False); requests are counted, so users do not clash.

        While any request stands, a large data section (of a reply or a pushed event)
        arrives from one receive as the very bytes object the message carries: no copy on
        the client. Each frame then costs a receive or two more, so ask only while large
        frames are expected (a port streaming large pushes; bulk calls ask on their own).
        """
        with self._cv:
            if not on and self._bulk <= 0:
                raise ValueError("exact receives were not requested")
            self._bulk += 1 if on else -1
            self._refresh_fast()

    def pull_events(self, timeout: float = 0.0) -> bool:
        """Read pushed events on the calling thread, for a thread that waits for them.

        Takes the read side (waiting up to ``timeout`` seconds for a thread that holds
        it), waits up to ``timeout`` for bytes and receives them here, delivering what
        they complete to the direct handlers: True. False when the read side stayed busy,
        nothing came, or the connection is broken: the caller then waits for its
        handler's signal as it would without pulling, and the background reader reads.

        While a thread pulls, and for PULL_LINGER seconds after its last pull, the
        background reader stays aside, so a stream keeps arriving on the thread that
        consumes it, with no hand-off between threads. :meth:`end_pull` ends that at once.
        Hold no lock a direct handler takes while calling this.
        """
        self._pull_until = time.monotonic() + PULL_LINGER  # the reader steps aside
        lock = self._recv_lock
        if lock.acquire(False):
            wait = timeout
        elif timeout > 0 and lock.acquire(True, timeout):
            wait = 0.0  # waited already; whoever held it may have taken the bytes
        else:
            self.end_pull()
            return False
        try:
            if self._broken is None and self._readable(wait):
                self._pump()
                return True
        except (OSError, ProtocolError, ValueError):
            pass  # _pump failed every waiting call; the caller's wait ends as it would
        finally:
            lock.release()
            if self._sleepers:
                self._wake()
        self.end_pull()
        return False

    def end_pull(self) -> None:
        """The calling thread stopped waiting for pushed events: the background reader
        reads them again now (see :meth:`pull_events`)."""
        if self._pull_until:
            self._pull_until = 0.0
            with self._aside:
                self._aside.notify_all()

    # -- reading --------------------------------------------------------------------------

    def _fast_ok(self) -> bool:
        """What the fast path needs of the read side: the connection is open and not
        broken, and nobody asked for exact receives (those replies are read by _pump)."""
        return not self.closed and self._broken is None and not self._bulk

    def _refresh_fast(self) -> None:
        """Bring ``_fast`` up to date after a change of what it depends on (holding _cv)."""
        self._fast = self._fast_ok()

    def _end_reading(self, e: BaseException) -> None:
        """The connection was closed: stop the event threads, fail every waiting call."""
        self._events.put(None)
        with self._aside:
            self._aside.notify_all()
        self._fail_all(e)

    def _unlead(self) -> None:
        """Release the read side and wake the followers waiting to take it."""
        self._recv_lock.release()
        if self._sleepers:
            self._wake()

    def _wait(self, p: Pending) -> Any:
        while not p.done:
            if self._recv_lock.acquire(False):
                try:
                    while not p.done:
                        self._pump()
                finally:
                    self._recv_lock.release()
                    self._wake()
            else:
                # A follower counts itself before checking, so a leader that finishes
                # meanwhile either sees the count and notifies, or the check sees its work.
                with self._cv:
                    self._sleepers += 1
                    try:
                        while not p.done and self._recv_lock.locked():
                            self._cv.wait()
                    finally:
                        self._sleepers -= 1
        if p.error is not None:
            raise p.error
        return p.value if p.transform is None else p.transform(p.value)

    def _pump(self) -> None:
        """Read once from the socket and deliver every complete message (leader only)."""
        if self._broken is not None:
            raise ConnectionError("connection is broken") from self._broken
        try:
            chunk: bytes | bytearray
            rest = self._conn.data_wanted()
            if rest >= BULK_DIRECT:  # the rest of a large data section, straight into one object
                chunk = self._sock.recv(rest, self._waitall)
            elif self._bulk:
                if not self._conn.buffered():
                    self._pump_frame()
                    return
                chunk = self._sock.recv(self._conn.want(), self._waitall)
            else:
                n = self._sock.recv_into(self._buf)
                chunk = self._buf[:n] if n else b""
        except OSError as e:
            self._fail_all(e)
            raise
        self._feed(chunk)

    def _pump_frame(self) -> None:
        """Receive one whole frame in exact pieces (exact receives, between frames): its
        header, then its body (with its data section if that is small), then a large data
        section on its own, which the message then carries as received. One pass instead
        of one per piece."""
        sock, conn = self._sock, self._conn
        try:
            head = sock.recv(8, self._waitall)
            if len(head) == 8:
                body_len, data_len = unpack_header(head, 0)
                n = body_len if data_len >= BULK_DIRECT else body_len + data_len
                if n and body_len + data_len <= conn.max_frame:  # else _feed reports it
                    head += sock.recv(n, self._waitall)
        except OSError as e:
            self._fail_all(e)
            raise
        self._feed(head)
        rest = conn.data_wanted()
        if rest:
            try:
                chunk = sock.recv(rest, self._waitall)
            except OSError as e:
                self._fail_all(e)
                raise
            self._feed(chunk)

    def _readable(self, timeout: float | None) -> bool:
        """Whether bytes wait to be received, waiting up to ``timeout`` (None: forever)."""
        sock = self._sock
        if self._tls and sock.pending():  # type: ignore[attr-defined]
            return True  # decrypted already: the socket itself may show nothing
        if _POLL:
            p = select.poll()
            p.register(sock, select.POLLIN)
            return bool(p.poll(None if timeout is None else timeout * 1000.0))
        return bool(select.select([sock], [], [], timeout)[0])

    def _feed(self, chunk: bytes | bytearray) -> None:
        """Deliver every complete message ``chunk`` completes (leader only); b"" is the end
        of the stream. ``chunk`` is handed over to the Connection: the caller drops it."""
        try:
            for ev in self._conn.receive(chunk):
                self._deliver(ev)
            self._conn.check()
            if not chunk:  # end of stream (the messages before it were delivered above)
                raise ConnectionResetError(_errno.ECONNRESET, f"{self.url} closed the connection")
        except (ProtocolError, ConnectionError) as e:
            self._fail_all(e)
            raise

    def _deliver(self, ev: Message) -> None:
        if type(ev) is Reply:
            p = self._pending.pop(ev.id, None)
            if p is not None:
                p.value, p.done = ev.result, True
                if self._sleepers:
                    self._wake()
            return
        if isinstance(ev, Event):
            _dispatch(self._direct, ev)  # on this thread, in order with the replies
            if self._handlers:
                self._events.put(ev)
            return
        value: Any
        error: OSError | None
        if isinstance(ev, Hello):
            rid, value, error = 0, {**ev.info, "features": ev.features}, None
        elif isinstance(ev, Reply):
            rid, value, error = ev.id, ev.result, None
        elif isinstance(ev, BatchReply):
            err = None if ev.error is None else (ev.error.index, ev.error.errno,
                                                 ev.error.message)
            rid, value, error = ev.id, (ev.results, err), None
        elif isinstance(ev, Error):
            if ev.id == 0 and (ev.errno == _errno.EPROTO or 0 not in self._pending):
                raise ProtocolError(f"{self.url}: {ev.message}")  # a broken connection
            # id 0 while the hello is pending: the host refused this client (who it is,
            # or a limit), e.g. PermissionError.
            rid, value = ev.id, None
            error = remote_error(ev.errno, f"{ev.message} [{self.url}]")
        else:
            raise ProtocolError(f"unexpected {type(ev).__name__} from the host")
        p = self._pending.pop(rid, None)
        if p is None:
            return  # a reply nobody waits for any more
        p.value, p.error, p.done = value, error, True
        self._wake()

    def _wake(self) -> None:
        if self._sleepers:
            with self._cv:
                self._cv.notify_all()

    def _fail_all(self, e: BaseException) -> None:
        with self._cv:
            first = self._broken is None
            if first:
                self._broken = e
                self._refresh_fast()
            err = e if isinstance(e, ProtocolError | ConnectionError) else \
                ConnectionResetError(_errno.ECONNRESET, f"{self.url}: {e}")
            for rid in list(self._pending):
                p = self._pending.pop(rid, None)
                if p is not None and not p.done:
                    p.error, p.done = err, True
            self._cv.notify_all()
        for handler in list(self._lost) if first else ():
            try:
                handler(err)
            except Exception:
                logging.getLogger("hwbridge.client").exception("connection-lost handler")

    # -- background threads ---------------------------------------------------------------

    def _event_reader(self) -> None:
        """Keeps reading while event handlers exist, so pushed events arrive with no call.

        It waits for bytes without holding the read side, takes it only to receive them,
        and stays aside while a thread pulls (see pull_events)."""
        aside = self._aside
        monotonic = time.monotonic
        while not self.closed and self._broken is None:
            left = self._pull_until - monotonic()
            if left > 0:
                with aside:
                    aside.wait(left)
                continue
            try:
                if not self._readable(None):
                    continue
            except (OSError, ValueError):  # closed meanwhile
                break
            # Bytes came. If a call holds the read side, or took them before we could, the
            # client is making calls, which receive what comes: stay aside a moment rather
            # than wait in poll again, or this thread would wake (and contend for the GIL)
            # once per call of a client calling back to back.
            took = failed = False
            if self._recv_lock.acquire(False):
                try:
                    # Another thread may have taken the bytes meanwhile, or started
                    # pulling: never block in a receive here with nothing to receive.
                    if self._pull_until <= monotonic() and self._broken is None \
                            and self._readable(0):
                        took = True
                        self._pump()
                except Exception:
                    failed = True
                finally:
                    self._recv_lock.release()
                self._wake()
            if failed:
                break
            if not took:
                with aside:
                    aside.wait(CALL_LINGER)
        self._events.put(None)

    def _event_dispatcher(self) -> None:
        while True:
            ev = self._events.get()
            if ev is None:
                return
            _dispatch(list(self._handlers), ev)


def _dispatch(handlers: Iterable[tuple[str | None, int | None, EventHandler]], ev: Event) -> None:
    """Call each handler registered for ``ev``'s topic and handle. A handler's bug is
    logged: it must neither break the connection nor stop the delivery of later events."""
    for topic, handle, fn in handlers:
        if (topic is None or topic == ev.topic) and (handle is None or handle == ev.handle):
            try:
                fn(ev)
            except Exception:
                logging.getLogger("hwbridge.client").exception("event handler")
