# Host-side handles for I2C and SPI buses, shared by the posix and sim backends.
#
# Owns: the remote operations of kinds "i2c" and "spi" (@op methods), the validation of
# their arguments against the kernel's limits (i2c-dev's I2C_RDWR, spidev's
# SPI_IOC_MESSAGE), and the wire shape of messages and transfers. A backend subclass
# implements only the primitives (do_transfer, do_message, read/write settings), so posix
# and sim fail alike, errno for errno. Must not know about sockets, ctypes or models.
from __future__ import annotations

import abc
import errno
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .backend import Access, DeviceHandle, op
from .ioctl import (
    I2C_M_ALL,
    I2C_M_RD,
    I2C_M_TEN,
    I2C_MSG_MAX_LEN,
    I2C_RDWR_IOCTL_MAX_MSGS,
)
from .manifest import DeviceSpec

# include/uapi/linux/i2c.h: functionality bits returned by I2C_FUNCS
I2C_FUNC_I2C = 0x00000001
I2C_FUNC_10BIT_ADDR = 0x00000002
I2C_FUNC_PROTOCOL_MANGLING = 0x00000004
I2C_FUNC_NOSTART = 0x00000010

# include/uapi/linux/spi/spi.h: mode bits
SPI_CPHA = 0x01
SPI_CPOL = 0x02
SPI_LSB_FIRST = 0x08

SPI_DEFAULT_BUFSIZ = 4096
"""spidev's `bufsiz` module parameter: most bytes one SPI_IOC_MESSAGE may move."""
SPI_MAX_TRANSFERS = 511
"""Most spi_ioc_transfer structs whose size fits the ioctl's 14-bit size field."""


@dataclass(frozen=True, slots=True)
class I2CMsg:
    """One struct i2c_msg, validated: ``data`` for a write, ``length`` bytes for a read."""

    addr: int
    flags: int
    data: bytes
    length: int

    @property
    def read(self) -> bool:
        return bool(self.flags & I2C_M_RD)


@dataclass(frozen=True, slots=True)
class SPIXfer:
    """One struct spi_ioc_transfer, validated (tx is None: clock out zeros)."""

    tx: bytes | None
    length: int
    speed_hz: int = 0
    delay_usecs: int = 0
    bits_per_word: int = 0
    cs_change: bool = False
    tx_nbits: int = 0
    rx_nbits: int = 0
    word_delay_usecs: int = 0


def _uint(v: object, bits: int, what: str) -> int:
    if type(v) is not int or not 0 <= v < (1 << bits):
        raise ValueError(f"{what} must be an integer 0..{(1 << bits) - 1}, not {v!r}")
    return v


def _einval(message: str) -> OSError:
    return OSError(errno.EINVAL, message)


def _payload(data: object, what: str) -> bytes:
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    raise TypeError(f"{what} must be bytes, not {type(data).__name__}")


def parse_i2c_messages(address: object, messages: object) -> list[I2CMsg]:
    """Check an I2C_RDWR request the way i2c-dev does: EINVAL for what it would refuse.

    ``messages`` is the wire form: a list of ``[flags, data]`` (write: bytes) or
    ``[flags, length]`` (read, I2C_M_RD set in flags).
    """
    if not isinstance(messages, (list, tuple)):  # noqa: UP038 - tuple is faster here
        raise TypeError(f"messages must be a list, not {type(messages).__name__}")
    if not 1 <= len(messages) <= I2C_RDWR_IOCTL_MAX_MSGS:
        raise _einval(f"an I2C transfer takes 1..{I2C_RDWR_IOCTL_MAX_MSGS} messages, "
                      f"not {len(messages)}")
    if type(address) is not int or not 0 <= address <= 0x3FF:
        raise _einval(f"address must be an integer 0..0x3ff, not {address!r}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, (list, tuple)) or len(m) != 2:  # noqa: UP038
            raise TypeError(f"message {i} must be [flags, data or length]")
        flags, payload = m
        if type(flags) is not int or flags & ~I2C_M_ALL or flags < 0:
            raise _einval(f"message {i}: flags must be I2C_M_* bits, not {flags!r}")
        if address > 0x7F and not flags & I2C_M_TEN:
            raise _einval(f"address 0x{address:x} is beyond 0x7f (no I2C_M_TEN)")
        if flags & I2C_M_RD:
            if type(payload) is not int or payload < 0:
                raise TypeError(f"message {i} is a read and needs a length, not {payload!r}")
            n, data = payload, b""
        else:
            if not isinstance(payload, (bytes, bytearray)):  # noqa: UP038
                raise TypeError(f"message {i} is a write and needs bytes, not "
                                f"{type(payload).__name__}")
            data = bytes(payload)
            n = len(data)
        if n > I2C_MSG_MAX_LEN:
            raise _einval(f"message {i}: {n} bytes, i2c-dev allows {I2C_MSG_MAX_LEN}")
        out.append(I2CMsg(address, flags, data, n))
    return out


class I2CHandle(DeviceHandle):
    """An I2C adapter (/dev/i2c-N): combined transfers, one I2C_RDWR each.

    Rights: a transfer with a write message needs write access; reads, and register reads
    (whose pointer write selects what to read), need read access.
    """

    kind: ClassVar[str] = "i2c"

    def __init__(self, spec: DeviceSpec, access: Access) -> None:
        super().__init__(spec)
        self.access = access

    @abc.abstractmethod
    def do_transfer(self, msgs: Sequence[I2CMsg]) -> list[bytes]:
        """Run validated messages as one combined transfer; the data of each read."""

    @abc.abstractmethod
    def do_funcs(self) -> int:
        """The adapter's I2C_FUNC_* bits."""

    def do_write_read(self, address: int, data: bytes, n: int) -> bytes:
        """Write ``data`` to 7-bit ``address``, repeated start, read ``n`` bytes: one combined
        transfer of two messages, already validated. A backend may run it without building
        the messages (the sim does); by default it is do_transfer's."""
        return self.do_transfer((I2CMsg(address, 0, data, len(data)),
                                 I2CMsg(address, I2C_M_RD, b"", n)))[0]

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "handle is closed")

    def _run(self, msgs: list[I2CMsg]) -> list[bytes]:
        self._check_open()
        if any(not m.flags & I2C_M_RD for m in msgs) and not self.access & Access.WRITE:
            raise PermissionError(errno.EACCES, "a write message needs write access")
        return self.do_transfer(msgs)

    @op("transfer", Access.READ)
    def transfer(self, address: int, messages: list[Any]) -> list[bytes]:
        """I2C_RDWR: messages as ``[flags, bytes]`` or ``[flags | I2C_M_RD, length]``."""
        return self._run(parse_i2c_messages(address, messages))

    # read_register and write_register are transfers of a fixed shape (flags 0, a 7-bit
    # address), so their arguments are checked here directly, as parse_i2c_messages would
    # check that shape, without building its wire form first.

    @op("read_register", Access.READ)
    def read_register(self, address: int, register: bytes, n: int) -> bytes:
        """Write the register pointer ``register``, repeated start, read ``n`` bytes."""
        if type(address) is not int or not 0 <= address <= 0x7F:
            raise _einval(f"address must be an integer 0..0x7f, not {address!r}")
        if type(register) is not bytes:
            register = _payload(register, "register")
        if len(register) > I2C_MSG_MAX_LEN:
            raise _einval(f"a {len(register)}-byte register, i2c-dev allows {I2C_MSG_MAX_LEN}")
        if type(n) is not int or not 0 <= n <= I2C_MSG_MAX_LEN:
            raise _einval(f"a read takes 0..{I2C_MSG_MAX_LEN} bytes, not {n!r}")
        if self.closed:
            raise OSError(errno.EBADF, "handle is closed")
        return self.do_write_read(address, register, n)

    @op("write_register", Access.WRITE)
    def write_register(self, address: int, register: bytes, data: bytes) -> None:
        """Write the register pointer then ``data`` in one message."""
        if type(address) is not int or not 0 <= address <= 0x7F:
            raise _einval(f"address must be an integer 0..0x7f, not {address!r}")
        payload = _payload(register, "register") + _payload(data, "data")
        if len(payload) > I2C_MSG_MAX_LEN:
            raise _einval(f"a {len(payload)}-byte message, i2c-dev allows {I2C_MSG_MAX_LEN}")
        self._check_open()
        self.do_transfer((I2CMsg(address, 0, payload, len(payload)),))

    @op("funcs")
    def funcs(self) -> int:
        """I2C_FUNCS: the adapter's functionality bits."""
        self._check_open()
        return self.do_funcs()


# The integer fields of a transfer's wire form after tx: (name, bits).
_SPI_FIELDS = (("length", 32), ("speed_hz", 32), ("delay_usecs", 16), ("bits_per_word", 8),
               ("cs_change", 8), ("tx_nbits", 8), ("rx_nbits", 8), ("word_delay_usecs", 8))
_SPI_ZEROS = (0,) * len(_SPI_FIELDS)


def parse_spi_transfers(transfers: object, bufsiz: int) -> list[SPIXfer]:
    """Check a SPI_IOC_MESSAGE(n) the way spidev does (EMSGSIZE beyond ``bufsiz`` bytes).

    Wire form of each transfer: ``[tx bytes or None, length, speed_hz, delay_usecs,
    bits_per_word, cs_change, tx_nbits, rx_nbits, word_delay_usecs]``; trailing fields may
    be left out (0).
    """
    if not isinstance(transfers, list | tuple):
        raise TypeError(f"transfers must be a list, not {type(transfers).__name__}")
    if not 1 <= len(transfers) <= SPI_MAX_TRANSFERS:
        raise _einval(f"a SPI message takes 1..{SPI_MAX_TRANSFERS} transfers")
    out, total = [], 0
    for i, t in enumerate(transfers):
        if not isinstance(t, list | tuple) or not 2 <= len(t) <= 9:
            raise TypeError(f"transfer {i} must be [tx, length, ...] with 2..9 fields")
        tx, fields = t[0], (*t[1:], *_SPI_ZEROS[len(t) - 1:])
        if tx is not None and not isinstance(tx, bytes | bytearray):
            raise TypeError(f"transfer {i}: tx must be bytes or None")
        for v, (name, bits) in zip(fields, _SPI_FIELDS, strict=True):
            if type(v) is not int or not 0 <= v < (1 << bits):
                raise ValueError(f"transfer {i}: {name} must be an integer "
                                 f"0..{(1 << bits) - 1}, not {v!r}")
        length = fields[0]
        if tx is not None and len(tx) != length:
            raise ValueError(f"transfer {i}: {len(tx)} tx bytes for length {length}")
        total += length
        out.append(SPIXfer(None if tx is None else bytes(tx), length, fields[1], fields[2],
                           fields[3], bool(fields[4]), fields[5], fields[6], fields[7]))
    if total > bufsiz:
        raise _emsgsize(total, bufsiz)
    return out


def _emsgsize(total: int, bufsiz: int) -> OSError:
    return OSError(errno.EMSGSIZE, f"{total} bytes in one SPI message; spidev's bufsiz "
                                   f"is {bufsiz}")


SPI_SETTINGS = ("mode", "max_speed", "bits_per_word", "lsb_first")


class SPIHandle(DeviceHandle):
    """A SPI device (/dev/spidevB.C): full-duplex messages and the device's settings."""

    kind: ClassVar[str] = "spi"
    bufsiz: int = SPI_DEFAULT_BUFSIZ

    def __init__(self, spec: DeviceSpec, access: Access) -> None:
        super().__init__(spec)
        self.access = access
        self.bufsiz = int(spec.options.get("bufsiz", SPI_DEFAULT_BUFSIZ))

    @abc.abstractmethod
    def do_message(self, xfers: Sequence[SPIXfer]) -> list[bytes]:
        """Run one SPI_IOC_MESSAGE; the received bytes of each transfer."""

    def do_exchange(self, tx: bytes) -> bytes:
        """One message of one plain transfer (``tx`` out, as many bytes in; every setting
        the device's own), already validated. A backend may run it without building the
        transfer (the sim does); by default it is do_message's."""
        return self.do_message((SPIXfer(tx, len(tx)),))[0]

    @abc.abstractmethod
    def read_settings(self) -> dict[str, int | bool]:
        """mode (the whole u8 of SPI_IOC_RD_MODE), max_speed (Hz), bits_per_word, lsb_first."""

    @abc.abstractmethod
    def write_setting(self, name: str, value: int) -> None:
        """Set one validated setting (a SPI_IOC_WR_* ioctl)."""

    def _check_open(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "handle is closed")

    @op("transfer", Access.RW)
    def transfer(self, transfers: list[Any]) -> list[bytes]:
        """SPI_IOC_MESSAGE(n): chip select framed transfers; rx bytes of each."""
        # The commonest message, one transfer [tx, length] (SPI.transfer's), is checked
        # here exactly as parse_spi_transfers would check it, without building an SPIXfer.
        if type(transfers) is list and len(transfers) == 1:
            t = transfers[0]
            if type(t) is list and len(t) == 2:
                tx, length = t
                if type(tx) is bytes and type(length) is int and length == len(tx):
                    if length > self.bufsiz:
                        raise _emsgsize(length, self.bufsiz)
                    if self.closed:
                        raise OSError(errno.EBADF, "handle is closed")
                    return [self.do_exchange(tx)]
        xfers = parse_spi_transfers(transfers, self.bufsiz)
        self._check_open()
        return self.do_message(xfers)

    @op("settings", Access.READ)
    def settings(self) -> dict[str, int | bool]:
        """The device's mode, max_speed, bits_per_word and lsb_first."""
        self._check_open()
        return self.read_settings()

    @op("configure", Access.WRITE)
    def configure(self, changes: dict[str, Any]) -> dict[str, int | bool]:
        """Set some of mode (0..3), max_speed, bits_per_word, lsb_first; returns all four."""
        if not isinstance(changes, dict):
            raise TypeError("configure takes a table of settings")
        checked: list[tuple[str, int]] = []
        for name, value in changes.items():
            if name == "mode":
                clock = _uint(value, 2, "mode")  # CPOL|CPHA; other mode bits are kept
                raw = int(self.read_settings()["mode"]) if not self.closed else 0
                checked.append((name, (raw & ~(SPI_CPOL | SPI_CPHA)) | clock))
            elif name == "max_speed":
                speed = _uint(value, 32, "max_speed")
                if speed == 0:
                    raise ValueError("max_speed must be above 0 Hz")
                checked.append((name, speed))
            elif name == "bits_per_word":
                checked.append((name, _uint(value, 8, "bits_per_word")))
            elif name == "lsb_first":
                if not isinstance(value, bool):
                    raise TypeError("lsb_first must be true or false")
                checked.append((name, int(value)))
            else:
                raise ValueError(f"unknown SPI setting {name!r} (known: {SPI_SETTINGS})")
        self._check_open()
        for name, v in checked:
            self.write_setting(name, v)
        return self.read_settings()
