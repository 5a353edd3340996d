# The serial proxy's input buffer (bridge.drivers.serialbuf.ChunkBuffer) on its own, with no
# I/O: take() and find() against the same operations on one flat bytes string, by example and
# by property (any chunking, any sequence of takes and searches).
from __future__ import annotations

from bridge.drivers.serialbuf import ChunkBuffer
from hypothesis import given
from hypothesis import strategies as st


def filled(*chunks: bytes) -> ChunkBuffer:
    buf = ChunkBuffer()
    for c in chunks:
        buf.append(c)
    return buf


def test_a_whole_chunk_is_returned_as_it_is() -> None:
    a, b = bytes(range(256)) * 4, b"x" * 1024
    buf = filled(a, b)
    assert buf.take(1024) is a  # no copy: the streaming case
    assert len(buf) == 1024
    assert buf.take(4096) is b
    assert len(buf) == 0 and buf.take(10) == b""


def test_takes_within_and_across_chunks() -> None:
    buf = filled(b"abc", b"", b"defg", b"h")
    assert len(buf) == 8
    assert buf.take(2) == b"ab"
    assert buf.take(2) == b"cd"  # across a boundary, after a partial take
    assert buf.take(0) == b""
    assert buf.take(3) == b"efg"  # the rest of a chunk that was partly read
    assert buf.take(5) == b"h"
    assert len(buf) == 0


def test_a_take_spanning_several_chunks_ends_inside_one() -> None:
    buf = filled(b"12", b"34", b"56", b"78")
    assert buf.take(5) == b"12345"
    assert buf.take(1) == b"6"
    assert buf.take(9) == b"78"


def test_clear() -> None:
    buf = filled(b"abc", b"def")
    buf.take(1)
    buf.clear()
    assert len(buf) == 0 and buf.find(b"d") == -1
    buf.append(b"xy")
    assert buf.take(2) == b"xy"


def test_find_across_boundaries_and_after_partial_reads() -> None:
    buf = filled(b"ab\r", b"\ncd", b"\r", b"\n")
    assert buf.find(b"\r\n") == 2
    assert buf.find(b"\r\n", 3) == 6
    assert buf.find(b"\n") == 3
    assert buf.find(b"b\r\ncd\r") == 1  # spans three chunks
    assert buf.find(b"zz") == -1
    assert buf.find(b"") == 0 and buf.find(b"", 8) == 8 and buf.find(b"", 9) == -1
    buf.take(3)
    assert buf.find(b"\r\n") == 3  # offsets are from the first unread byte
    assert buf.find(b"\n") == 0


def test_find_does_not_report_a_match_before_start() -> None:
    buf = filled(b"xAB", b"AB", b"y")
    assert buf.find(b"AB") == 1
    assert buf.find(b"AB", 2) == 3
    assert buf.find(b"BA", 2) == 2  # "BA" straddles the boundary at offset 2
    assert buf.find(b"BA", 3) == -1


@given(st.lists(st.binary(max_size=12), max_size=8),
       st.lists(st.tuples(st.sampled_from(["take", "find"]), st.integers(0, 20),
                          st.binary(min_size=1, max_size=4)), max_size=10))
def test_matches_one_flat_string(chunks: list[bytes],
                                 ops: list[tuple[str, int, bytes]]) -> None:
    buf = filled(*chunks)
    flat = b"".join(chunks)
    for what, n, sub in ops:
        if what == "take":
            assert buf.take(n) == flat[:n]
            flat = flat[n:]
        else:
            start = n % (len(flat) + 1)
            assert buf.find(sub, start) == flat.find(sub, start)
        assert len(buf) == len(flat)
