# One deadline type for every call that can block, on both sides of the wire.
# Seconds as float everywhere: None waits forever, 0 polls (pyserial's serialutil.Timeout).
# Must not know about sockets or devices.
from __future__ import annotations

import errno
import math
import time
from typing import Final, NoReturn


class WouldBlock(Exception):
    """Raised by a probing deadline: the operation would have to wait.

    The device host first runs a blocking operation inline with a probing deadline; only
    when it raises this does it hand the operation to a thread that may wait.
    """


class Deadline:
    """A monotonic deadline: ``Deadline(None)`` never expires, ``Deadline(0)`` polls."""

    __slots__ = ("timeout", "probe", "_end")

    def __init__(self, timeout: float | None, *, probe: bool = False) -> None:
        if timeout is not None:
            if not isinstance(timeout, int | float) or isinstance(timeout, bool):
                raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
            if math.isnan(timeout) or timeout < 0:
                raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
        self.timeout = timeout
        self.probe = probe
        self._end = None if timeout is None else time.monotonic() + timeout

    @classmethod
    def probing(cls) -> Deadline:
        """A deadline that is already over and raises WouldBlock instead of TimeoutError."""
        return PROBE

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None for no limit."""
        if self._end is None:
            return None
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return self._end is not None and time.monotonic() >= self._end

    def expire(self, what: str) -> NoReturn:
        """Give up: WouldBlock for a probe, TimeoutError (ETIMEDOUT) otherwise."""
        if self.probe:
            raise WouldBlock(what)
        raise TimeoutError(errno.ETIMEDOUT, f"{what}: timed out after {self.timeout} s")


#: The shared probing deadline (immutable in practice: nothing ever changes a Deadline).
PROBE: Final = Deadline(0, probe=True)
