# The simulator's clock. Models read time and wait through it, never through time.* directly,
# so a test can switch a server to manual time and step it: time-dependent behaviour (flash
# busy times, instrument response delays, lease expiry) becomes deterministic.
from __future__ import annotations

import threading
import time


class Clock:
    """Real monotonic time by default; ``set_manual()`` freezes it until ``advance()``."""

    def __init__(self) -> None:
        self._manual = False
        self._now = 0.0
        self._cv = threading.Condition()

    @property
    def manual(self) -> bool:
        return self._manual

    def now(self) -> float:
        """Seconds, monotonic."""
        with self._cv:
            return self._now if self._manual else time.monotonic()

    def set_manual(self, start: float = 0.0) -> None:
        with self._cv:
            self._manual, self._now = True, start
            self._cv.notify_all()

    def set_real(self) -> None:
        with self._cv:
            self._manual = False
            self._cv.notify_all()

    def advance(self, seconds: float) -> None:
        """Move manual time forward and wake every waiter."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._cv:
            if not self._manual:
                raise RuntimeError("advance() needs manual time (set_manual)")
            self._now += seconds
            self._cv.notify_all()

    def sleep_until(self, t: float, cancel: threading.Event | None = None) -> bool:
        """Wait until time ``t``; False if ``cancel`` was set first."""
        with self._cv:
            while True:
                if cancel is not None and cancel.is_set():
                    return False
                now = self._now if self._manual else time.monotonic()
                if now >= t:
                    return True
                self._cv.wait(0.05 if self._manual else min(0.05, t - now))


#: The clock every model of this process uses.
clock = Clock()
