# The client: a thin synchronous loop around the sans-I/O Connection. Owns the socket, the
# matching of replies to requests by id, batches and event delivery. Pure Python and
# importable on Windows: no fcntl, termios or resource here. Must not know about device
# kinds beyond choosing a proxy class from drivers/ by name.
#
# Calls use leader/follower reading: the thread that waits for a reply reads the socket
# itself when nobody else is, so a call costs one send and one recv with no thread handoff;
# replies for other threads are parked and those threads woken. A blocking read on one
# handle therefore never blocks calls from other threads on the same connection.
#
# The common case costs least: a call made while no other thread reads takes the read side
# before it sends, so its reply can reach no other thread and needs no Pending; a reply
# that is exactly one frame is decoded in place (Connection.reply_result), and anything
# else turns the call into an ordinary one. Holding the read side, a call never waits for
# the send lock or a full socket buffer (a host blocked on our reading would deadlock).
#
# Pushed events (serial data, GPIO edges) are read by whoever holds the read side. Once a
# handler exists, a background reader waits for the socket to become readable WITHOUT
# holding the read side (so calls keep their fast path) and reads only then. A thread that
# waits for pushed data can read it itself (pull_events): while it does, the background
# reader stays aside, so a stream arrives on the thread that consumes it, with no hand-off.
from __future__ import annotations

import contextlib
import errno as _errno
import importlib
import itertools
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .batch import BatchContext, Deferred
from .messages import unpack_header
from .protocol import (
    BULK_DIRECT,
    MISS,
    BatchReply,
    Call,
    Connection,
    Error,
    Event,
    Hello,
    Message,
    ProtocolError,
    Ref,
    Reply,
    Role,
)
from .url import URL

if TYPE_CHECKING:
    from .leaseclient import Lease

RECV_SIZE = 64 * 1024
_POLL = hasattr(select, "poll")  # no FD_SETSIZE limit; select.select where it is missing
#: Seconds the background reader stays aside after a thread pulled events (pull_events):
#: the time an application may take between two reads of a stream and still receive it
#: on its own thread. Events for other handlers wait at most this long meanwhile.
PULL_LINGER = 0.002

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


class Client:
    """A connection to one device host. Use :func:`bridge.connect` to make one."""

    def __init__(self, url: URL, sock: socket.socket, max_frame: int,
                 token: str | None = None) -> None:
        self.url = url
        self._sock = sock
        self._conn = Connection(Role.CLIENT, max_frame)
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._sleepers = 0  # followers waiting on _cv; notify only when there are some
        # Requests for exact-size receives: bulk calls in flight and exact_receives(True).
        # Changed only under _count_lock; read without it (a stale value changes how bytes
        # are received for one recv, never what is received).
        self._bulk = 0
        self._count_lock = threading.Lock()
        # Until this time.monotonic() value the background reader stays aside (waiting on
        # _aside), because a thread pulls pushed events itself (see pull_events).
        self._pull_until = 0.0
        self._aside = threading.Condition(threading.Lock())
        self._pending: dict[int, Pending] = {}
        self._ids = itertools.count(1)  # next() is atomic: no lock to number a request
        self._broken: BaseException | None = None
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        # A call sends as the socket's only reader only where a send can be tried without
        # blocking (see call()): plain sockets on platforms with MSG_DONTWAIT; not TLS.
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._dontwait: int = getattr(socket, "MSG_DONTWAIT", 0) \
            if isinstance(sock, socket.socket) and not self._tls else 0
        # Exact-size receives wait for all the bytes where the socket can (TLS takes no
        # flags); a shorter receive is fine anyway: the Connection keeps the partial piece.
        self._waitall: int = 0 if self._tls else getattr(socket, "MSG_WAITALL", 0)
        self._local = threading.local()
        # Set once any batch (so any Deferred) existed: until then a call skips looking
        # for batches and Deferred arguments.
        self._batched = False
        self._handlers: list[tuple[str | None, int | None, EventHandler]] = []
        self._direct: list[tuple[str | None, int | None, EventHandler]] = []
        self._events: queue.SimpleQueue[Event | None] = queue.SimpleQueue()
        self._event_threads: list[threading.Thread] = []
        self.closed = False
        self.server_info: dict[str, Any] = {}
        self._hello(token)

    # -- public API -----------------------------------------------------------------------

    def devices(self) -> list[DeviceInfo]:
        """The devices this host exposes to this connection (one round trip)."""
        return [DeviceInfo(d) for d in self.call("devices", [])]

    def info(self, name: str) -> dict[str, Any]:
        """Everything the host will say about one device."""
        result: dict[str, Any] = self.call("info", [name])
        return result

    def open(self, name: str, access: str | None = None) -> Any:
        """Open a device and return the typed proxy for its kind."""
        kind = self._kinds.get(name, "node")
        proxy = _proxy_class(kind)
        args: list[Any] = [name] if access is None else [name, access]
        handle = self.call("open", args)
        return proxy(self, name, handle, self._described.get(name, {}))

    def lease(self, name: str, timeout: float | None = None, ttl: float = 30.0,
              renew: bool = True) -> Lease:
        """Take the exclusive lease on a device, waiting in line up to ``timeout`` seconds
        (TimeoutError after). Use as ``with host.lease("uart0"): ...``; it is renewed in the
        background unless ``renew=False``, and ends with the block or the connection."""
        from .leaseclient import Lease

        return Lease(self, self.call("lease", [name, ttl, timeout]), renew)

    def leases(self) -> list[dict[str, Any]]:
        """Every lease held on the host now: device, holder, token, expires_in, waiting."""
        result: list[dict[str, Any]] = self.call("leases", [])
        return result

    def share(self, handle: Any, access: str | None = None, ioctls: list[str | int] | None = None,
              functions: list[str] | None = None, ttl: float | None = None) -> bytes:
        """A capability token for ``handle`` (a proxy or handle number) narrowed to
        ``access``, ``ioctls`` and ``functions`` (None keeps the handle's own), valid for
        ``ttl`` seconds (None: until revoked). Another connection to this host passes it
        to :meth:`adopt`. Asking for more than the handle has is PermissionError."""
        h = getattr(handle, "handle", handle)
        token: bytes = self.call("share", [h, access, ioctls, functions, ttl])
        return token

    def adopt(self, token: bytes | str) -> Any:
        """Open the device a capability token names, with the token's rights; returns the
        proxy for its kind. ``token`` is the bytes :meth:`share` returned, or their hex."""
        raw = bytes.fromhex(token) if isinstance(token, str) else bytes(token)
        got = self.call("adopt", [raw])
        return _proxy_class(got["kind"])(self, got["device"], got["handle"], got["info"])

    def revoke(self, token: bytes | str) -> bool:
        """Revoke a token this connection made: every handle adopted through it (and
        through tokens made from those) is fenced. False if it was not live any more."""
        raw = bytes.fromhex(token) if isinstance(token, str) else bytes(token)
        return bool(self.call("revoke", [raw]))

    def batch(self) -> BatchContext:
        """Group operations into one round trip: ``with host.batch(): ...``."""
        return BatchContext(self)

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

    def remove_handler(self, handler: EventHandler) -> None:
        self._handlers = [h for h in self._handlers if h[2] is not handler]
        self._direct = [h for h in self._direct if h[2] is not handler]

    def exact_receives(self, on: bool) -> None:
        """Ask for frames to be received piece by piece at their exact size (True), or
        withdraw one such request (False); requests are counted, so users do not clash.

        While any request stands, a large data section (of a reply or a pushed event)
        arrives from one receive as the very bytes object the message carries: no copy on
        the client. Each frame then costs a receive or two more, so ask only while large
        frames are expected (a port streaming large pushes; bulk calls ask on their own).
        """
        with self._count_lock:
            if not on and self._bulk <= 0:
                raise ValueError("exact receives were not requested")
            self._bulk += 1 if on else -1

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

    def call(self, op: str, args: Sequence[Any],
             transform: Callable[[Any], Any] | None = None, bulk: bool = False) -> Any:
        """One remote operation; inside a batch, returns a :class:`Deferred` instead.

        ``bulk=True`` says the reply may carry a large payload (a big read): while such a
        reply is awaited, frames are received piece by piece at their exact size, so the
        payload lands in one bytes object without being copied again.
        """
        if self._batched:
            batch: BatchContext | None = getattr(self._local, "batch", None)
            if batch is not None:
                return batch.add(op, args, transform)
            args = self._resolved(args)
        if self.closed:
            raise ConnectionAbortedError(_errno.ECONNABORTED, "connection closed")
        rid = next(self._ids) & 0x7FFFFFFF
        if bulk or not self._dontwait or not self._recv_lock.acquire(False):
            return self._call_pending(rid, op, args, transform, bulk)
        # The common case: no other thread reads the socket, and now none will until this
        # call is done, so its reply can reach no one else: no Pending, no dict entry.
        if not self._send_lock.acquire(False):
            # Waiting for another sender while holding the read side could deadlock with a
            # host that waits for us to read: go the ordinary way.
            self._unlead()
            return self._call_pending(rid, op, args, transform, bulk)
        sent = -1
        try:
            if self._broken is not None:
                raise ConnectionError("connection is broken") from self._broken
            raw = self._conn.call_bytes(rid, op, args if type(args) is list else list(args))
            if raw is not None:
                # Never block while holding the read side (see above): a send that does not
                # go through at once is finished below, by the ordinary path.
                try:
                    sent = self._sock.send(raw, self._dontwait)
                except BlockingIOError:
                    sent = 0
                except OSError as e:
                    self._fail_all(e)
                    raise
        except BaseException:  # ValueError (too large for the host) keeps the connection
            self._send_lock.release()
            self._unlead()
            raise
        if raw is None or sent != len(raw):
            return self._finish_send(rid, op, args, transform, raw, sent)
        self._send_lock.release()
        p: Pending | None = None
        try:
            if not self._bulk:
                try:
                    n = self._sock.recv_into(self._buf)
                except OSError as e:
                    self._fail_all(e)
                    raise
                result = self._conn.reply_result(self._view, n, rid)
                if result is not MISS:
                    return result if transform is None else transform(result)
                # Anything else (another thread's reply, an event, an error, part of a
                # frame, the rest of a large data section): this call waits the ordinary way.
                p = self._pending[rid] = Pending(rid, transform)
                self._feed(self._buf[:n] if n else b"")
            else:  # a large reply may come: _pump receives it at its exact size
                p = self._pending[rid] = Pending(rid, transform)
            while not p.done:
                self._pump()
        finally:
            self._recv_lock.release()  # what _unlead does, inline on the hot path
            if self._sleepers:
                self._wake()
        if p.error is not None:
            raise p.error
        return p.value if transform is None else transform(p.value)

    def _call_pending(self, rid: int, op: str, args: Sequence[Any],
                      transform: Callable[[Any], Any] | None, bulk: bool) -> Any:
        """A call that registers its Pending before sending, so any reader may deliver it:
        when another thread reads, for bulk replies, and where a send cannot be tried
        without blocking (TLS, Windows)."""
        p = self._pending[rid] = Pending(rid, transform)
        if bulk:
            self.exact_receives(True)
            try:
                self._send_call(rid, op, args)
                return self._wait(p)
            finally:
                self.exact_receives(False)
        self._send_call(rid, op, args)
        return self._wait(p)

    def _send_call(self, rid: int, op: str, args: Sequence[Any]) -> None:
        """Send ``Call(rid, op, args)``, as one buffer unless it carries a bulk argument."""
        with self._send_lock:
            raw = None
            if self._broken is None:
                try:
                    raw = self._conn.call_bytes(rid, op, args if type(args) is list else
                                                list(args))
                except ValueError:  # too large for the host: fail this call only
                    self._pending.pop(rid, None)
                    raise
            if raw is not None:
                try:
                    self._sock.sendall(raw)
                except OSError as e:
                    self._fail_all(e)
                    raise
                return
        self._send(Call(rid, op, args))  # a bulk argument, or the broken connection's error

    def _finish_send(self, rid: int, op: str, args: Sequence[Any],
                     transform: Callable[[Any], Any] | None, raw: bytes | None,
                     sent: int) -> Any:
        """The send of a call made as the reader did not go through at once (a full socket
        buffer, or a bulk argument): hand over the read side, then send the ordinary way.
        Called holding both locks; the Pending is registered before either is released."""
        p = self._pending[rid] = Pending(rid, transform)
        self._unlead()
        try:
            if raw is not None and sent >= 0:
                try:
                    self._sock.sendall(memoryview(raw)[sent:])
                except OSError as e:
                    self._fail_all(e)
                    raise
        finally:
            self._send_lock.release()
        if raw is None:
            self._send(Call(rid, op, args))
        return self._wait(p)

    def _unlead(self) -> None:
        """Release the read side and wake the followers waiting to take it."""
        self._recv_lock.release()
        if self._sleepers:
            self._wake()

    def submit(self, op: str, args: Sequence[Any],
               transform: Callable[[Any], Any] | None = None, bulk: bool = False) -> Pending:
        """Send a request without waiting (pipelining); collect it with :meth:`result`."""
        wired = [self._wire(a) for a in args]
        p = self._start(lambda rid: Call(rid, op, wired), transform)
        if bulk:
            self.exact_receives(True)
            p.bulk = True
        return p

    def result(self, p: Pending) -> Any:
        """Wait for a request made with :meth:`submit`."""
        try:
            return self._wait(p)
        finally:
            if p.bulk:
                p.bulk = False
                self.exact_receives(False)

    def close(self) -> None:
        """Close the connection; the host closes every handle it opened."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._events.put(None)
        with self._aside:
            self._aside.notify_all()
        self._fail_all(ConnectionAbortedError(_errno.ECONNABORTED, "connection closed"))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<hwbridge.Client {self.url}>"

    # -- plumbing -------------------------------------------------------------------------

    def _wire(self, v: Any) -> Any:
        if isinstance(v, Deferred):
            if v.done:
                return v.result()
            batch = getattr(self._local, "batch", None)
            if v.batch is not batch:
                raise RuntimeError("a deferred result from another batch that has not run")
            return Ref(v.index)
        return v

    def _resolved(self, args: Sequence[Any]) -> Sequence[Any]:
        """``args`` with the results of batches that ran in place of their Deferreds.

        A method of its own: a comprehension in call() would make ``self`` a closure cell,
        which costs every call."""
        for a in args:
            if type(a) is Deferred:
                return [self._wire(a) for a in args]
        return args

    def _hello(self, token: str | None = None) -> None:
        p = Pending(0)
        self._pending[0] = p
        self._send(Hello(info={"token": token} if token is not None else {}))
        info = self._wait(p)
        self.server_info = info
        if type(info.get("max_frame")) is int:
            self._conn.send_limit = info["max_frame"]
        devs = info.get("devices", [])
        self._kinds: dict[str, str] = {d["name"]: d["kind"] for d in devs}
        self._described: dict[str, dict[str, Any]] = {d["name"]: d for d in devs}

    def _send(self, msg: Message) -> None:
        with self._send_lock:
            if self._broken is not None:
                raise ConnectionError("connection is broken") from self._broken
            try:
                bufs = self._conn.send(msg)
            except ValueError:  # too large for the host: fail this call, keep the connection
                self._pending.pop(getattr(msg, "id", -1), None)
                raise
            try:
                if len(bufs) == 1:
                    self._sock.sendall(bufs[0])
                else:
                    for b in bufs:
                        self._sock.sendall(b)
            except OSError as e:
                self._fail_all(e)
                raise

    def _start(self, make: Callable[[int], Message],
               transform: Callable[[Any], Any] | None = None) -> Pending:
        if self.closed:
            raise ConnectionAbortedError(_errno.ECONNABORTED, "connection closed")
        rid = next(self._ids) & 0x7FFFFFFF
        p = self._pending[rid] = Pending(rid, transform)
        self._send(make(rid))
        return p

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
            for topic, handle, fn in self._direct:
                if (topic is None or topic == ev.topic) and (handle is None or
                                                             handle == ev.handle):
                    try:
                        fn(ev)
                    except Exception:  # a handler's bug must not break the connection
                        logging.getLogger("hwbridge.client").exception("event handler")
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
            if self._broken is None:
                self._broken = e
            err = e if isinstance(e, ProtocolError | ConnectionError) else \
                ConnectionResetError(_errno.ECONNRESET, f"{self.url}: {e}")
            for rid in list(self._pending):
                p = self._pending.pop(rid, None)
                if p is not None and not p.done:
                    p.error, p.done = err, True
            self._cv.notify_all()

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
            failed = False
            with self._recv_lock:
                # Another thread may have taken the bytes meanwhile, or started pulling:
                # never block in a receive here with nothing to receive.
                try:
                    if self._pull_until <= monotonic() and self._broken is None \
                            and self._readable(0):
                        self._pump()
                except Exception:
                    failed = True
            self._wake()
            if failed:
                break
        self._events.put(None)

    def _event_dispatcher(self) -> None:
        while True:
            ev = self._events.get()
            if ev is None:
                return
            for topic, handle, fn in list(self._handlers):
                if (topic is None or topic == ev.topic) and (handle is None or
                                                             handle == ev.handle):
                    try:
                        fn(ev)
                    except Exception:  # a handler's bug must not stop event delivery
                        logging.getLogger("hwbridge.client").exception("event handler")


class DeviceInfo:
    """A device as the host describes it: ``.name``, ``.kind``, ``.access`` and more."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.raw = d
        self.name: str = d["name"]
        self.kind: str = d["kind"]
        self.access: str = d.get("access", "")
        self.description: str = d.get("description", "")

    def __repr__(self) -> str:
        return f"<device {self.name} kind={self.kind} access={self.access}>"


_PROXIES = {
    "node": ("node", "Node"),
    "serial": ("serial", "Serial"),
    "i2c": ("i2c", "I2C"),
    "spi": ("spi", "SPI"),
    "gpio": ("gpio", "GPIO"),
    "usb": ("usb", "USBDevice"),
    "library": ("library", "Library"),
}


def _proxy_class(kind: str) -> Any:
    module, cls = _PROXIES.get(kind, ("node", "Node"))
    return getattr(importlib.import_module(f"bridge.drivers.{module}"), cls)
