# Connection.call_in(): the host's one-frame fast path returns the Call only for exactly one
# whole Call frame with nothing pending; anything else is MISS and nothing is consumed, so
# receive() then handles or reports the same bytes. Checked by example and with hypothesis.
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol import HEADER, MISS, Call, Connection, Hello, ProtocolError, Reply, Role


def _ready_pair() -> tuple[Connection, Connection]:
    c, s = Connection(Role.CLIENT), Connection(Role.SERVER)
    s.receive(b"".join(c.send(Hello())))
    c.receive(b"".join(s.send(Hello())))
    return c, s


def _in(s: Connection, wire: bytes) -> object:
    buf = bytearray(len(wire) + 100)  # as the host calls it: over a larger buffer
    buf[:len(wire)] = wire
    return s.call_in(memoryview(buf), len(wire))


def test_call_in_decodes_one_whole_call() -> None:
    c, s = _ready_pair()
    call = Call(7, "read", [3, 16, None])
    assert _in(s, b"".join(c.send(call))) == call
    assert s.buffered() == 0


def test_call_in_misses_everything_else_and_receive_still_gets_it() -> None:
    c, s = _ready_pair()
    one = b"".join(c.send(Call(1, "read", [3, 16, None])))
    two = one + b"".join(c.send(Call(2, "read", [3, 16, None])))
    bulk = b"".join(bytes(b) for b in c.send(Call(3, "write", [3, b"x" * 5000])))
    for wire, expect in ((one[:5], []), (one[:-1], []), (two, [1, 2]), (bulk, [3])):
        _, s = _ready_pair()
        assert _in(s, wire) is MISS
        assert [m.id for m in s.receive(wire)] == expect  # type: ignore[union-attr]
    _, s = _ready_pair()
    s.receive(one[:3])  # a frame part-way: nothing whole may be taken from a new buffer
    assert _in(s, one) is MISS


def test_call_in_leaves_other_messages_and_garbage_to_receive() -> None:
    c, s = _ready_pair()
    reply = b"".join(Connection(Role.SERVER).send(Reply(1, 2)))
    assert _in(s, reply) is MISS
    garbage = HEADER.pack(1, 0) + b"\xc1"
    assert _in(s, garbage) is MISS
    with pytest.raises(ProtocolError):
        s.receive(garbage)
    fresh = Connection(Role.SERVER)  # before the hello nothing is a call
    assert _in(fresh, b"".join(c.send(Call(1, "devices", [])))) is MISS


@given(st.binary(max_size=64))
def test_call_in_never_raises_and_agrees_with_receive(wire: bytes) -> None:
    _, s = _ready_pair()
    got = _in(s, wire)
    if got is MISS:
        return
    _, again = _ready_pair()
    assert again.receive(wire) == [got]
