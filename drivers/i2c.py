# The proxy for I2C adapters (kind "i2c"), shaped like python-periphery's I2C and mirroring
# the kernel's I2C_RDWR: a transfer is a list of messages to one address, run as one
# combined transaction with repeated starts. Client side, pure Python, importable on
# Windows: each method is one remote operation (or one entry of host.batch()). Must not
# know about sockets or ctypes.
from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .base import Proxy, errno_subclass
from .base import as_bytes as _as_bytes

if TYPE_CHECKING:
    from bridge.client import Client

from bridge.ioctl import (  # noqa: F401  (the kernel's flags, for users of this module)
    I2C_M_IGNORE_NAK,
    I2C_M_NO_RD_ACK,
    I2C_M_NOSTART,
    I2C_M_RD,
    I2C_M_RECV_LEN,
    I2C_M_REV_DIR_ADDR,
    I2C_M_STOP,
    I2C_M_TEN,
)
from bridge.ioctl import I2C_MSG_MAX_LEN as MAX_MESSAGE_LEN
from bridge.ioctl import I2C_RDWR_IOCTL_MAX_MSGS as MAX_MESSAGES


class I2CError(OSError):
    """An I2C operation failed on the host; ``errno`` is the host's (ENXIO: no ACK).

    The raised object is also an instance of the OSError subclass Python picks for that
    errno (PermissionError, TimeoutError, ...), so either kind of ``except`` catches it.
    """


_ERRORS: dict[type[OSError], type[OSError]] = {}


def _wrap(e: OSError, what: str) -> I2CError:
    err = errno_subclass(I2CError, e, f"{what}: {e.strerror or e}", _ERRORS)
    assert isinstance(err, I2CError)
    return err


class I2C(Proxy):
    """An I2C adapter on a remote host (``host.open("i2c1")``)."""

    class Message:
        """One struct i2c_msg: ``Message(b"\\x00")`` writes, ``Message(2, read=True)`` reads.

        Like periphery, ``data`` may also be a bytes-like or list for a read (its length is
        the count); after the transfer, a read message's ``data`` holds what was read, in
        the type it was given (bytes, bytearray or list). ``flags`` adds I2C_M_* bits.
        """

        def __init__(self, data: bytes | bytearray | list[int] | int, read: bool = False,
                     flags: int = 0) -> None:
            if type(flags) is not int or not 0 <= flags <= 0xFFFF:
                raise ValueError(f"flags must be a 16-bit integer, not {flags!r}")
            if type(data) is int:
                if not read:
                    raise ValueError("a length alone makes sense only for a read message")
                length = data
            elif type(data) is bytes:  # the common case: nothing to convert or check
                length = len(data)
            elif isinstance(data, bytes | bytearray | list):
                length = len(data)
                if not read:
                    _as_bytes(data, "message data")
            else:
                raise TypeError(f"message data must be bytes, bytearray, a list of ints or "
                                f"a length, not {type(data).__name__}")
            if not 0 <= length <= MAX_MESSAGE_LEN:
                raise ValueError(f"a message carries 0..{MAX_MESSAGE_LEN} bytes, not {length}")
            self.data: Any = data
            self.read = bool(read)
            self.flags = flags
            self.length = length

        def wire(self) -> list[Any]:
            if self.read:
                return [self.flags | I2C_M_RD, self.length]
            data = self.data  # converted now: a bytearray or list may have changed since
            return [self.flags & ~I2C_M_RD,
                    data if type(data) is bytes else _as_bytes(data, "message data")]

        def fill(self, got: bytes) -> None:
            """Store read data in the type the message was made with."""
            if isinstance(self.data, bytearray):
                self.data = bytearray(got)
            elif isinstance(self.data, list):
                self.data = list(got)
            else:
                self.data = got

        def __repr__(self) -> str:
            kind = "read" if self.read else "write"
            return f"<I2C.Message {kind} {self.length} bytes flags=0x{self.flags:04x}>"

    def __init__(self, client: Client, name: str, handle: Any,
                 description: dict[str, Any] | None = None) -> None:
        super().__init__(client, name, handle, description)

    # Each method checks its arguments before any I/O (the host checks them again: it
    # trusts no client), then makes its one call inline; the text saying what failed is
    # built only when something did.

    def _call(self, op: str, args: list[Any], what: Callable[[], str],
              transform: Callable[[Any], Any] | None = None) -> Any:
        if self.closed:
            raise I2CError(errno.EBADF, f"{what()}: the I2C device {self.name} is closed")
        h = self._handle
        if type(h) is not int:  # a Deferred while the batch that opened it is pending
            h = self.handle
        try:
            return self.client.call(op, [h, *args], transform)
        except I2CError:
            raise
        except OSError as e:
            raise _wrap(e, what()) from e

    def transfer(self, address: int, messages: Sequence[Message]) -> Any:
        """Run ``messages`` to ``address`` as one I2C_RDWR; returns each read's data.

        Read messages also get their data filled in (periphery style). Errors: I2CError
        with the host's errno (ENXIO when nobody acknowledges ``address``).
        """
        if not isinstance(messages, list | tuple) or not messages:
            raise ValueError("messages must be a non-empty list of I2C.Message")
        if len(messages) > MAX_MESSAGES:
            raise ValueError(f"one transfer takes at most {MAX_MESSAGES} messages")
        wired: list[list[Any]] = []
        reads: list[I2C.Message] = []
        flags = 0
        for m in messages:  # one pass: check, wire form, which messages read
            if not isinstance(m, I2C.Message):
                raise TypeError("every message must be an I2C.Message")
            flags |= m.flags
            if m.read:
                reads.append(m)
            wired.append(m.wire())
        _check_address(address, bool(flags & I2C_M_TEN))

        def fill(results: list[bytes]) -> list[bytes]:
            for m, got in zip(reads, results, strict=True):
                m.fill(got)
            return results

        return self._call("transfer", [address, wired],
                          lambda: f"I2C transfer to 0x{address:02x}", fill if reads else None)

    def read_register(self, address: int, register: int | bytes, n: int) -> Any:
        """Write the register number, repeated start, read ``n`` bytes: one round trip.

        ``register`` is an int 0..255 (one byte) or bytes for wider register addresses.
        """
        # A sensor poll's hot path: the checks and the call spelled out, no helper calls.
        if type(register) is int and 0 <= register <= 255:
            reg = _REGISTERS[register]
        else:
            reg = _register(register)
        if type(address) is not int or not 0 <= address <= 0x7F:
            raise ValueError(f"address must be an integer 0..0x7f, not {address!r}")
        if type(n) is not int or not 0 <= n <= MAX_MESSAGE_LEN:
            raise ValueError(f"n must be an integer 0..{MAX_MESSAGE_LEN}, not {n!r}")
        h = self._handle
        if self.closed or type(h) is not int:  # or opened in a batch that has not run
            return self._call("read_register", [address, reg, n],
                              lambda: f"I2C read of register {reg.hex()} at 0x{address:02x}")
        try:
            return self.client.call("read_register", [h, address, reg, n])
        except I2CError:
            raise
        except OSError as e:
            raise _wrap(e, f"I2C read of register {reg.hex()} at 0x{address:02x}") from e

    def write_register(self, address: int, register: int | bytes,
                       data: bytes | bytearray | list[int]) -> Any:
        """Write the register number then ``data`` in one message: one round trip."""
        _check_address(address, False)
        reg = _register(register)
        payload = _as_bytes(data, "data")
        if len(reg) + len(payload) > MAX_MESSAGE_LEN:
            raise ValueError(f"a message carries at most {MAX_MESSAGE_LEN} bytes")
        return self._call("write_register", [address, reg, payload],
                          lambda: f"I2C write of register {reg.hex()} at 0x{address:02x}")

    def funcs(self) -> Any:
        """The adapter's I2C_FUNCS bits (I2C_FUNC_I2C = 1, ...)."""
        return self._call("funcs", [], lambda: "I2C_FUNCS")



_REGISTERS = tuple(bytes((r,)) for r in range(256))
"""The one-byte register numbers, made once."""


def _check_address(address: object, ten_bit: bool) -> None:
    top = 0x3FF if ten_bit else 0x7F
    if type(address) is not int or not 0 <= address <= top:
        raise ValueError(f"address must be an integer 0..0x{top:x}, not {address!r}")


def _register(register: object) -> bytes:
    if type(register) is int:
        if not 0 <= register <= 255:
            raise ValueError(f"register must be 0..255 (or bytes), not {register}")
        return bytes([register])
    if isinstance(register, bytes | bytearray) and 1 <= len(register) <= 4:
        return bytes(register)
    raise TypeError(f"register must be an int 0..255 or 1..4 bytes, not {register!r}")
