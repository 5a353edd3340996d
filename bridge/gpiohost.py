# Host-side GPIO handles shared by the posix and sim backends: a chip handle and a
# line-request handle whose remote operations mirror the GPIO v2 ioctls one to one.
# Backends implement a few primitives; argument checks, access rules and the wire shapes
# live here once. Must not know about file descriptors, threads or the simulator.
#
# Wire operations (chip handle):
#   chip_info()                               -> {"name", "label", "lines"}
#   line_info(offset)                         -> {"name", "consumer", "offset", "flags",
#                                                 "debounce_period_us"}
#   request_lines(offsets, consumer, config, event_buffer_size) -> new line-request handle
# Wire operations (line-request handle):
#   get_values(mask) -> bits;  set_values(bits, mask);  set_config(config)
# Pushed events (line-request handle), topic "gpio.event", payload as struct
# gpio_v2_line_event: [timestamp_ns, id, offset, seqno, line_seqno]
from __future__ import annotations

import abc
import errno
from typing import Any

from .backend import Access, DeviceHandle, Opened, op
from .gpio_uapi import (
    GPIO_MAX_NAME_SIZE,
    GPIO_V2_LINES_MAX,
    Attr,
    AttrId,
    LineFlag,
    line_attr,
    line_flags,
    parse_config,
)
from .manifest import DeviceSpec

EVENT_TOPIC = "gpio.event"
MAX_EVENT_BUFFER = 1024 * 64


def granted(handle: DeviceHandle, fallback: Access) -> Access:
    """The rights the owning connection holds on ``handle`` (set when it was registered)."""
    access = getattr(handle, "access", None)
    return access if isinstance(access, Access) else fallback


def _wants_output(flags: int, attrs: list[Attr], n: int) -> bool:
    return any(line_flags(flags, attrs, i) & LineFlag.OUTPUT for i in range(n))


def _mask(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v < 1 << 64:
        raise ValueError(f"{what} must be a 64-bit unsigned integer, not {v!r}")
    return v


class GpioChip(DeviceHandle):
    """An open GPIO chip (/dev/gpiochipN or a simulated one)."""

    kind = "gpio"

    def __init__(self, spec: DeviceSpec, access: Access | None = None) -> None:
        super().__init__(spec)
        if access is not None:
            self.access = access

    @abc.abstractmethod
    def get_chip_info(self) -> dict[str, Any]:
        """GPIO_GET_CHIPINFO_IOCTL."""

    @abc.abstractmethod
    def get_line_info(self, offset: int) -> dict[str, Any]:
        """GPIO_V2_GET_LINEINFO_IOCTL."""

    @abc.abstractmethod
    def do_request(self, offsets: list[int], consumer: str, flags: int, attrs: list[Attr],
                   event_buffer_size: int) -> LineRequestHandle:
        """GPIO_V2_GET_LINE_IOCTL: a new line request."""

    @op("chip_info")
    def chip_info(self) -> dict[str, Any]:
        """The chip's name, label and number of lines."""
        return self.get_chip_info()

    @op("line_info")
    def line_info(self, offset: int) -> dict[str, Any]:
        """Name, consumer and flags of one line."""
        if type(offset) is not int or not 0 <= offset < 1 << 32:
            raise ValueError(f"a line offset is an unsigned 32-bit integer, not {offset!r}")
        return self.get_line_info(offset)

    @op("request_lines", Access.READ)
    def request_lines(self, offsets: list[int], consumer: str, config: dict[str, Any],
                      event_buffer_size: int = 0) -> Opened:
        """Request lines; the client receives the new line-request handle."""
        if (not isinstance(offsets, list) or not 0 < len(offsets) <= GPIO_V2_LINES_MAX
                or not all(type(o) is int and 0 <= o < 1 << 32 for o in offsets)):
            raise ValueError(f"offsets must be 1..{GPIO_V2_LINES_MAX} unsigned line numbers")
        if not isinstance(consumer, str) or len(consumer.encode()) >= GPIO_MAX_NAME_SIZE:
            raise ValueError(f"consumer must be a string under {GPIO_MAX_NAME_SIZE} bytes")
        if type(event_buffer_size) is not int or not 0 <= event_buffer_size <= MAX_EVENT_BUFFER:
            raise ValueError(f"event_buffer_size must be 0..{MAX_EVENT_BUFFER}")
        flags, attrs = parse_config(config, len(offsets))
        access = granted(self, self.access or self.spec.access)
        if _wants_output(flags, attrs, len(offsets)) and not access & Access.WRITE:
            raise PermissionError(errno.EACCES, "requesting output lines needs 'w' access")
        req = self.do_request(offsets, consumer, flags, attrs, event_buffer_size)
        return Opened(req, access)


class LineRequestHandle(DeviceHandle):
    """One line request: values, configuration, and edge events pushed as they happen."""

    kind = "gpio.line"

    def __init__(self, spec: DeviceSpec, offsets: list[int]) -> None:
        super().__init__(spec)
        self.offsets = offsets

    @abc.abstractmethod
    def do_get(self, mask: int) -> int:
        """GPIO_V2_LINE_GET_VALUES_IOCTL."""

    @abc.abstractmethod
    def do_set(self, bits: int, mask: int) -> None:
        """GPIO_V2_LINE_SET_VALUES_IOCTL."""

    @abc.abstractmethod
    def do_config(self, flags: int, attrs: list[Attr]) -> None:
        """GPIO_V2_LINE_SET_CONFIG_IOCTL."""

    def push_event(self, timestamp_ns: int, event_id: int, offset: int, seqno: int,
                   line_seqno: int) -> None:
        """Send one struct gpio_v2_line_event to the owning connection."""
        self.emit(EVENT_TOPIC, [timestamp_ns, event_id, offset, seqno, line_seqno])

    @op("get_values", Access.READ)
    def get_values(self, mask: int) -> int:
        """The values of the lines in ``mask`` (bit i: the request's i-th line)."""
        return self.do_get(_mask(mask, "mask"))

    @op("set_values", Access.WRITE)
    def set_values(self, bits: int, mask: int) -> None:
        """Drive the output lines in ``mask`` to ``bits``."""
        self.do_set(_mask(bits, "bits"), _mask(mask, "mask"))

    @op("set_config", Access.READ)
    def set_config(self, config: dict[str, Any]) -> None:
        """Change direction, edges, bias... of the requested lines."""
        flags, attrs = parse_config(config, len(self.offsets))
        if (_wants_output(flags, attrs, len(self.offsets))
                and not granted(self, Access.NONE) & Access.WRITE):
            raise PermissionError(errno.EACCES, "making lines outputs needs 'w' access")
        self.do_config(flags, attrs)

    def describe(self) -> dict[str, Any]:
        return {"offsets": list(self.offsets)}


__all__ = ["EVENT_TOPIC", "AttrId", "GpioChip", "LineRequestHandle", "granted", "line_attr",
           "line_flags"]
