# The one hook through which a device host lets something watch or bend its devices'
# operations: a Tap sees every open and every handle operation (with its arguments and
# outcome) on any backend. The recorder (bridge/record.py) and fault injection
# (sim/faults.py) are taps. The session calls a tap only when one is installed, so an
# unused hook costs nothing. Must not know about the wire, sockets or any device kind.
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import Access, DeviceHandle, OpInfo
    from .manifest import DeviceSpec
    from .timeout import Deadline

#: Runs the real operation: ``run(args, deadline)``; deadline is None for a non-blocking op.
Run = Callable[[Sequence[Any], "Deadline | None"], Any]


class Tap:
    """Sees every device operation of a host. The base class passes everything through.

    ``call`` may raise ``WouldBlock`` out of ``run``: the session then retries the same
    operation on a thread, so a tap must count or record an operation only once it finished
    (returned a value or raised anything but WouldBlock).
    """

    def open(self, spec: DeviceSpec, access: Access, run: Callable[[], DeviceHandle]
             ) -> DeviceHandle:
        """Open ``spec``; ``run()`` asks the backend."""
        return run()

    def call(self, handle: DeviceHandle, info: OpInfo, args: Sequence[Any],
             deadline: Deadline | None, run: Run) -> Any:
        """Run operation ``info.name`` of ``handle``; ``run(args, deadline)`` does it."""
        return run(args, deadline)

    def may_wait(self, handle: DeviceHandle) -> bool:
        """True if ``call`` may sleep for ``handle`` now (a fault's latency): the host then
        runs the operation on the connection's own thread instead of its event loop."""
        return False


class Chain(Tap):
    """``outer`` sees what ``inner`` did: Chain(recorder, faults) records injected faults."""

    def __init__(self, outer: Tap, inner: Tap) -> None:
        self.outer = outer
        self.inner = inner

    def open(self, spec: DeviceSpec, access: Access, run: Callable[[], DeviceHandle]
             ) -> DeviceHandle:
        return self.outer.open(spec, access, lambda: self.inner.open(spec, access, run))

    def call(self, handle: DeviceHandle, info: OpInfo, args: Sequence[Any],
             deadline: Deadline | None, run: Run) -> Any:
        def inner(a: Sequence[Any], d: Deadline | None) -> Any:
            return self.inner.call(handle, info, a, d, run)

        return self.outer.call(handle, info, args, deadline, inner)

    def may_wait(self, handle: DeviceHandle) -> bool:
        return self.outer.may_wait(handle) or self.inner.may_wait(handle)


def chain(*taps: Tap | None) -> Tap | None:
    """One tap made of ``taps`` (outermost first), skipping None; None if there are none."""
    present = [t for t in taps if t is not None]
    if not present:
        return None
    result = present[-1]
    for t in reversed(present[:-1]):
        result = Chain(t, result)
    return result
