# How one operation of an open handle runs, shared by calls and batches (bridge/session.py):
# where the event loop may run it (decided once per handle and op), invoking it through the
# handle's tap, registering a handle an op created, and the argument checks every op makes.
# Must not know about connections or sockets.
from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from typing import Any

from .backend import Access, DeviceHandle, Opened, OpInfo
from .protocol import Ref
from .shares import Share
from .tap import Tap
from .timeout import Deadline

log = logging.getLogger("hwbridge.session")

# Where the event loop may run an op (bridge/loop.py), decided once per handle and op:
PROBE_FIRST = 0  # a blocking op: its probe never waits (a wait moves to a thread)
INSTANT = 1  # the handle says the op returns at once (DeviceHandle.INLINE, INLINE_ALL)
ASK = 2  # the handle decides per call (DeviceHandle.inline: posix ioctls by request)
LANE = 3  # never on the loop (a tap, or an op that may sleep)
ASK_PROBE = 4  # a blocking op whose probe the handle allows per call (PROBE_ASK)
TAPPED = 8  # added to the above under a tap (record, faults, audit): it decides per call


def placement(handle: DeviceHandle, info: OpInfo) -> int:
    if handle._tap is not None:
        return TAPPED | _where_untapped(handle, info)
    return _where_untapped(handle, info)


def _where_untapped(handle: DeviceHandle, info: OpInfo) -> int:
    if info.blocking:
        return ASK_PROBE if info.name in handle.PROBE_ASK else PROBE_FIRST
    if handle.INLINE_ALL or info.name in handle.INLINE:
        return INSTANT
    return ASK if type(handle).inline is not DeviceHandle.inline else LANE


class Entry:
    """A handle in a connection's table, with its allowed operations bound once."""

    __slots__ = ("handle", "access", "ops", "fenced", "shares", "origin")

    def __init__(self, handle: DeviceHandle, access: Access) -> None:
        self.handle = handle
        self.access = access
        self.fenced: str | None = None  # why the handle's lease was lost (bridge/leases.py)
        self.shares: list[Share] | None = None  # tokens made from this handle (shares.py)
        self.origin: Share | None = None  # the token this handle was adopted through
        # op name -> (table entry, bound method, where it may run), only for ops the granted
        # access allows: the hot path is then one dict lookup, no Flag arithmetic, no getattr.
        self.ops: dict[str, tuple[OpInfo, Callable[..., Any], int]] = {
            name: (info, getattr(handle, info.method), placement(handle, info))
            for name, info in type(handle).OPS.items()
            if not (info.access & ~access)
        }


def invoke(handle: DeviceHandle, info: OpInfo, args: Sequence[Any],
            deadline: Deadline | None) -> Any:
    fn = getattr(handle, info.method)
    if handle.closed:
        raise OSError(errno.EBADF, "handle is closed")
    tap: Tap | None = handle._tap
    if tap is not None:
        result = tap.call(handle, info, args, deadline,
                          lambda a, d: fn(*a) if d is None else fn(*a, d))
    else:
        result = fn(*args) if deadline is None else fn(*args, deadline)
    if isinstance(result, Opened):
        return registered(handle, result)
    return result


def registered(handle: DeviceHandle, result: Opened) -> int:
    """Register a handle an operation created, in the connection that owns ``handle``."""
    session: Any = getattr(handle, "_session", None)  # set by Session._register
    if session is None:
        close_quietly(result.handle)
        raise OSError(errno.EBADF, "handle is not attached to a connection")
    hid: int = session._register(result.handle, result.access)
    return hid


def timeout_arg(args: Sequence[Any]) -> float | None:
    if not args:
        raise ValueError("a blocking operation needs a timeout as its last argument")
    t = args[-1]
    if t is None:
        return None
    if type(t) not in (int, float) or not t >= 0:
        raise ValueError(f"timeout must be None or >= 0 seconds, not {t!r}")
    return float(t)


def arity(op: str, args: Sequence[Any], lo: int, hi: int) -> Sequence[Any]:
    if not lo <= len(args) <= hi:
        raise TypeError(f"{op} takes {lo}..{hi} arguments, got {len(args)}")
    return args


def deref(a: Any, results: list[Any], i: int) -> Any:
    if isinstance(a, Ref):
        if not 0 <= a.index < i:
            raise ValueError(f"operation {i} refers to the result of operation {a.index}, "
                             "which does not come before it")
        return results[a.index]
    return a


def close_quietly(h: DeviceHandle) -> None:
    try:
        h.close()
    except Exception:
        log.exception("closing %s", h.spec.name)


def errno_of(e: BaseException, where: str) -> tuple[int, str] | None:
    """The errno and message a client gets for ``e`` raised at ``where``; None for an
    exception nobody expected (the caller logs it and reports EIO)."""
    if isinstance(e, OSError) and e.errno:
        return e.errno, f"{where}: {e.strerror or e}"
    if isinstance(e, TimeoutError):
        return errno.ETIMEDOUT, f"{where}: timed out"
    if isinstance(e, ValueError | TypeError):
        return errno.EINVAL, f"{where}: {e}"
    return None
