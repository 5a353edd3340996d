# Simulated character nodes: null and zero, with /dev/null and /dev/zero semantics
# (reads of null give end of file, writes always succeed, unknown ioctls give ENOTTY).
from __future__ import annotations

import errno

from bridge.backend import NodeHandle


class NullNode(NodeHandle):
    """/dev/null: reads return b"" (end of file), writes swallow everything."""
    INLINE_ALL = True  # an in-process model: nothing here waits

    def read_nowait(self, n: int) -> bytes | None:
        self._check()
        return b""

    def write_nowait(self, data: bytes) -> int | None:
        self._check()
        return len(data)

    def wait(self, write: bool, timeout: float | None) -> bool:
        return True

    def do_ioctl(self, request: int, arg: int | bytearray) -> int:
        self._check()
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    def _check(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "handle is closed")


class ZeroNode(NullNode):
    """/dev/zero: reads return as many zero bytes as asked for."""

    def read_nowait(self, n: int) -> bytes | None:
        self._check()
        return bytes(n)


MODELS = {"null": NullNode, "zero": ZeroNode}

LAB = {
    "null": {"kind": "node", "sim": "null", "description": "like /dev/null",
             "ioctls": ["FIONREAD"]},
    "zero": {"kind": "node", "sim": "zero", "description": "like /dev/zero",
             "ioctls": ["FIONREAD"]},
}
