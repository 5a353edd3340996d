# The client: a thin synchronous loop around the sans-I/O Connection. Owns making calls:
# numbering requests, sending them, batches, and the public API; the read side (receiving,
# replies to waiting calls, pushed events, pulling) is reader.py, which Client extends.
# Pure Python and importable on Windows: no fcntl, termios or resource here. Must not know
# about device kinds beyond choosing a proxy class from drivers/ by name.
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
from __future__ import annotations

import contextlib
import errno as _errno
import importlib
import itertools
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .batch import BatchContext, Deferred
from .messages import wire_default
from .protocol import MISS, Call, Hello, Message, Ref
from .reader import PULL_LINGER, RECV_SIZE, EventHandler, Pending, ReadSide, remote_error
from .url import URL

if TYPE_CHECKING:
    from .leaseclient import Lease

# Names importable from here as before the read side moved to reader.py.
__all__ = ["PULL_LINGER", "RECV_SIZE", "Client", "DeviceInfo", "EventHandler", "Pending",
           "remote_error"]


class Client(ReadSide):
    """A connection to one device host. Use :func:`bridge.connect` to make one."""

    def __init__(self, url: URL, sock: socket.socket, max_frame: int,
                 token: str | None = None) -> None:
        super().__init__(url, sock, max_frame)
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)  # next() is atomic: no lock to number a request
        # A call sends as the socket's only reader only where a send can be tried without
        # blocking (see call()): plain sockets on platforms with MSG_DONTWAIT; not TLS.
        # The flags of such a send (0: none can be tried); set through _dontwait.
        self._send_flags: int = getattr(socket, "MSG_DONTWAIT", 0) \
            if isinstance(sock, socket.socket) and not self._tls else 0
        self._local = threading.local()
        # Batches open on any thread: while there are none, a call skips looking for one
        # (a fast-path condition). Changed only through _batch_opened/_batch_closed.
        self._batches_open = 0
        # A Deferred given to a call outside its batch is sent as its result, resolved when
        # the packer meets it: a call costs nothing for the case.
        self._conn.set_default(self._pack_default)
        self.server_info: dict[str, Any] = {}
        self._hello(token)
        with self._cv:
            self._refresh_fast()

    # -- public API (on_event, remove_handler, exact_receives, pull_events and end_pull are
    # the read side's: reader.py) -----------------------------------------------------------

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

    def call(self, op: str, args: Sequence[Any],
             transform: Callable[[Any], Any] | None = None, bulk: bool = False) -> Any:
        """One remote operation; inside a batch, returns a :class:`Deferred` instead.

        ``bulk=True`` says the reply may carry a large payload (a big read): while such a
        reply is awaited, frames are received piece by piece at their exact size, so the
        payload lands in one bytes object without being copied again.
        """
        if not self._fast:
            # One of the conditions _fast stands for fails (see _fast_ok): a batch is
            # open, the connection is closed or broken, it receives at exact sizes, or no
            # send can be tried without blocking. The common case tests only the flag.
            if self._batches_open:
                batch: BatchContext | None = getattr(self._local, "batch", None)
                if batch is not None:
                    return batch.add(op, args, transform)
            if self.closed:
                raise ConnectionAbortedError(_errno.ECONNABORTED, "connection closed")
            if not self._send_flags or self._bulk:
                return self._call_pending(next(self._ids) & 0x7FFFFFFF, op, args, transform,
                                          bulk)
        rid = next(self._ids) & 0x7FFFFFFF
        if bulk or not self._recv_lock.acquire(False):
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
            # Checked holding both locks: the connection breaks only under one of them
            # (or closes), so _fast may have been read just before.
            if self._broken is not None:
                raise ConnectionError("connection is broken") from self._broken
            raw = self._conn.call_bytes(rid, op, args if type(args) is list else list(args))
            if raw is not None:
                # Never block while holding the read side (see above): a send that does not
                # go through at once is finished below, by the ordinary path.
                try:
                    sent = self._sock.send(raw, self._send_flags)
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
            try:
                n = self._sock.recv_into(self._buf)
            except OSError as e:
                self._fail_all(e)
                raise
            result = self._conn.reply_result(self._view, n, rid)
            if result is not MISS:
                return result if transform is None else transform(result)
            got = self._conn.events_then_reply(self._view, n, rid)
            if got is not MISS:  # what the call raised came first: delivered as _pump would
                events, result = got
                for ev in events:
                    self._deliver(ev)
                return result if transform is None else transform(result)
            # Anything else (another thread's reply, an event, an error, part of a frame,
            # the rest of a large data section): this call waits the ordinary way.
            p = self._pending[rid] = Pending(rid, transform)
            self._feed(self._buf[:n] if n else b"")
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
        with self._cv:
            self.closed = True
            self._refresh_fast()
        # Before the socket goes: a thread reading it would otherwise see the end first
        # and fail the waits with a reset instead of this.
        self._end_reading(ConnectionAbortedError(_errno.ECONNABORTED, "connection closed"))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<hwbridge.Client {self.url}>"

    # -- plumbing -------------------------------------------------------------------------

    # The two conditions of the fast path (_fast) that are the client's: changed only
    # through these, which keep _fast up to date (BatchContext opens and closes batches).

    def _batch_opened(self) -> None:
        with self._cv:
            self._batches_open += 1
            self._refresh_fast()

    def _batch_closed(self) -> None:
        with self._cv:
            self._batches_open -= 1
            self._refresh_fast()

    @property
    def _dontwait(self) -> int:
        return self._send_flags

    @_dontwait.setter
    def _dontwait(self, flags: int) -> None:
        with self._cv:
            self._send_flags = flags
            self._refresh_fast()

    def _fast_ok(self) -> bool:
        return super()._fast_ok() and not self._batches_open and self._send_flags != 0

    def _wire(self, v: Any) -> Any:
        if isinstance(v, Deferred):
            if v.done:
                return v.result()
            batch = getattr(self._local, "batch", None)
            if v.batch is not batch:
                raise RuntimeError("a deferred result from another batch that has not run")
            return Ref(v.index)
        return v

    def _pack_default(self, v: object) -> object:
        """The packer's hook for values outside the wire types (see __init__)."""
        return self._wire(v) if type(v) is Deferred else wire_default(v)

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
