# The link between the host and a library's worker process: two pipes, one each way,
# carrying frames of u32 length | msgpack body (no pickle). Calls and replies strictly
# alternate. Must not know what a call means (bridge/libworker.py, bridge/librunner.py).
from __future__ import annotations

import errno
import math
import os
import select
import struct
from typing import Any

import msgpack

_LEN = struct.Struct(">I")
_CHUNK = 64 * 1024


class Channel:
    """One end of the host-worker link: two pipes, one each way, carrying frames of
    u32 length | msgpack body.

    A call costs one write and one read on each side, plus a poll on the host when it waits
    with a timeout. Pipes rather than a socketpair: reading from a socket wakes whoever
    sleeps on the peer socket (to say there is room to write), which on one bidirectional
    socketpair is the peer waiting for the next frame, so every call woke both sides twice.
    """

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self._poll = select.poll()
        self._poll.register(rfd, select.POLLIN)
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._buf = bytearray(_CHUNK)
        self._view = memoryview(self._buf)
        self._have = 0  # bytes of the next frame already read (kept across a timeout)

    def send(self, obj: Any) -> None:
        body = self._pack(obj)
        frame = _LEN.pack(len(body)) + body
        n = os.write(self.wfd, frame)
        while n < len(frame):  # a large frame goes into the pipe piece by piece
            n += os.write(self.wfd, memoryview(frame)[n:])

    def recv(self, timeout: float | None = None) -> Any:
        """The next frame's value; None at end of stream; TimeoutError past ``timeout`` s
        (waiting for each piece of a large frame)."""
        ms = None if timeout is None else max(0, math.ceil(timeout * 1000))
        have, need = self._have, 4
        while True:
            if have >= 4:
                need = 4 + _LEN.unpack_from(self._buf)[0]
                if have >= need:
                    break
                if need > len(self._buf):  # a large frame: one buffer of its size
                    self._resize(need, have)
            if ms is not None and not self._poll.poll(ms):
                self._have = have
                raise TimeoutError(errno.ETIMEDOUT, "no reply in time")
            n = os.readv(self.rfd, [self._view[have:]])
            if n == 0:
                self._have = 0
                return None
            have += n
        value = msgpack.unpackb(self._view[4:need], raw=False, strict_map_key=False)
        self._have = 0
        if have > need or len(self._buf) > _CHUNK:  # calls and replies alternate: rare
            rest = bytes(self._view[need:have])
            self._resize(max(_CHUNK, len(rest)), 0)
            self._buf[:len(rest)] = rest
            self._have = len(rest)
        return value

    def _resize(self, size: int, keep: int) -> None:
        buf = bytearray(size)
        buf[:keep] = self._view[:keep]
        self._view.release()
        self._buf, self._view = buf, memoryview(buf)

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)
