# The input buffer of a serial proxy: received byte strings kept as they arrived (a deque of
# chunks and a read offset into the first), so appending never copies and a read copies at
# most once (none when it takes exactly one whole chunk, the streaming case); and the time a
# waiting read has left. Pure data structure and arithmetic: no threads, no locks
# (drivers/serial.py holds its lock around every call), no knowledge of the wire.
from __future__ import annotations

from collections import deque

from serial.serialutil import Timeout

__all__ = ["ChunkBuffer", "time_left"]


def time_left(timeout: Timeout, gap: Timeout | None) -> float | None:
    """Seconds until a read's deadline or the end of its inter-byte gap (None: none)."""
    wait: float | None = timeout.time_left()
    if gap is not None:
        left = gap.time_left()
        wait = left if wait is None else min(wait, left)
    return wait


class ChunkBuffer:
    """Bytes received and not yet read, as a queue of immutable chunks.

    ``len(buf)`` is the number of readable bytes; :meth:`take` removes from the front,
    :meth:`find` searches the readable bytes as if they were one string.
    """

    __slots__ = ("_chunks", "_pos", "_len")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._pos = 0  # bytes of _chunks[0] already read
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, data: bytes) -> None:
        """Add ``data`` at the end; the object is kept, not copied (bytes are immutable)."""
        if data:
            self._chunks.append(data)
            self._len += len(data)

    def clear(self) -> None:
        self._chunks.clear()
        self._pos = self._len = 0

    def take(self, n: int) -> bytes:
        """Remove and return the first ``min(n, len(self))`` bytes."""
        n = min(n, self._len)
        if n <= 0:
            return b""
        chunks = self._chunks
        first = chunks[0]
        pos = self._pos
        rest = len(first) - pos
        self._len -= n
        if n == rest:  # the rest of the first chunk
            chunks.popleft()
            self._pos = 0
            return first if pos == 0 else first[pos:]
        if n < rest:
            self._pos = pos + n
            return first[pos:pos + n]
        # Spans chunks: gather views and copy once.
        parts = [memoryview(first)[pos:]]
        chunks.popleft()
        need = n - rest
        while need:
            c = chunks[0]
            if len(c) <= need:
                parts.append(memoryview(c))
                chunks.popleft()
                need -= len(c)
            else:
                parts.append(memoryview(c)[:need])
                self._pos = need
                break
        else:
            self._pos = 0
        return b"".join(parts)

    def find(self, sub: bytes, start: int = 0) -> int:
        """Offset of the first ``sub`` at or after ``start`` in the readable bytes, or -1.

        Chunk by chunk, with the last ``len(sub) - 1`` bytes of what came before carried
        over, so a match across a chunk boundary is found without joining the chunks.
        """
        k = len(sub)
        if k == 0:
            return start if start <= self._len else -1
        base = 0  # offset of the current chunk's first readable byte
        tail = b""  # the last k-1 readable bytes before the current chunk
        lo = self._pos
        for c in self._chunks:
            size = len(c) - lo
            if tail:  # a match that begins before this chunk and ends in it
                window = tail + c[lo:lo + k - 1]
                wstart = base - len(tail)
                j = window.find(sub, max(0, start - wstart))
                if j >= 0:
                    return wstart + j
            j = c.find(sub, lo + max(0, start - base))
            if j >= 0:
                return base + j - lo
            if k > 1:
                tail = (tail + c[max(lo, len(c) - (k - 1)):])[-(k - 1):]
            base += size
            lo = 0
        return -1
