# The proxy for GPIO chips (kind "gpio"), shaped like python-periphery's gpio_cdev2 and
# mirroring the kernel's GPIO v2 uAPI: each configured line is one kernel line request on
# the host, and edge events (struct gpio_v2_line_event, kernel timestamps) are pushed by the
# host into a client-side queue, so wait_event() costs no round trip. Every other method is
# one round trip. Client side, pure Python, importable on Windows. Must not know about
# sockets or how the host drives the chip.
from __future__ import annotations

import collections
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bridge.gpio_uapi import AttrId, EventId, LineFlag

from .base import Proxy

if TYPE_CHECKING:
    from bridge.client import Client
    from bridge.protocol import Event as WireEvent

EVENT_TOPIC = "gpio.event"
QUEUE_LIMIT = 4096  # events kept per line for wait_event; the oldest go first, like the kernel


class Direction(enum.Enum):
    """Line direction."""

    IN = "in"
    OUT = "out"


class Edge(enum.Enum):
    """Which edges raise events on an input line."""

    NONE = "none"
    RISING = "rising"
    FALLING = "falling"
    BOTH = "both"


class Bias(enum.Enum):
    """Line bias."""

    DEFAULT = "default"
    PULL_UP = "pull_up"
    PULL_DOWN = "pull_down"
    DISABLE = "disable"


class Drive(enum.Enum):
    """Output drive."""

    DEFAULT = "default"
    OPEN_DRAIN = "open_drain"
    OPEN_SOURCE = "open_source"


_EDGE_FLAGS = {Edge.NONE: 0, Edge.RISING: LineFlag.EDGE_RISING,
               Edge.FALLING: LineFlag.EDGE_FALLING,
               Edge.BOTH: LineFlag.EDGE_RISING | LineFlag.EDGE_FALLING}
_BIAS_FLAGS = {Bias.DEFAULT: 0, Bias.PULL_UP: LineFlag.BIAS_PULL_UP,
               Bias.PULL_DOWN: LineFlag.BIAS_PULL_DOWN, Bias.DISABLE: LineFlag.BIAS_DISABLED}
_DRIVE_FLAGS = {Drive.DEFAULT: 0, Drive.OPEN_DRAIN: LineFlag.OPEN_DRAIN,
                Drive.OPEN_SOURCE: LineFlag.OPEN_SOURCE}


@dataclass(frozen=True, slots=True)
class EdgeEvent:
    """One edge on a line, as the kernel reported it (struct gpio_v2_line_event)."""

    line: int
    edge: Edge  # Edge.RISING or Edge.FALLING
    timestamp_ns: int
    seqno: int  # counts events of the whole line request
    line_seqno: int  # counts events of this line


Event = EdgeEvent


@dataclass(frozen=True, slots=True)
class ChipInfo:
    """struct gpiochip_info."""

    name: str
    label: str
    lines: int


@dataclass(frozen=True, slots=True)
class LineInfo:
    """struct gpio_v2_line_info (the parts a user reads)."""

    offset: int
    name: str
    consumer: str
    flags: LineFlag
    debounce_period_us: int

    @property
    def used(self) -> bool:
        return bool(self.flags & LineFlag.USED)


def _enum(cls: type[enum.Enum], v: Any, what: str) -> Any:
    if isinstance(v, cls):
        return v
    try:
        return cls(v)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{what} must be a {cls.__name__} or one of {choices}, "
                         f"not {v!r}") from None


def line_config(direction: Direction, edge: Edge = Edge.NONE, bias: Bias = Bias.DEFAULT,
                drive: Drive = Drive.DEFAULT, active_low: bool = False, value: bool = False,
                debounce_us: int = 0) -> dict[str, Any]:
    """The wire form of a one-line struct gpio_v2_line_config."""
    flags = LineFlag.INPUT if direction is Direction.IN else LineFlag.OUTPUT
    flags |= _EDGE_FLAGS[edge] | _BIAS_FLAGS[bias] | _DRIVE_FLAGS[drive]
    if active_low:
        flags |= LineFlag.ACTIVE_LOW
    attrs: list[list[int]] = []
    if direction is Direction.OUT:
        attrs.append([AttrId.OUTPUT_VALUES, int(bool(value)), 1])
    if debounce_us:
        attrs.append([AttrId.DEBOUNCE, debounce_us, 1])
    return {"flags": int(flags), "attrs": attrs}


class GPIO(Proxy):
    """A GPIO chip on a remote host.

    ``configure(line, ...)`` requests a line (or reconfigures it); ``read``/``write`` use
    that request; an unconfigured line is requested as an input (read) or output (write)
    on first use, in the same round trip. Edge events arrive pushed by the host.
    """

    def __init__(self, client: Client, name: str, handle: Any,
                 description: dict[str, Any] | None = None, consumer: str = "hwbridge") -> None:
        super().__init__(client, name, handle, description)
        self.consumer = consumer
        self._requests: dict[int, Any] = {}  # line -> line-request handle (or Deferred)
        self._owner: dict[int, int] = {}  # line-request handle -> line
        self._cv = threading.Condition()
        self._queues: dict[int, collections.deque[EdgeEvent]] = {}
        self._orphans: list[WireEvent] = []  # events that beat their request's reply
        self._callbacks: list[Callable[[EdgeEvent], None]] = []
        self._listening = False
        self._handler = self._on_wire_event  # one bound method, so it can be removed
        self._callback_handler = self._run_callbacks
        self._due: collections.deque[EdgeEvent] = collections.deque()  # for the callbacks
        self._lost: BaseException | None = None  # the connection broke or closed

    # -- chip ---------------------------------------------------------------------------


    def chip_info(self) -> ChipInfo:
        """Name, label and number of lines of the chip."""
        info: ChipInfo = self.client.call(
            "chip_info", [self.handle], lambda d: ChipInfo(d["name"], d["label"], d["lines"]))
        return info

    def line_info(self, line: int) -> LineInfo:
        """Name, consumer and flags of ``line``."""
        info: LineInfo = self.client.call(
            "line_info", [self.handle, _line(line)], lambda d: LineInfo(
                d["offset"], d["name"], d["consumer"], LineFlag(d["flags"]),
                d["debounce_period_us"]))
        return info

    # -- lines --------------------------------------------------------------------------

    def configure(self, line: int, direction: Direction | str, edge: Edge | str = Edge.NONE,
                  bias: Bias | str = Bias.DEFAULT, *, drive: Drive | str = Drive.DEFAULT,
                  active_low: bool = False, value: bool = False, debounce_us: int = 0) -> None:
        """Request ``line`` (or change its request) with this configuration.

        ``value`` is the initial level of an output. Errors are the kernel's: EBUSY when the
        line is already requested, EINVAL for flags it refuses (edges on an output, ...).
        """
        line = _line(line)
        d = _enum(Direction, direction, "direction")
        e = _enum(Edge, edge, "edge")
        config = line_config(d, e, _enum(Bias, bias, "bias"), _enum(Drive, drive, "drive"),
                             bool(active_low), bool(value), int(debounce_us))
        if e is not Edge.NONE:
            self._listen()
        if line in self._requests:
            self.client.call("set_config", [self._request(line), config])
        else:
            self._new_request(line, config)

    def read(self, line: int) -> bool:
        """The line's logical value (an unconfigured line is requested as an input)."""
        line = _line(line)
        value: bool
        if line in self._requests:
            value = self.client.call("get_values", [self._request(line), 1], _bit)
            return value
        if self._in_batch():
            req = self._new_request(line, line_config(Direction.IN))
            value = self.client.call("get_values", [req, 1], _bit)
            return value
        try:
            with self.client.batch():
                req = self._new_request(line, line_config(Direction.IN))
                got = self.client.call("get_values", [req, 1], _bit)
        except BaseException:
            with self._cv:
                self._requests.pop(line, None)
            raise
        self._adopt(line, req)
        result: bool = got.result()
        return result

    def write(self, line: int, value: bool) -> None:
        """Drive an output line (an unconfigured line is requested as an output)."""
        line = _line(line)
        if line in self._requests:
            self.client.call("set_values", [self._request(line), int(bool(value)), 1])
        else:
            self._new_request(line, line_config(Direction.OUT, value=bool(value)))

    def release(self, line: int) -> None:
        """Give ``line`` back to the chip (closes its request on the host)."""
        line = _line(line)
        req = self._requests.pop(line, None)
        if req is not None:
            self._owner.pop(self._resolved(req), None)
            self.client.call("close", [self._resolved(req)])

    # -- events -------------------------------------------------------------------------

    def wait_event(self, line: int, timeout: float | None = None) -> EdgeEvent | None:
        """The next edge event of ``line``, or None after ``timeout`` s (0 polls)."""
        line = _line(line)
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            q = self._queues.setdefault(line, collections.deque(maxlen=QUEUE_LIMIT))
            while not q:
                if self._lost is not None:  # no event can come any more
                    raise type(self._lost)(*self._lost.args)  # anew each time
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left)
            return q.popleft()

    def on_event(self, callback: Callable[[EdgeEvent], None]) -> None:
        """Call ``callback(event)`` for every edge event of this chip, in order, on the
        client's event thread (a callback may call the client)."""
        if not self._callbacks:
            self.client.on_event(self._callback_handler, EVENT_TOPIC)
        self._callbacks.append(callback)
        self._listen()

    def _listen(self) -> None:
        if not self._listening:
            self._listening = True
            # Storing an event is short and calls nothing, so it runs on the thread that
            # received it: wait_event() wakes with no hand-off to the event thread (an edge
            # a write raises is queued by the time the write returns).
            self.client.on_event(self._handler, EVENT_TOPIC, direct=True)
            self.client.on_lost(self._on_lost)

    def _on_lost(self, e: BaseException) -> None:
        with self._cv:
            self._lost = e
            self._cv.notify_all()

    def _on_wire_event(self, ev: WireEvent) -> None:
        with self._cv:
            if ev.handle not in self._owner:
                if self._requests:  # possibly ours, its request's reply not yet handled
                    self._orphans = self._orphans[-QUEUE_LIMIT:] + [ev]
                return
            event = _edge_event(ev.payload)
            self._queues.setdefault(event.line, collections.deque(maxlen=QUEUE_LIMIT)
                                    ).append(event)
            self._cv.notify_all()
            if self._callbacks:
                self._due.append(event)

    def _run_callbacks(self, _ev: object = None) -> None:
        """Call the callbacks for the events stored since (on the event thread)."""
        while True:
            with self._cv:
                if not self._due:
                    return
                event = self._due.popleft()
            for cb in list(self._callbacks):
                cb(event)

    # -- plumbing -----------------------------------------------------------------------

    def _in_batch(self) -> bool:
        return getattr(self.client._local, "batch", None) is not None

    def _new_request(self, line: int, config: dict[str, Any]) -> Any:
        with self._cv:
            self._requests[line] = None  # claim before the reply: see _on_wire_event
        try:
            req = self.client.call("request_lines", [self.handle, [line], self.consumer,
                                                     config, 0])
        except BaseException:
            with self._cv:
                self._requests.pop(line, None)
            raise
        with self._cv:
            self._requests[line] = req
        self._adopt(line, req)
        return req

    def _adopt(self, line: int, req: Any) -> None:
        if hasattr(req, "done") and not req.done:
            return  # inside a batch: adopted when first used
        with self._cv:
            h = self._resolved(req)
            self._requests[line] = h
            self._owner[h] = line
            early, self._orphans = ([e for e in self._orphans if e.handle == h],
                                    [e for e in self._orphans if e.handle != h])
        for ev in early:
            self._on_wire_event(ev)
        if early:
            self._run_callbacks()  # their own turn on the event thread may have passed

    def _request(self, line: int) -> Any:
        req = self._requests[line]
        if hasattr(req, "done") and req.done:
            self._adopt(line, req)
            req = self._requests[line]
        return req

    @staticmethod
    def _resolved(req: Any) -> Any:
        return req.result() if hasattr(req, "done") else req

    def close(self) -> None:
        """Release every line and the chip, in one round trip."""
        if self.closed:
            return
        self.closed = True
        self.client.remove_handler(self._handler)
        self.client.remove_handler(self._callback_handler)
        self.client.remove_handler(self._on_lost)
        handles = [self._resolved(r) for r in self._requests.values() if r is not None]
        self._requests.clear()
        with self.client.batch():
            for h in handles:
                self.client.call("close", [h])
            self.client.call("close", [self.handle])


    def __repr__(self) -> str:
        return f"<GPIO {self.name} on {self.client.url}>"


def _line(line: object) -> int:
    if type(line) is not int or line < 0:
        raise ValueError(f"a line is a non-negative integer, not {line!r}")
    return line


def _bit(bits: int) -> bool:
    return bool(bits & 1)


def _edge_event(payload: list[int]) -> EdgeEvent:
    ts, eid, offset, seqno, line_seqno = payload
    edge = Edge.RISING if eid == EventId.RISING_EDGE else Edge.FALLING
    return EdgeEvent(offset, edge, ts, seqno, line_seqno)
