# The proxy for raw device nodes (kind "node"): read, write, poll, allowlisted ioctls.
# Client side, pure Python: every method is exactly one remote operation (or one entry of
# a batch). Must not know about sockets.
from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, TypeVar

from bridge.protocol import BULK_DIRECT

from .base import Proxy

if TYPE_CHECKING:
    from bridge.client import Client

S = TypeVar("S", bound=ctypes.Structure)

_CTYPES = (ctypes.Structure, ctypes.Union, ctypes.Array)
_BYTES = (bytes, bytearray, memoryview)

# Room in a frame for everything of a write call but its data (header, op, handle, timeout).
_FRAME_OVERHEAD = 256


class Node(Proxy):
    """A device node on a remote host, used like a file descriptor.

    ``timeout`` (seconds; None waits forever, 0 polls) bounds ``read``; ``write_timeout``
    bounds ``write``. Both are sent with each call, so changing them costs nothing.
    """

    def __init__(self, client: Client, name: str, handle: Any,
                 description: dict[str, Any] | None = None) -> None:
        super().__init__(client, name, handle, description)
        self.timeout: float | None = None
        self.write_timeout: float | None = None
        # The most one write sends (the host's frame limit from its hello, which does not
        # change), worked out once rather than on every write.
        self._write_limit = int(client.server_info.get("max_frame", 0)) - _FRAME_OVERHEAD

    # Each method below passes ``_handle`` as it is: the host's number, or for a proxy
    # opened inside a batch, that batch's Deferred, which the client's packer sends as a
    # reference inside the batch and as its result after it (Client._pack_default).

    def read(self, n: int) -> Any:
        """Up to ``n`` bytes, waiting up to ``timeout`` for the first one (TimeoutError)."""
        return self.client.call("read", [self._handle, n, self.timeout], None, n >= BULK_DIRECT)

    def write(self, data: bytes | bytearray | memoryview) -> Any:
        """Write ``data``; returns the number of bytes the device took.

        Like ``os.write`` the count may be short: one call sends at most what fits in one
        frame of the host (its ``max_frame``), so a huge buffer never breaks the connection.
        """
        limit = self._write_limit
        if limit > 0 and isinstance(data, _BYTES) and len(data) > limit:
            data = memoryview(data)[:limit]
        h = self._handle
        return self.client.call("write", [h, data, self.write_timeout])

    def poll(self, timeout: float | None = 0.0) -> Any:
        """True when the node is readable within ``timeout`` seconds."""
        h = self._handle
        return self.client.call("poll", [h, timeout])

    def ioctl(self, request: str | int, arg: Any = None) -> Any:
        """Issue an ioctl the manifest allows.

        ``arg`` is None, an int, bytes/bytearray or a ctypes Structure. Codes that write back
        return the same type (bytes, or a new Structure of the argument's type); others return
        the int return value.
        """
        h = self._handle
        if arg is None or type(arg) is int or type(arg) is bytes:
            # Nothing to convert either way (the common case): no closure per call.
            return self.client.call("ioctl", [h, request, arg], _ioctl_result)
        kind: type[ctypes.Structure | ctypes.Union | ctypes.Array[Any]] | None = None
        wire: Any = arg
        if isinstance(arg, _CTYPES):
            kind = type(arg)
            wire = bytes(memoryview(arg).cast("B"))
        elif isinstance(arg, bytearray | memoryview):
            wire = bytes(arg)

        def convert(result: list[Any]) -> Any:
            if kind is not None and result[1] is not None:
                return kind.from_buffer_copy(result[1])
            return _ioctl_result(result)

        return self.client.call("ioctl", [h, request, wire], convert)


def _ioctl_result(result: list[Any]) -> Any:
    """An ioctl's result as the caller gets it: the out bytes if any, else the int."""
    ret, out = result
    return ret if out is None else out
