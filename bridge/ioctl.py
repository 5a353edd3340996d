# Linux ioctl request encoding and the built-in table of ioctls a manifest may name.
#
# Owns: the _IOC macros of include/uapi/asm-generic/ioctl.h, the IoctlSpec description sent
# to clients, and the validation of manifest ioctl entries. Values are the x86_64 /
# asm-generic ones. This module must not import socket or threading, nor anything
# platform-specific (no fcntl, termios): the client imports it on Windows too.
from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

# include/uapi/asm-generic/ioctl.h
_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_DIRBITS = 2

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

MAX_SIZE = (1 << _IOC_SIZEBITS) - 1
"""Largest argument size the 14-bit size field can encode (16383 bytes)."""
MAX_REQUEST = 0xFFFFFFFF


def _field(value: int, bits: int, what: str) -> int:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"ioctl {what} {value} does not fit in {bits} bits")
    return value


def _IOC(dir: int, type: str | int, nr: int, size: int) -> int:
    """Encode an ioctl request like the kernel's _IOC(dir, type, nr, size)."""
    t = ord(type) if isinstance(type, str) else type
    return (
        (_field(dir, _IOC_DIRBITS, "direction") << _IOC_DIRSHIFT)
        | (_field(t, _IOC_TYPEBITS, "type") << _IOC_TYPESHIFT)
        | (_field(nr, _IOC_NRBITS, "number") << _IOC_NRSHIFT)
        | (_field(size, _IOC_SIZEBITS, "size") << _IOC_SIZESHIFT)
    )


def _IO(type: str | int, nr: int) -> int:
    """An ioctl with no argument buffer."""
    return _IOC(_IOC_NONE, type, nr, 0)


def _IOR(type: str | int, nr: int, size: int) -> int:
    """An ioctl whose buffer of `size` bytes the kernel fills (kernel to user)."""
    return _IOC(_IOC_READ, type, nr, size)


def _IOW(type: str | int, nr: int, size: int) -> int:
    """An ioctl whose buffer of `size` bytes the kernel reads (user to kernel)."""
    return _IOC(_IOC_WRITE, type, nr, size)


def _IOWR(type: str | int, nr: int, size: int) -> int:
    """An ioctl whose buffer of `size` bytes goes both ways."""
    return _IOC(_IOC_READ | _IOC_WRITE, type, nr, size)


def ioc_dir(code: int) -> int:
    """The direction bits of an encoded request (_IOC_NONE/_IOC_WRITE/_IOC_READ)."""
    return (code >> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1)


def ioc_type(code: int) -> int:
    """The type (magic) byte of an encoded request."""
    return (code >> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1)


def ioc_nr(code: int) -> int:
    """The command number of an encoded request."""
    return (code >> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1)


def ioc_size(code: int) -> int:
    """The argument size in bytes of an encoded request."""
    return (code >> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1)


class Direction(enum.Enum):
    """Which way an ioctl's argument buffer travels."""

    NONE = "none"  # no argument, or an int passed by value
    IN = "in"  # client to kernel buffer, like _IOW
    OUT = "out"  # kernel to client buffer, like _IOR
    INOUT = "inout"  # both ways, like _IOWR


@dataclass(frozen=True, slots=True)
class IoctlSpec:
    """One ioctl a device allows: its code and the shape of its argument."""

    name: str
    request: int
    size: int
    direction: Direction
    by_value: bool = False

    def to_wire(self) -> dict[str, object]:
        """The plain-dict form used to describe a device's ioctls to clients."""
        return {
            "name": self.name,
            "request": self.request,
            "size": self.size,
            "direction": self.direction.value,
            "by_value": self.by_value,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, object]) -> IoctlSpec:
        """Parse and validate the form made by `to_wire`; ValueError when malformed."""
        return _from_table(d)


def _spec(name: str, request: int, size: int, direction: Direction) -> IoctlSpec:
    return IoctlSpec(name, request, size, direction)


def _by_value(name: str, request: int) -> IoctlSpec:
    return IoctlSpec(name, request, 0, Direction.NONE, by_value=True)


def _none(name: str, request: int) -> IoctlSpec:
    return IoctlSpec(name, request, 0, Direction.NONE)


_IN, _OUT, _INOUT = Direction.IN, Direction.OUT, Direction.INOUT

SPI_TRANSFER_SIZE = 32
"""sizeof(struct spi_ioc_transfer), linux/spi/spidev.h."""


def SPI_IOC_MESSAGE(n: int) -> int:
    """The request code for a SPI_IOC_MESSAGE carrying `n` spi_ioc_transfer structs."""
    return _IOW("k", 0, SPI_TRANSFER_SIZE * n)


_SPI_MESSAGE_NAME = re.compile(r"SPI_IOC_MESSAGE\((\d+)\)")
SPI_MAX_MESSAGES = MAX_SIZE // SPI_TRANSFER_SIZE


def _spi_message_spec(n: int) -> IoctlSpec:
    size = SPI_TRANSFER_SIZE * n
    return IoctlSpec(f"SPI_IOC_MESSAGE({n})", SPI_IOC_MESSAGE(n), size, Direction.IN)


# Sizes are the kernel's structs, not libc's: kernel struct termios is 36 bytes (glibc: 60).
_TABLE: tuple[IoctlSpec, ...] = (
    # asm-generic/ioctls.h, asm-generic/termbits.h
    _spec("TCGETS", 0x5401, 36, _OUT),
    _spec("TCSETS", 0x5402, 36, _IN),
    _spec("TCSETSW", 0x5403, 36, _IN),
    _spec("TCSETSF", 0x5404, 36, _IN),
    _by_value("TCSBRK", 0x5409),
    _by_value("TCXONC", 0x540A),
    _by_value("TCFLSH", 0x540B),
    _none("TIOCEXCL", 0x540C),
    _none("TIOCNXCL", 0x540D),
    _by_value("TIOCSCTTY", 0x540E),
    _spec("TIOCGPGRP", 0x540F, 4, _OUT),
    _spec("TIOCOUTQ", 0x5411, 4, _OUT),
    _spec("TIOCGWINSZ", 0x5413, 8, _OUT),  # struct winsize: 4 x u16
    _spec("TIOCSWINSZ", 0x5414, 8, _IN),
    _spec("TIOCMGET", 0x5415, 4, _OUT),
    _spec("TIOCMBIS", 0x5416, 4, _IN),
    _spec("TIOCMBIC", 0x5417, 4, _IN),
    _spec("TIOCMSET", 0x5418, 4, _IN),
    _spec("FIONREAD", 0x541B, 4, _OUT),
    _spec("TIOCINQ", 0x541B, 4, _OUT),
    _spec("TIOCGSERIAL", 0x541E, 72, _OUT),  # struct serial_struct on 64-bit
    _spec("FIONBIO", 0x5421, 4, _IN),
    _none("TIOCSBRK", 0x5427),
    _none("TIOCCBRK", 0x5428),
    _spec("TCGETS2", _IOR("T", 0x2A, 44), 44, _OUT),  # struct termios2
    _spec("TCSETS2", _IOW("T", 0x2B, 44), 44, _IN),
    _spec("TIOCGPTN", _IOR("T", 0x30, 4), 4, _OUT),
    _spec("TIOCSPTLCK", _IOW("T", 0x31, 4), 4, _IN),
    _none("FIONCLEX", 0x5450),
    _none("FIOCLEX", 0x5451),
    # linux/random.h, linux/fs.h
    _spec("RNDGETENTCNT", _IOR("R", 0x00, 4), 4, _OUT),
    _spec("RNDADDTOENTCNT", _IOW("R", 0x01, 4), 4, _IN),
    _spec("BLKGETSIZE64", _IOR(0x12, 114, 8), 8, _OUT),
    # linux/i2c-dev.h
    _by_value("I2C_SLAVE", 0x0703),
    _spec("I2C_FUNCS", 0x0705, 8, _OUT),  # unsigned long
    _by_value("I2C_SLAVE_FORCE", 0x0706),
    _spec("I2C_RDWR", 0x0707, 16, _INOUT),  # struct i2c_rdwr_ioctl_data: pointer + u32
    # linux/spi/spidev.h
    _spec("SPI_IOC_RD_MODE", _IOR("k", 1, 1), 1, _OUT),
    _spec("SPI_IOC_WR_MODE", _IOW("k", 1, 1), 1, _IN),
    _spec("SPI_IOC_RD_LSB_FIRST", _IOR("k", 2, 1), 1, _OUT),
    _spec("SPI_IOC_WR_LSB_FIRST", _IOW("k", 2, 1), 1, _IN),
    _spec("SPI_IOC_RD_BITS_PER_WORD", _IOR("k", 3, 1), 1, _OUT),
    _spec("SPI_IOC_WR_BITS_PER_WORD", _IOW("k", 3, 1), 1, _IN),
    _spec("SPI_IOC_RD_MAX_SPEED_HZ", _IOR("k", 4, 4), 4, _OUT),
    _spec("SPI_IOC_WR_MAX_SPEED_HZ", _IOW("k", 4, 4), 4, _IN),
    _spec("SPI_IOC_RD_MODE32", _IOR("k", 5, 4), 4, _OUT),
    _spec("SPI_IOC_WR_MODE32", _IOW("k", 5, 4), 4, _IN),
    # linux/gpio.h (character device v2 ABI)
    _spec("GPIO_GET_CHIPINFO_IOCTL", _IOR(0xB4, 0x01, 68), 68, _OUT),
    _spec("GPIO_V2_GET_LINEINFO_IOCTL", _IOWR(0xB4, 0x05, 256), 256, _INOUT),
    _spec("GPIO_V2_GET_LINE_IOCTL", _IOWR(0xB4, 0x07, 592), 592, _INOUT),
    _spec("GPIO_V2_LINE_SET_CONFIG_IOCTL", _IOWR(0xB4, 0x0D, 272), 272, _INOUT),
    _spec("GPIO_V2_LINE_GET_VALUES_IOCTL", _IOWR(0xB4, 0x0E, 16), 16, _INOUT),
    _spec("GPIO_V2_LINE_SET_VALUES_IOCTL", _IOWR(0xB4, 0x0F, 16), 16, _INOUT),
)

BUILTIN: dict[str, IoctlSpec] = {spec.name: spec for spec in _TABLE}
"""Every ioctl a manifest may name without spelling out its code."""

NO_WAIT: frozenset[tuple[str, int]] = frozenset(
    (name, BUILTIN[name].request) for name in (
        "TCGETS", "TCGETS2", "TIOCGWINSZ", "TIOCSWINSZ", "FIONREAD", "TIOCINQ", "TIOCOUTQ",
        "TCFLSH", "TIOCEXCL", "TIOCNXCL", "TIOCGPGRP", "TIOCGPTN", "RNDGETENTCNT",
        "BLKGETSIZE64", "I2C_FUNCS", "SPI_IOC_RD_MODE", "SPI_IOC_RD_LSB_FIRST",
        "SPI_IOC_RD_BITS_PER_WORD", "SPI_IOC_RD_MAX_SPEED_HZ", "SPI_IOC_RD_MODE32",
        "GPIO_GET_CHIPINFO_IOCTL"))
"""Built-in codes the kernel answers from memory, never sleeping in a driver: the host may
run them on its event loop. Left out on purpose: TCSETS* and TIOCM* (a USB serial adapter
does a USB transfer for them), TCSETSW/TCSETSF/TCSBRK (wait for output to drain), bus
transfers and everything a manifest declares itself."""

_KEYS = frozenset({"name", "request", "size", "direction", "by_value"})


def _label(entry: Mapping[str, object]) -> str:
    name = entry.get("name")
    return f"ioctl entry {name!r}" if isinstance(name, str) else f"ioctl entry {dict(entry)!r}"


def _int_field(entry: Mapping[str, object], key: str, label: str) -> int:
    if key not in entry:
        raise ValueError(f"{label}: missing {key!r}")
    value = entry[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{label}: {key!r} must be an integer, not {value!r}")
    return value


def _from_table(entry: Mapping[str, object]) -> IoctlSpec:
    label = _label(entry)
    unknown = sorted(str(k) for k in entry if k not in _KEYS)
    if unknown:
        raise ValueError(f"{label}: unknown keys {unknown}; allowed: {sorted(_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{label}: 'name' must be a non-empty string")
    request = _int_field(entry, "request", label)
    if not 0 <= request <= MAX_REQUEST:
        raise ValueError(f"{label}: request {request:#x} outside 0..0xFFFFFFFF")
    size = _int_field(entry, "size", label)
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"{label}: size {size} outside 0..{MAX_SIZE}")
    raw_dir = entry.get("direction")
    choices = [d.value for d in Direction]
    if raw_dir not in choices:
        raise ValueError(f"{label}: direction {raw_dir!r} is not one of {choices}")
    direction = Direction(raw_dir)
    by_value = entry.get("by_value", False)
    if not isinstance(by_value, bool):
        raise ValueError(f"{label}: 'by_value' must be true or false, not {by_value!r}")
    if by_value and (size != 0 or direction is not Direction.NONE):
        raise ValueError(f"{label}: a by-value argument needs size 0 and direction 'none'")
    if direction is Direction.NONE and size != 0:
        raise ValueError(f"{label}: direction 'none' with size {size}; use 'in'/'out'/'inout'")
    if direction is not Direction.NONE and size == 0:
        raise ValueError(
            f"{label}: direction {direction.value!r} needs a size > 0 "
            "(or direction 'none' with by_value = true for an int argument)"
        )
    return IoctlSpec(name, request, size, direction, by_value)


def _from_name(name: str) -> IoctlSpec:
    spec = BUILTIN.get(name)
    if spec is not None:
        return spec
    match = _SPI_MESSAGE_NAME.fullmatch(name)
    if match:
        n = int(match.group(1))
        if not 1 <= n <= SPI_MAX_MESSAGES:
            raise ValueError(f"ioctl entry {name!r}: transfer count outside 1..{SPI_MAX_MESSAGES}")
        return _spi_message_spec(n)
    close = difflib.get_close_matches(name, BUILTIN, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"ioctl entry {name!r}: not a built-in ioctl name{hint} "
        "(give an inline table {name, request, size, direction} for others)"
    )


def resolve(entry: str | Mapping[str, object]) -> IoctlSpec:
    """Turn a manifest ioctl entry into an IoctlSpec, or raise ValueError naming the entry.

    An entry is a built-in name (a key of BUILTIN, or "SPI_IOC_MESSAGE(n)"), or an inline
    table {name, request, size, direction, by_value (optional)}.
    """
    if isinstance(entry, str):
        return _from_name(entry)
    if isinstance(entry, Mapping):
        return _from_table(entry)
    raise ValueError(f"ioctl entry {entry!r}: expected a name or a table")


# include/uapi/linux/i2c.h: struct i2c_msg flags (shared by the I2C driver, host and sim)
I2C_M_RD = 0x0001
I2C_M_TEN = 0x0010
I2C_M_DMA_SAFE = 0x0200
I2C_M_RECV_LEN = 0x0400
I2C_M_NO_RD_ACK = 0x0800
I2C_M_IGNORE_NAK = 0x1000
I2C_M_REV_DIR_ADDR = 0x2000
I2C_M_NOSTART = 0x4000
I2C_M_STOP = 0x8000
I2C_M_ALL = (I2C_M_RD | I2C_M_TEN | I2C_M_DMA_SAFE | I2C_M_RECV_LEN | I2C_M_NO_RD_ACK
             | I2C_M_IGNORE_NAK | I2C_M_REV_DIR_ADDR | I2C_M_NOSTART | I2C_M_STOP)

# drivers/i2c/i2c-dev.c
I2C_RDWR_IOCTL_MAX_MSGS = 42
I2C_MSG_MAX_LEN = 8192
