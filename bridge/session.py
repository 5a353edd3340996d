# One client connection's state on the device host: its handle table and the dispatch of
# calls and batches to device handles. Owns capability checks (only manifest devices, only
# the rights granted, only the operations a kind declares) and the mapping of exceptions to
# errno replies; how one op runs is bridge/opcall.py. Must not know about sockets: the
# transport hands it messages and a send function, so it is driven directly in tests.
from __future__ import annotations

import errno
import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .audit import failure_record
from .backend import Access, DeviceHandle, NodeHandle, Opened, OpInfo
from .host import Host
from .leases import OPS as _LEASE_OPS
from .manifest import DeviceSpec
from .opcall import (
    ASK,
    ASK_PROBE,
    INSTANT,
    LANE,
    PROBE_FIRST,
    TAPPED,
    Entry,
    arity,
    close_quietly,
    deref,
    errno_of,
    invoke,
    registered,
    timeout_arg,
)
from .protocol import Batch, BatchError, BatchReply, Call, Error, Event, Message, Reply
from .shares import OPS as _SHARE_OPS
from .shares import Share
from .timeout import PROBE, Deadline, WouldBlock

log = logging.getLogger("hwbridge.session")

MAX_HANDLES = 1024
MAX_WAITING = 64  # operations of one connection waiting on a thread at once
NOW = Deadline(0)  # core ops that could wait (lease) do not, unless the caller says so

class Session:
    """The per-connection handle table and dispatcher."""

    def __init__(self, host: Host, send: Callable[[Message], None], peer: str = "?",
                 reply: Callable[[int, Any], None] | None = None) -> None:
        self.host = host
        self.send = send
        # The transport's fast way to send Reply(id, result); the same as send() otherwise.
        self.reply: Callable[[int, Any], None] = (
            reply if reply is not None else lambda rid, result: send(Reply(rid, result)))
        self.peer = peer
        self.handles: dict[int, Entry] = {}
        self._next = 1
        self._lock = threading.Lock()
        self._waiting = 0
        self.closed = False
        # Who this connection is and what it may see: the transport sets these after the
        # hello from the host's grants (bridge/grants.py); the default is the whole manifest.
        self.principal = "anonymous"
        self.devices: Mapping[str, DeviceSpec] = host.manifest.devices
        self.fit: Callable[[DeviceHandle], None] | None = None
        self.max_handles = host.manifest.limits.max_handles
        self.max_waiting = host.manifest.limits.max_in_flight

    # -- entry points ---------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        """Execute one call or batch; the reply is sent now or by a waiting thread."""
        if type(msg) is Call:
            self._call(msg)
        elif isinstance(msg, Batch):
            self._batch(msg, 0, [], on_thread=False)

    def close(self) -> None:
        """Close everything this connection opened (clean exit or not)."""
        with self._lock:
            self.closed = True
            entries = list(self.handles.values())
            self.handles.clear()
        for e in entries:
            if e.shares or e.origin:
                self._forget(e, f"{e.handle.spec.name}: the connection that shared it ended")
            close_quietly(e.handle)
        self.host.leases.drop(self)

    def device_list(self) -> list[dict[str, Any]]:
        """The devices this connection may see, as the client learns them."""
        return [spec.public() for spec in self.devices.values()]

    def visible(self, name: object) -> str:
        """``name`` if this connection may see that device; FileNotFoundError otherwise."""
        return self._spec(name).name

    def fence(self, device: str, why: str) -> None:
        """Refuse every later operation on this connection's handles of ``device``."""
        fenced = []
        with self._lock:
            for e in self.handles.values():
                if e.handle.spec.name == device and e.fenced is None:
                    e.ops = {}
                    e.fenced = why
                    fenced.append(e)
        if fenced and self.host.audit is not None:
            self._audit("lease", "fence", device, why, False, errno.ESTALE)
        for e in fenced:
            if e.shares:
                self._forget(e, why)

    # -- capability tokens (bridge/shares.py) ---------------------------------------------

    def entry(self, hid: object) -> Entry:
        """The live entry of handle ``hid``: EBADF if there is none, ESTALE if fenced."""
        entry = self.handles.get(hid) if type(hid) is int else None
        if entry is None:
            raise OSError(errno.EBADF, f"no open handle {hid!r} on this connection")
        if entry.fenced is not None:
            raise OSError(errno.ESTALE, f"fenced: {entry.fenced}")
        return entry

    def adopt_open(self, share: Share) -> int:
        """Open the device of ``share`` anew, with the token's rights instead of a grant."""
        spec = share.spec
        with self._lock:
            if len(self.handles) >= self.max_handles:
                raise OSError(errno.EMFILE, f"more than {self.max_handles} open handles")
        self.host.leases.check_open(self, spec.name, delegate=share.owner)
        backend = self.host.backend(spec.backend)
        tap = self.host.tap
        handle = (backend.open(spec, share.access) if tap is None
                  else tap.open(spec, share.access, lambda: backend.open(spec, share.access)))
        sigs = getattr(handle, "sigs", None)
        if share.functions is not None and isinstance(sigs, dict):
            handle.sigs = {k: v for k, v in sigs.items() if k in share.functions}  # type: ignore[attr-defined]
        hid = self._register(handle, share.access)
        entry = self.handles.get(hid)
        if entry is None or not self.host.shares.attach(share, self, entry):
            if entry is not None:
                self.revoked(entry, share.revoked or "revoked")
            raise PermissionError(errno.EACCES, f"{spec.name}: the token was revoked")
        entry.origin = share
        if self.host.audit is not None:
            self._audit("adopt", "adopt", spec.name, f"access={share.access.text()} from "
                        f"{share.owner.principal}@{share.owner.peer}", True, 0)
        return hid

    def revoked(self, entry: Entry, why: str) -> None:
        """Fence ``entry`` for good (its token is gone) and close its device."""
        with self._lock:
            entry.ops = {}
            entry.fenced = why
        close_quietly(entry.handle)
        if self.host.audit is not None:
            self._audit("share", "fence", entry.handle.spec.name, why, False, errno.ESTALE)
        if entry.shares:
            self._forget(entry, why)

    def _forget(self, entry: Entry, why: str) -> None:
        """``entry`` is going away: revoke the tokens made from it, leave its own token."""
        shares, entry.shares = entry.shares or [], None
        for share in shares:
            self.host.shares.revoke(share, why)
        if entry.origin is not None:
            self.host.shares.detach(entry.origin, entry)

    # -- audit (bridge/audit.py; called only when the log is configured) ------------------

    def _audit(self, event: str, op: str, device: str, detail: str, allowed: bool,
               err: int) -> None:
        if self.host.audit is not None:
            self.host.audit.write(event, principal=self.principal, peer=self.peer,
                                  device=device, op=op, detail=detail, allowed=allowed,
                                  errno=err)

    def _audit_share(self, args: Sequence[Any]) -> None:
        e = self.handles.get(args[0])
        keys = ("access", "ioctls", "functions", "ttl")
        rights = ", ".join(f"{k}={v}" for k, v in zip(keys, args[1:], strict=False)
                           if v is not None)
        self._audit("share", "share", "" if e is None else e.handle.spec.name, rights, True, 0)

    def _audit_error(self, e: BaseException, op: str, args: Sequence[Any],
                     device: str) -> None:
        """Every denial, and every failed open or adoption."""
        record = failure_record(e, op, args)
        if record is not None:
            self._audit(record[0], op, device, record[1], record[2], record[3])

    # -- calls ----------------------------------------------------------------------------

    def call_inline(self, c: Call) -> bool:
        """Run ``c`` now if it cannot wait: an allowed op on an open handle with no tap,
        either a blocking op's probe (a wait goes on to a thread) or an op the handle says
        returns at once (DeviceHandle.inline). False, having done nothing, for anything
        else: the event loop then runs it on the connection's own thread (bridge/loop.py).
        """
        args = c.args
        n = len(args)
        entry = self.handles.get(args[0]) if n and type(args[0]) is int else None
        if entry is None:
            return False
        bound = entry.ops.get(c.op)
        if bound is None:
            return False
        info, fn, where = bound
        handle = entry.handle
        if handle.closed:
            return False
        try:
            if where == PROBE_FIRST or where == ASK_PROBE and handle.inline(c.op, args):
                t = args[-1] if n > 1 else 0
                if not (t is None or (type(t) is float or type(t) is int) and t > 0):
                    return False  # a timeout of 0 or a bad one: the general path
                # The commonest arities spelled out: no args[1:] list, no star call.
                try:
                    result = fn(args[1], PROBE) if n == 3 else \
                        fn(args[1], args[2], PROBE) if n == 4 else fn(*args[1:-1], PROBE)
                except WouldBlock:
                    self._wait_on_thread(c, handle, info, args[1:-1], t)
                    return True
            elif where == INSTANT or where == ASK and handle.inline(c.op, args):
                result = fn(args[1], args[2]) if n == 3 else \
                    fn(args[1], args[2], args[3]) if n == 4 else fn(*args[1:])
            elif where & TAPPED:
                return self._call_tapped(c, handle, info, where & ~TAPPED)
            else:
                return False  # LANE, or the handle says this call may wait
            if type(result) is Opened:
                result = registered(handle, result)
            self.reply(c.id, result)  # ValueError if the result exceeds the client's limit
        except Exception as e:
            self.send(Error(c.id, *self._error(e, c.op, c.args)))
        return True

    def _call_tapped(self, c: Call, handle: DeviceHandle, info: OpInfo, where: int) -> bool:
        """call_inline through the handle's tap (record, faults, audit), on the event loop
        unless the tap may sleep now; False, having done nothing, otherwise."""
        args = c.args
        if where == LANE or handle._tap.may_wait(handle):
            return False
        if (where == ASK or where == ASK_PROBE) and not handle.inline(c.op, args):
            return False
        try:
            if where == INSTANT or where == ASK:
                result = invoke(handle, info, args[1:], None)
            else:
                t = args[-1] if len(args) > 1 else 0
                if not (t is None or (type(t) is float or type(t) is int) and t > 0):
                    return False  # a timeout of 0 or a bad one: the general path
                try:
                    result = invoke(handle, info, args[1:-1], PROBE)
                except WouldBlock:
                    self._wait_on_thread(c, handle, info, args[1:-1], t)
                    return True
            self.reply(c.id, result)
        except Exception as e:
            self.send(Error(c.id, *self._error(e, c.op, c.args)))
        return True

    def _call(self, c: Call) -> None:
        try:
            # What the event loop may run (an op of an open handle that cannot wait) goes
            # the same fast way here, on a lane or a TLS connection's thread.
            if self.call_inline(c):
                return
            target = self._resolve(c.op, c.args)
            if target is None:
                if c.op == "lease":
                    try:
                        result = self._core(c.op, c.args, PROBE)
                    except WouldBlock:
                        t = timeout_arg(c.args[2:3] or [None])
                        self._wait_on_thread(c, None, None, c.args, t)
                        return
                    self.send(Reply(c.id, result))
                    return
                self.send(Reply(c.id, self._core(c.op, c.args)))
                return
            handle, info, args = target
            if not info.blocking:
                self.send(Reply(c.id, invoke(handle, info, args, None)))
                return
            timeout = timeout_arg(args)
            try:
                result = invoke(handle, info, args[:-1], PROBE)
            except WouldBlock:
                if timeout == 0:
                    result = invoke(handle, info, args[:-1], Deadline(0))
                else:
                    self._wait_on_thread(c, handle, info, args[:-1], timeout)
                    return
            self.send(Reply(c.id, result))
        except Exception as e:
            self.send(Error(c.id, *self._error(e, c.op, c.args)))

    def _wait_on_thread(self, c: Call, handle: DeviceHandle | None, info: OpInfo | None,
                        args: Sequence[Any], timeout: float | None) -> None:
        deadline = Deadline(timeout)

        def run() -> None:
            try:
                msg: Message = Reply(c.id, self._core(c.op, args, deadline) if info is None
                                     else invoke(handle, info, args, deadline))  # type: ignore[arg-type]
            except Exception as e:
                msg = Error(c.id, *self._error(e, c.op, c.args))
            if not self.closed:
                self.send(msg)

        self._on_thread(f"hwbridge-wait-{c.op}", run)

    def _on_thread(self, name: str, run: Callable[[], None]) -> None:
        """Run an operation that must wait on its own thread, counted against the limit."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise BlockingIOError(errno.EAGAIN,
                                      f"more than {self.max_waiting} waiting operations")
            self._waiting += 1
        try:
            threading.Thread(target=self._counted, args=(run,), name=name, daemon=True).start()
        except RuntimeError as e:  # can't start new thread: this call fails, EAGAIN
            with self._lock:
                self._waiting -= 1
            raise BlockingIOError(errno.EAGAIN, f"no thread for this wait: {e}") from e

    def _counted(self, run: Callable[[], None]) -> None:
        try:
            run()
        finally:
            with self._lock:
                self._waiting -= 1

    def _batch(self, b: Batch, start: int, results: list[Any], on_thread: bool) -> None:
        """Run ops from ``start``; on the first op that must wait, go on in a thread."""
        for i in range(start, len(b.ops)):
            op, raw = b.ops[i]
            try:
                args = [deref(a, results, i) for a in raw]
                target = self._resolve(op, args)
                if target is None:
                    results.append(self._core(op, args))
                    continue
                handle, info, hargs = target
                if not info.blocking:
                    results.append(invoke(handle, info, hargs, None))
                    continue
                timeout = timeout_arg(hargs)
                try:
                    results.append(invoke(handle, info, hargs[:-1], PROBE))
                except WouldBlock:
                    if timeout == 0:
                        results.append(invoke(handle, info, hargs[:-1], Deadline(0)))
                    elif on_thread:
                        results.append(invoke(handle, info, hargs[:-1], Deadline(timeout)))
                    else:
                        self._on_thread("hwbridge-batch",
                                        functools.partial(self._batch, b, i, results, True))
                        return
            except Exception as e:
                err = BatchError(i, *self._error(e, op, raw))
                self.send(BatchReply(b.id, results, err))
                return
        self.send(BatchReply(b.id, results, None))

    # -- dispatch -------------------------------------------------------------------------

    def _resolve(self, op: str, args: Sequence[Any]
                 ) -> tuple[DeviceHandle, OpInfo, Sequence[Any]] | None:
        """None for a session-level op; else the handle, the op's table entry and its args."""
        if op in _CORE_OPS:
            return None
        entry = self.handles.get(args[0]) if args and type(args[0]) is int else None
        if entry is not None:
            bound = entry.ops.get(op)
            if bound is not None:
                return entry.handle, bound[0], args[1:]
        if not args or type(args[0]) is not int:
            raise ValueError(f"operation {op!r} needs a handle as its first argument")
        if entry is None:
            raise OSError(errno.EBADF, f"no open handle {args[0]} on this connection")
        if entry.fenced is not None:
            raise OSError(errno.ESTALE, f"fenced: {entry.fenced}; open the device again")
        info = type(entry.handle).OPS.get(op)
        if info is None:
            raise OSError(errno.EOPNOTSUPP,
                          f"operation {op!r} is not supported by a {entry.handle.kind} device")
        missing = info.access & ~entry.access
        if missing:
            raise PermissionError(errno.EACCES,
                                  f"{op} needs {missing.text()!r} access, the handle has "
                                  f"{entry.access.text()!r}")
        return entry.handle, info, args[1:]

    def _core(self, op: str, args: Sequence[Any], deadline: Deadline = NOW) -> Any:
        if op in _LEASE_OPS:
            return self.host.leases.op(self, op, args, deadline)
        if op in _SHARE_OPS:
            result = self.host.shares.op(self, op, args)
            if op == "share" and self.host.audit is not None:
                self._audit_share(args)
            return result
        if op == "open":
            return self._open(*arity(op, args, 1, 2))
        if op == "close":
            (hid,) = arity(op, args, 1, 1)
            with self._lock:
                entry = self.handles.pop(hid, None) if type(hid) is int else None
            if entry is None:
                raise OSError(errno.EBADF, f"no open handle {hid!r} on this connection")
            if entry.shares or entry.origin:
                self._forget(entry, f"{entry.handle.spec.name}: the shared handle was closed")
            entry.handle.close()
            return None
        if op == "devices":
            arity(op, args, 0, 0)
            return self.device_list()
        if op == "info":
            (name,) = arity(op, args, 1, 1)
            spec = self._spec(name)
            return {**spec.public(), **self.host.backend(spec.backend).describe(spec)}
        raise AssertionError(op)

    def _spec(self, name: object) -> DeviceSpec:
        spec = self.devices.get(name) if isinstance(name, str) else None
        if spec is None and name in self.host.manifest.devices:
            raise PermissionError(errno.EACCES, f"{self.principal} has no grant for {name}")
        if spec is None:
            raise FileNotFoundError(errno.ENOENT, f"no device {name!r} on this host")
        return spec

    def _open(self, name: object, access: object = None) -> int:
        spec = self._spec(name)
        want = spec.access if access is None else Access.parse(str(access))
        if want & ~spec.access:
            raise PermissionError(errno.EACCES, f"the manifest grants {spec.access.text()!r} "
                                                f"access to {spec.name}, not {want.text()!r}")
        with self._lock:
            if len(self.handles) >= self.max_handles:
                raise OSError(errno.EMFILE, f"more than {self.max_handles} open handles")
        self.host.leases.check_open(self, spec.name)
        backend = self.host.backend(spec.backend)
        tap = self.host.tap
        handle = (backend.open(spec, want) if tap is None
                  else tap.open(spec, want, lambda: backend.open(spec, want)))
        if self.fit is not None:
            self.fit(handle)
        hid = self._register(handle, want)
        if self.host.audit is not None:
            self._audit("open", "open", spec.name, f"access={want.text()}", True, 0)
        return hid

    def _register(self, handle: DeviceHandle, want: Access) -> int:
        """Put an open handle into this connection's table; its number goes to the client."""
        if isinstance(handle, NodeHandle):
            handle.max_io = self.host.manifest.max_frame - 4096
        handle._session = self  # type: ignore[attr-defined]
        handle.access = want
        if self.host.tap is not None:
            handle._tap = self.host.tap
        with self._lock:
            if len(self.handles) >= self.max_handles:
                close_quietly(handle)
                raise OSError(errno.EMFILE, f"more than {self.max_handles} open handles")
            if self.closed:
                close_quietly(handle)
                raise OSError(errno.ECONNRESET, "connection closed")
            hid, self._next = self._next, self._next + 1
            self.handles[hid] = Entry(handle, want)
        handle.attach(lambda topic, payload: self._event(topic, hid, payload))
        return hid

    def _event(self, topic: str, hid: int, payload: Any) -> None:
        if not self.closed:
            self.send(Event(topic, hid, payload))

    def _error(self, e: BaseException, op: str, args: Sequence[Any]) -> tuple[int, str]:
        """errno and message for an exception raised while running ``op``."""
        where, device = op, ""
        if args and type(args[0]) is int and (op not in _CORE_OPS or op == "share"):
            entry = self.handles.get(args[0])
            if entry is not None:
                device = entry.handle.spec.name
                where = f"{device}: {op}"
        elif op in ("open", "info") and args and isinstance(args[0], str):
            device = args[0]
            where = f"{device}: {op}"
        if self.host.audit is not None:
            self._audit_error(e, op, args, device)
        known = errno_of(e, where)
        if known is not None:
            return known
        log.exception("unexpected error in %s from %s", op, self.peer)
        return errno.EIO, f"{where}: internal error: {type(e).__name__}: {e}"


_CORE_OPS = frozenset({"open", "close", "devices", "info"}) | _LEASE_OPS | _SHARE_OPS
