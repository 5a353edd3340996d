# What every typed device proxy shares: its connection, device name and host handle (a
# Deferred while the batch that opened it is pending), closing, the context manager, and
# capability tokens. Client side, pure Python: must import on Windows; no I/O of its own
# beyond the explicit calls below, each one remote operation.
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from bridge.client import Client


class Proxy:
    """Base of the device proxies: ``client``, ``name``, ``handle``, ``close()``."""

    def __init__(self, client: Client, name: str, handle: Any,
                 description: dict[str, Any] | None = None) -> None:
        self.client = client
        self.name = name
        self._handle = handle
        self.description = description or {}
        self.closed = False

    @property
    def handle(self) -> Any:
        """The host's handle number (a Deferred while the batch that opened it is pending)."""
        h = self._handle
        if hasattr(h, "done") and h.done:
            self._handle = h = h.result()
        return h

    def share(self, access: str | None = None, ioctls: Sequence[str | int] | None = None,
              ttl: float | None = None) -> bytes:
        """A capability token for this handle, narrowed (e.g. ``access="r"``); another
        connection calls ``host.adopt(token)``. See :meth:`bridge.client.Client.share`."""
        token: bytes = self.client.share(self, access, None if ioctls is None else
                                         list(ioctls), None, ttl)
        return token

    def revoke(self, token: bytes | str) -> bool:
        """Revoke a token made from this handle: handles adopted through it are fenced."""
        done: bool = self.client.revoke(token)
        return done

    def close(self) -> None:
        """Release the handle on the host (idempotent)."""
        if not self.closed:
            self.closed = True
            self.client.call("close", [self.handle])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.client.closed:
            self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.client.url}>"


def errno_subclass(family: type[OSError], e: OSError, message: str,
                   cache: dict[type[OSError], type[OSError]]) -> OSError:
    """``e`` re-raised as ``family`` (I2CError, SPIError, ...) that is also an instance of the
    OSError subclass Python picks for its errno, so either kind of ``except`` catches it."""
    base = type(e)
    if base is OSError or issubclass(base, family):
        cls: type[OSError] = family
    else:
        made = cache.get(base)
        if made is None:
            made = cache[base] = type(f"{family.__name__[:-5]}{base.__name__}",
                                      (family, base), {})
        cls = made
    return cls(e.errno, message)


def as_bytes(data: object, what: str) -> bytes:
    """bytes from bytes-like data or a list of ints 0..255; TypeError/ValueError otherwise."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, list | tuple):
        if not all(type(b) is int and 0 <= b <= 255 for b in data):
            raise ValueError(f"{what}: every byte must be an integer 0..255")
        return bytes(data)
    raise TypeError(f"{what} must be bytes, bytearray or a list of ints, "
                    f"not {type(data).__name__}")
