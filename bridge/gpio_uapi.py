# The Linux GPIO character device uAPI v2 as data: flag and attribute values, ctypes
# mirrors of its structures, and the kernel's validation of line flags. Shared by the
# client driver (drivers/gpio.py), the posix backend and the simulator, so each value is
# written once. Pure: ctypes and enum only, importable on Windows; must not know about
# file descriptors, ioctls being issued, sockets or handles.
from __future__ import annotations

import ctypes
import enum
import errno
from collections.abc import Sequence

# include/uapi/linux/gpio.h
GPIO_MAX_NAME_SIZE = 32
GPIO_V2_LINES_MAX = 64
GPIO_V2_LINE_NUM_ATTRS_MAX = 10


class LineFlag(enum.IntFlag):
    """enum gpio_v2_line_flag."""

    USED = 1 << 0
    ACTIVE_LOW = 1 << 1
    INPUT = 1 << 2
    OUTPUT = 1 << 3
    EDGE_RISING = 1 << 4
    EDGE_FALLING = 1 << 5
    OPEN_DRAIN = 1 << 6
    OPEN_SOURCE = 1 << 7
    BIAS_PULL_UP = 1 << 8
    BIAS_PULL_DOWN = 1 << 9
    BIAS_DISABLED = 1 << 10
    EVENT_CLOCK_REALTIME = 1 << 11
    EVENT_CLOCK_HTE = 1 << 12


class AttrId(enum.IntEnum):
    """enum gpio_v2_line_attr_id."""

    FLAGS = 1
    OUTPUT_VALUES = 2
    DEBOUNCE = 3


class EventId(enum.IntEnum):
    """enum gpio_v2_line_event_id."""

    RISING_EDGE = 1
    FALLING_EDGE = 2


EDGE_FLAGS = LineFlag.EDGE_RISING | LineFlag.EDGE_FALLING
DIRECTION_FLAGS = LineFlag.INPUT | LineFlag.OUTPUT
DRIVE_FLAGS = LineFlag.OPEN_DRAIN | LineFlag.OPEN_SOURCE
BIAS_FLAGS = LineFlag.BIAS_PULL_UP | LineFlag.BIAS_PULL_DOWN | LineFlag.BIAS_DISABLED
CLOCK_FLAGS = LineFlag.EVENT_CLOCK_REALTIME | LineFlag.EVENT_CLOCK_HTE
# GPIO_V2_LINE_VALID_FLAGS of drivers/gpio/gpiolib-cdev.c
VALID_FLAGS = (LineFlag.ACTIVE_LOW | EDGE_FLAGS | DIRECTION_FLAGS | DRIVE_FLAGS | BIAS_FLAGS
               | CLOCK_FLAGS)


class GpiochipInfo(ctypes.Structure):
    """struct gpiochip_info."""

    _fields_ = [("name", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("label", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("lines", ctypes.c_uint32)]


class LineValues(ctypes.Structure):
    """struct gpio_v2_line_values."""

    _fields_ = [("bits", ctypes.c_uint64), ("mask", ctypes.c_uint64)]


class _AttrData(ctypes.Union):
    _fields_ = [("flags", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("debounce_period_us", ctypes.c_uint32)]


class LineAttribute(ctypes.Structure):
    """struct gpio_v2_line_attribute."""

    _anonymous_ = ("u",)
    _fields_ = [("id", ctypes.c_uint32), ("padding", ctypes.c_uint32), ("u", _AttrData)]


class LineConfigAttribute(ctypes.Structure):
    """struct gpio_v2_line_config_attribute."""

    _fields_ = [("attr", LineAttribute), ("mask", ctypes.c_uint64)]


class LineConfig(ctypes.Structure):
    """struct gpio_v2_line_config."""

    _fields_ = [("flags", ctypes.c_uint64), ("num_attrs", ctypes.c_uint32),
                ("padding", ctypes.c_uint32 * 5),
                ("attrs", LineConfigAttribute * GPIO_V2_LINE_NUM_ATTRS_MAX)]


class LineRequest(ctypes.Structure):
    """struct gpio_v2_line_request."""

    _fields_ = [("offsets", ctypes.c_uint32 * GPIO_V2_LINES_MAX),
                ("consumer", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("config", LineConfig),
                ("num_lines", ctypes.c_uint32),
                ("event_buffer_size", ctypes.c_uint32),
                ("padding", ctypes.c_uint32 * 5),
                ("fd", ctypes.c_int32)]


class LineInfo(ctypes.Structure):
    """struct gpio_v2_line_info."""

    _fields_ = [("name", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("consumer", ctypes.c_char * GPIO_MAX_NAME_SIZE),
                ("offset", ctypes.c_uint32), ("num_attrs", ctypes.c_uint32),
                ("flags", ctypes.c_uint64),
                ("attrs", LineAttribute * GPIO_V2_LINE_NUM_ATTRS_MAX),
                ("padding", ctypes.c_uint32 * 4)]


class LineEvent(ctypes.Structure):
    """struct gpio_v2_line_event (48 bytes)."""

    _fields_ = [("timestamp_ns", ctypes.c_uint64), ("id", ctypes.c_uint32),
                ("offset", ctypes.c_uint32), ("seqno", ctypes.c_uint32),
                ("line_seqno", ctypes.c_uint32), ("padding", ctypes.c_uint32 * 6)]


def validate_flags(flags: int) -> None:
    """gpio_v2_line_flags_validate() of gpiolib-cdev.c: EINVAL for what the kernel refuses."""
    f = LineFlag(flags & ((1 << 13) - 1)) if flags >= 0 else LineFlag(0)
    if flags < 0 or flags & ~int(VALID_FLAGS):
        _einval(f"unknown line flags 0x{flags:x}")
    if f & CLOCK_FLAGS == CLOCK_FLAGS:
        _einval("two event clocks requested")
    if f & DIRECTION_FLAGS == DIRECTION_FLAGS:
        _einval("a line cannot be both input and output")
    if f & EDGE_FLAGS and not f & LineFlag.INPUT:
        _einval("edge detection needs an input line")
    if f & DRIVE_FLAGS and not f & LineFlag.OUTPUT:
        _einval("open drain/source needs an output line")
    if f & DRIVE_FLAGS == DRIVE_FLAGS:
        _einval("open drain and open source together")
    if f & BIAS_FLAGS and not f & DIRECTION_FLAGS:
        _einval("bias needs a direction")
    if bin(int(f & BIAS_FLAGS)).count("1") > 1:
        _einval("more than one bias")


def _einval(why: str) -> None:
    raise OSError(errno.EINVAL, f"Invalid argument ({why})")


# The wire form of a line config: {"flags": int, "attrs": [[attr_id, value, mask], ...]}.
Attr = tuple[int, int, int]


def parse_config(raw: object, num_lines: int) -> tuple[int, list[Attr]]:
    """Check a wire line config's types and sizes (never trusting the peer)."""
    if not isinstance(raw, dict):
        raise TypeError("a line config is a map {flags, attrs}")
    flags = raw.get("flags", 0)
    attrs_raw = raw.get("attrs", [])
    if type(flags) is not int or not 0 <= flags < 1 << 64:
        raise ValueError(f"line flags must be a 64-bit unsigned integer, not {flags!r}")
    if not isinstance(attrs_raw, list) or len(attrs_raw) > GPIO_V2_LINE_NUM_ATTRS_MAX:
        raise ValueError(f"attrs must be a list of at most {GPIO_V2_LINE_NUM_ATTRS_MAX}")
    attrs: list[Attr] = []
    for a in attrs_raw:
        if (not isinstance(a, list) or len(a) != 3
                or not all(type(x) is int and 0 <= x < 1 << 64 for x in a)):
            raise ValueError(f"an attribute is [id, value, mask] of unsigned ints, not {a!r}")
        if a[0] not in (1, 2, 3):
            raise ValueError(f"unknown attribute id {a[0]}")
        attrs.append((a[0], a[1], a[2]))
    return flags, attrs


def line_flags(flags: int, attrs: Sequence[Attr], index: int) -> int:
    """The flags of line ``index`` of a request: the first FLAGS attribute covering it wins."""
    for aid, value, mask in attrs:
        if aid == AttrId.FLAGS and mask >> index & 1:
            return value
    return flags


def line_attr(attrs: Sequence[Attr], aid: int, index: int) -> int | None:
    """The value of attribute ``aid`` for line ``index`` (a bitmap bit for OUTPUT_VALUES)."""
    for a, value, mask in attrs:
        if a == aid and mask >> index & 1:
            return (value >> index & 1) if aid == AttrId.OUTPUT_VALUES else value
    return None


def config_struct(flags: int, attrs: Sequence[Attr]) -> LineConfig:
    """The kernel struct for a wire config."""
    c = LineConfig()
    c.flags = flags
    c.num_attrs = len(attrs)
    for i, (aid, value, mask) in enumerate(attrs):
        c.attrs[i].attr.id = aid
        if aid == AttrId.DEBOUNCE:
            c.attrs[i].attr.debounce_period_us = value
        else:
            c.attrs[i].attr.values = value
        c.attrs[i].mask = mask
    return c
