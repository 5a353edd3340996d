# The proxy for SPI devices (kind "spi"), shaped like python-periphery's SPI and mirroring
# spidev: transfer() is one SPI_IOC_MESSAGE(1), transfer_message() several transfers under
# one chip select, and mode / max_speed / bits_per_word / lsb_first are the SPI_IOC_RD/WR_*
# settings. Client side, pure Python, importable on Windows: each call is at most one
# remote operation; settings read once are cached. Must not know about sockets or ctypes.
from __future__ import annotations

import errno
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .base import Proxy, errno_subclass
from .base import as_bytes as _as_bytes

if TYPE_CHECKING:
    from bridge.client import Client

SPI_CPHA = 0x01
SPI_CPOL = 0x02
SPI_LSB_FIRST = 0x08


class SPIError(OSError):
    """A SPI operation failed on the host; ``errno`` is the host's.

    The raised object is also an instance of the OSError subclass Python picks for that
    errno (PermissionError, TimeoutError, ...), so either kind of ``except`` catches it.
    """


_ERRORS: dict[type[OSError], type[OSError]] = {}


def _wrap(e: OSError, what: str) -> SPIError:
    err = errno_subclass(SPIError, e, f"{what}: {e.strerror or e}", _ERRORS)
    assert isinstance(err, SPIError)
    return err


_first = operator.itemgetter(0)
"""The rx bytes of a one-transfer message's result (a C callable: no Python frame)."""


def _transfer_what() -> str:
    return "SPI transfer"


def _like(template: object, got: bytes) -> Any:
    if isinstance(template, bytearray):
        return bytearray(got)
    if isinstance(template, list | tuple):
        return list(got)
    return got


class SPI(Proxy):
    """A SPI device on a remote host (``host.open("spi0")``)."""

    class Transfer:
        """One struct spi_ioc_transfer of a message.

        ``data`` is what goes out (bytes, bytearray or list of ints), or an int: that many
        zero bytes out (tx_buf NULL). Zero fields mean the device's defaults, as in spidev.
        """

        def __init__(self, data: bytes | bytearray | list[int] | int, speed_hz: int = 0,
                     delay_usecs: int = 0, bits_per_word: int = 0, cs_change: bool = False,
                     word_delay_usecs: int = 0) -> None:
            if type(data) is int:
                if data < 0:
                    raise ValueError("a transfer length must be >= 0")
                self.tx: bytes | None = None
                self.length = data
            else:
                self.tx = _as_bytes(data, "transfer data")
                self.length = len(self.tx)
            for name, v, bits in (("speed_hz", speed_hz, 32), ("delay_usecs", delay_usecs, 16),
                                  ("bits_per_word", bits_per_word, 8),
                                  ("word_delay_usecs", word_delay_usecs, 8)):
                if type(v) is not int or not 0 <= v < 1 << bits:
                    raise ValueError(f"{name} must be an integer 0..{(1 << bits) - 1}")
            self.data = data
            self.fields = [speed_hz, delay_usecs, bits_per_word, int(bool(cs_change)), 0, 0,
                           word_delay_usecs]

        def wire(self) -> list[Any]:
            return [self.tx, self.length, *self.fields]

    def __init__(self, client: Client, name: str, handle: Any,
                 description: dict[str, Any] | None = None) -> None:
        super().__init__(client, name, handle, description)
        self._settings: dict[str, Any] | None = None


    # Each method checks its arguments before any I/O (the host checks them again: it
    # trusts no client), then makes its one call; the text saying what failed is built
    # only when something did.

    def _call(self, op: str, args: list[Any], what: Callable[[], str],
              transform: Callable[[Any], Any] | None = None) -> Any:
        if self.closed:
            raise SPIError(errno.EBADF, f"{what()}: the SPI device {self.name} is closed")
        h = self._handle
        if type(h) is not int:  # a Deferred while the batch that opened it is pending
            h = self.handle
        try:
            return self.client.call(op, [h, *args], transform)
        except SPIError:
            raise
        except OSError as e:
            raise _wrap(e, what()) from e

    # -- transfers ----------------------------------------------------------------------

    def transfer(self, data: bytes | bytearray | list[int]) -> Any:
        """Shift ``data`` out and return what came in, in the same type (full duplex)."""
        # The hot path: bytes in, bytes out, the call spelled out, no helper calls.
        h = self._handle
        if type(data) is not bytes or self.closed or type(h) is not int:
            tx = _as_bytes(data, "data")
            shape = _first if type(data) is bytes else lambda rx: _like(data, rx[0])
            return self._call("transfer", [[[tx, len(tx)]]], _transfer_what, shape)
        try:
            return self.client.call("transfer", [h, [[data, len(data)]]], _first)
        except SPIError:
            raise
        except OSError as e:
            raise _wrap(e, _transfer_what()) from e

    def transfer_message(self, transfers: Sequence[Transfer]) -> Any:
        """Several transfers under one chip select (SPI_IOC_MESSAGE(n)); rx of each."""
        if not isinstance(transfers, list | tuple) or not transfers:
            raise ValueError("transfers must be a non-empty list of SPI.Transfer")
        if not all(isinstance(t, SPI.Transfer) for t in transfers):
            raise TypeError("every transfer must be an SPI.Transfer")
        ts = list(transfers)
        return self._call("transfer", [[t.wire() for t in ts]], lambda: "SPI message",
                          lambda rx: [_like(t.data, r) if t.tx is not None else r
                                      for t, r in zip(ts, rx, strict=True)])

    # -- settings -----------------------------------------------------------------------

    def _remember(self, settings: dict[str, Any]) -> dict[str, Any]:
        self._settings = settings
        return settings

    def settings(self) -> Any:
        """Read all settings from the host (one round trip) and cache them."""
        return self._call("settings", [], lambda: "SPI settings", self._remember)

    def _get(self, name: str, convert: Any = None) -> Any:
        if self._settings is None:
            return self._call("settings", [], lambda: f"SPI {name}",
                              lambda s: _pick(self._remember(s), name, convert))
        return _pick(self._settings, name, convert)

    def _set(self, name: str, value: Any) -> None:
        self._call("configure", [{name: value}], lambda: f"SPI setting {name}",
                   self._remember)

    @property
    def mode(self) -> Any:
        """SPI mode 0..3 (CPOL << 1 | CPHA)."""
        return self._get("mode", lambda m: m & (SPI_CPOL | SPI_CPHA))

    @mode.setter
    def mode(self, mode: int) -> None:
        if type(mode) is not int or not 0 <= mode <= 3:
            raise ValueError(f"mode must be 0, 1, 2 or 3, not {mode!r}")
        self._set("mode", mode)

    @property
    def max_speed(self) -> Any:
        """Maximum clock speed in Hz."""
        return self._get("max_speed")

    @max_speed.setter
    def max_speed(self, speed: int | float) -> None:
        if not isinstance(speed, int | float) or isinstance(speed, bool) or \
                not 1 <= speed < 1 << 32:
            raise ValueError(f"max_speed must be 1..4294967295 Hz, not {speed!r}")
        self._set("max_speed", int(speed))

    @property
    def bits_per_word(self) -> Any:
        """Bits per word (8 unless the device was told otherwise)."""
        return self._get("bits_per_word")

    @bits_per_word.setter
    def bits_per_word(self, bits: int) -> None:
        if type(bits) is not int or not 1 <= bits <= 32:
            raise ValueError(f"bits_per_word must be 1..32, not {bits!r}")
        self._set("bits_per_word", bits)

    @property
    def lsb_first(self) -> Any:
        """True when words go out least significant bit first."""
        return self._get("lsb_first")

    @lsb_first.setter
    def lsb_first(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"lsb_first must be True or False, not {value!r}")
        self._set("lsb_first", value)

    # -- lifetime -----------------------------------------------------------------------



def _pick(settings: dict[str, Any], name: str, convert: Any) -> Any:
    value = settings[name]
    return convert(value) if convert is not None else value
