# Simulated GPIO chips behaving like the kernel's GPIO v2 character device (gpiolib-cdev):
# line requests with the kernel's EBUSY/EINVAL/EPERM, active-low, bias, edge events with
# kernel-style seqno/line_seqno and CLOCK_MONOTONIC-like timestamps from the sim clock
# (wall-clock time for lines requested with EVENT_CLOCK_REALTIME).
# Lines can be wired together, within a chip or across chips, through the manifest:
#
#     [devices.gpiochip0]
#     kind = "gpio"
#     sim = "gpiochip"
#     lines = 8                                   # default 8
#     line_names = ["out", "in", ...]             # optional
#     wires = [[0, 1], [2, "gpiochip1", 5]]       # [line, other_line] or [line, chip, line]
#
# Wired lines form one net: an output on the net drives every input on it; with no output,
# an input reads its own bias (pull-up 1, pull-down 0), else any bias on the net, else 0.
# Must not know about sockets or sessions: it emits events through its handles.
from __future__ import annotations

import errno
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bridge.gpio_uapi import (
    EDGE_FLAGS,
    Attr,
    AttrId,
    EventId,
    LineFlag,
    line_attr,
    line_flags,
    validate_flags,
)
from bridge.gpiohost import GpioChip, LineRequestHandle
from bridge.manifest import DeviceSpec

from .clock import clock

Key = tuple[str, int]  # (chip name, line offset)

# The flags as plain ints: `int & IntFlag` runs enum's Python __rand__ and builds a flag
# object, microseconds per line on every read and write of a line.
_ACTIVE_LOW = int(LineFlag.ACTIVE_LOW)
_BIAS_PULL_DOWN = int(LineFlag.BIAS_PULL_DOWN)
_BIAS_PULL_UP = int(LineFlag.BIAS_PULL_UP)
_EDGE_FALLING = int(LineFlag.EDGE_FALLING)
_EDGE_RISING = int(LineFlag.EDGE_RISING)
_EVENT_CLOCK_REALTIME = int(LineFlag.EVENT_CLOCK_REALTIME)
_INPUT = int(LineFlag.INPUT)
_OUTPUT = int(LineFlag.OUTPUT)
_USED = int(LineFlag.USED)
_EDGE_FLAGS = int(EDGE_FLAGS)
_RISING, _FALLING = int(EventId.RISING_EDGE), int(EventId.FALLING_EDGE)


@dataclass
class _Line:
    name: str
    flags: int = 0  # requested flags; 0 while free
    consumer: str = ""
    value: int = 0  # physical level driven while an output
    debounce_us: int = 0
    request: SimLineRequest | None = None


@dataclass
class _Chip:
    name: str
    label: str
    lines: list[_Line] = field(default_factory=list)


class Board:
    """Every simulated chip of this process and the wires between their lines."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.chips: dict[str, _Chip] = {}
        self._parent: dict[Key, Key] = {}
        self._wired: dict[Key, tuple[_Line, ...]] = {}  # level()'s nets, see _others
        self.requested: dict[Key, _Line] = {}  # lines of a request: the ones edges watch

    def chip(self, spec: DeviceSpec) -> _Chip:
        """The chip of ``spec``, built (and wired) on first use."""
        with self.lock:
            c = self.chips.get(spec.name)
            if c is None:
                c = self._build(spec)
                self.chips[spec.name] = c
                self._wired.clear()  # new lines, new wires
            return c

    def _build(self, spec: DeviceSpec) -> _Chip:
        n = spec.options.get("lines", 8)
        if type(n) is not int or not 1 <= n <= 512:
            raise ValueError(f"{spec.name}: lines must be 1..512")
        names = spec.options.get("line_names", [f"line{i}" for i in range(n)])
        if not isinstance(names, list) or len(names) != n:
            raise ValueError(f"{spec.name}: line_names must list {n} names")
        chip = _Chip(spec.name, str(spec.options.get("label", "hwbridge-sim")),
                     [_Line(str(x)) for x in names])
        for w in spec.options.get("wires", []):
            if isinstance(w, list) and len(w) == 2:
                w = [w[0], spec.name, w[1]]
            if (not isinstance(w, list) or len(w) != 3 or type(w[0]) is not int
                    or not isinstance(w[1], str) or type(w[2]) is not int
                    or not 0 <= w[0] < n or w[2] < 0):
                raise ValueError(f"{spec.name}: a wire is [line, line] or [line, chip, line], "
                                 f"not {w!r}")
            self._union((spec.name, w[0]), (w[1], w[2]))
        return chip

    def _find(self, k: Key) -> Key:
        while self._parent.get(k, k) != k:
            k = self._parent[k]
        return k

    def _union(self, a: Key, b: Key) -> None:
        ra, rb = self._find(a), self._find(b)
        self._parent.setdefault(ra, ra)
        self._parent.setdefault(b, b)
        self._parent.setdefault(a, a)
        if ra != rb:
            self._parent[rb] = ra

    def _net(self, k: Key) -> list[Key]:
        if k not in self._parent:
            return [k]
        root = self._find(k)
        return [m for m in self._parent if self._find(m) == root]

    def _line(self, k: Key) -> _Line | None:
        c = self.chips.get(k[0])
        return c.lines[k[1]] if c is not None and k[1] < len(c.lines) else None

    def _others(self, k: Key) -> tuple[_Line, ...]:
        """The lines wired to ``k``, not ``k`` itself (of chips built so far): cached, as
        wires change only when a chip is built."""
        got = self._wired.get(k)
        if got is None:
            own = self._line(k)
            lines = [self._line(m) for m in self._net(k)]
            got = self._wired[k] = tuple(x for x in lines if x is not None and x is not own)
        return got

    def level(self, k: Key) -> int:
        """The physical level of a line, from its net's driver or bias."""
        own = self._line(k)
        if own is not None and own.flags & _OUTPUT:
            return own.value
        others = self._others(k)
        for ln in others:
            if ln.flags & _OUTPUT:
                return ln.value
        for ln in (own, *others) if own is not None else others:
            if ln.flags & _BIAS_PULL_UP:
                return 1
            if ln.flags & _BIAS_PULL_DOWN:
                return 0
        return 0

    def _watched(self) -> dict[Key, int]:
        return {k: self.level(k) for k, ln in self.requested.items() if ln.flags & _EDGE_FLAGS}

    def change(self, apply: Any) -> None:
        """Run ``apply()`` under the lock, then push edge events for lines whose level moved."""
        pending: list[tuple[SimLineRequest, list[int]]] = []
        with self.lock:
            before = self._watched()
            apply()
            now_ns = int(clock.now() * 1e9)
            for k, after in self._watched().items():
                if k not in before or before[k] == after:
                    continue
                ln = self._line(k)
                assert ln is not None and ln.request is not None
                active_low = 1 if ln.flags & _ACTIVE_LOW else 0
                rising = (after ^ active_low) == 1
                want = _EDGE_RISING if rising else _EDGE_FALLING
                if ln.flags & want:
                    eid = _RISING if rising else _FALLING
                    ts = (time.time_ns() if ln.flags & _EVENT_CLOCK_REALTIME
                          else now_ns)
                    pending.append((ln.request, ln.request.next_event(k[1], ts, eid)))
        for req, ev in pending:
            req.push_event(*ev)


BOARD = Board()


class SimGpioChip(GpioChip):
    """A simulated /dev/gpiochipN."""
    INLINE_ALL = True  # an in-process model: nothing here waits

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec)
        self.chip = BOARD.chip(spec)

    def get_chip_info(self) -> dict[str, Any]:
        return {"name": self.chip.name, "label": self.chip.label, "lines": len(self.chip.lines)}

    def get_line_info(self, offset: int) -> dict[str, Any]:
        if offset >= len(self.chip.lines):
            raise OSError(errno.EINVAL, f"Invalid argument (no line {offset})")
        with BOARD.lock:
            ln = self.chip.lines[offset]
            flags = ln.flags | _USED if ln.request is not None else _INPUT
            return {"name": ln.name, "consumer": ln.consumer, "offset": offset,
                    "flags": int(flags), "debounce_period_us": ln.debounce_us}

    def do_request(self, offsets: list[int], consumer: str, flags: int, attrs: list[Attr],
                   event_buffer_size: int) -> LineRequestHandle:
        n = len(self.chip.lines)
        for i, off in enumerate(offsets):
            if off >= n:
                raise OSError(errno.EINVAL, f"Invalid argument (no line {off})")
            validate_flags(line_flags(flags, attrs, i))
        req = SimLineRequest(self.spec, offsets, self.chip)

        def claim() -> None:
            for off in offsets:
                if self.chip.lines[off].request is not None:
                    raise OSError(errno.EBUSY, f"Device or resource busy (line {off})")
                self.chip.lines[off].request = req
                BOARD.requested[(self.chip.name, off)] = self.chip.lines[off]
            for off in offsets:
                self.chip.lines[off].consumer = consumer or "?"
            req.configure(flags, attrs)

        try:
            BOARD.change(claim)
        except OSError:
            with BOARD.lock:
                for off in offsets:
                    if self.chip.lines[off].request is req:
                        self.chip.lines[off].request = None
                        BOARD.requested.pop((self.chip.name, off), None)
            raise
        return req


class SimLineRequest(LineRequestHandle):
    """The lines of one simulated request; events reach the connection that made it."""
    INLINE_ALL = True  # an in-process model: nothing here waits

    def __init__(self, spec: DeviceSpec, offsets: list[int], chip: _Chip) -> None:
        super().__init__(spec, offsets)
        self.chip = chip
        self._seqno = 0
        self._line_seqno = [0] * len(offsets)

    def _lines(self) -> list[_Line]:
        return [self.chip.lines[o] for o in self.offsets]

    def configure(self, flags: int, attrs: list[Attr]) -> None:
        """Apply a config to the lines (under the board lock, flags already validated)."""
        for i, ln in enumerate(self._lines()):
            f = line_flags(flags, attrs, i)
            ln.flags = f
            if f & _OUTPUT:
                logical = line_attr(attrs, AttrId.OUTPUT_VALUES, i) or 0
                ln.value = logical ^ (1 if f & _ACTIVE_LOW else 0)
            ln.debounce_us = line_attr(attrs, AttrId.DEBOUNCE, i) or 0

    def next_event(self, offset: int, ts: int, eid: int) -> list[int]:
        """Number one event like the kernel: seqno per request, line_seqno per line."""
        i = self.offsets.index(offset)
        self._seqno += 1
        self._line_seqno[i] += 1
        return [ts, int(eid), offset, self._seqno, self._line_seqno[i]]

    def _selected(self, mask: int) -> list[int]:
        chosen = [i for i in range(len(self.offsets)) if mask >> i & 1]
        if not chosen:
            raise OSError(errno.EINVAL, "Invalid argument (empty mask)")
        return chosen

    def do_get(self, mask: int) -> int:
        with BOARD.lock:
            self._alive()
            bits = 0
            for i in self._selected(mask):
                ln = self.chip.lines[self.offsets[i]]
                level = BOARD.level((self.chip.name, self.offsets[i]))
                bits |= (level ^ (1 if ln.flags & _ACTIVE_LOW else 0)) << i
            return bits

    def do_set(self, bits: int, mask: int) -> None:
        def apply() -> None:
            self._alive()
            chosen = self._selected(mask)
            lines = self._lines()
            for i in chosen:
                if not lines[i].flags & _OUTPUT:
                    raise OSError(errno.EPERM, f"Operation not permitted (line "
                                               f"{self.offsets[i]} is an input)")
            for i in chosen:
                al = 1 if lines[i].flags & _ACTIVE_LOW else 0
                lines[i].value = (bits >> i & 1) ^ al

        BOARD.change(apply)

    def do_config(self, flags: int, attrs: list[Attr]) -> None:
        for i in range(len(self.offsets)):
            validate_flags(line_flags(flags, attrs, i))

        def apply() -> None:
            self._alive()
            self.configure(flags, attrs)

        BOARD.change(apply)

    def _alive(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor (request released)")

    def close(self) -> None:
        def release() -> None:
            if self.closed:
                return
            self.closed = True
            for off, ln in zip(self.offsets, self._lines(), strict=True):
                if ln.request is self:
                    ln.request, ln.flags, ln.consumer, ln.value = None, 0, "", 0
                    BOARD.requested.pop((self.chip.name, off), None)

        BOARD.change(release)


MODELS = {"gpiochip": SimGpioChip}

LAB = {
    "gpiochip0": {
        "kind": "gpio", "sim": "gpiochip",
        "description": "8 GPIO lines; line 0 (output) is wired to line 1 (input)",
        "label": "hwbridge-sim",
        "line_names": ["wire-out", "wire-in", "gpio2", "gpio3", "gpio4", "gpio5", "gpio6",
                       "gpio7"],
        "wires": [[0, 1]],
    },
}
