# Connection.receive(): the one-call hot path returns every complete message of a chunk;
# a bad frame behind good ones is raised only after those were handed out (by the next
# receive() or by check()), so a peer's hello is answered before its garbage ends it.
from __future__ import annotations

import pytest

from bridge.protocol import (
    HEADER,
    Call,
    Connection,
    Hello,
    ProtocolError,
    Reply,
    Role,
)


def _ready_pair() -> tuple[Connection, Connection]:
    c, s = Connection(Role.CLIENT), Connection(Role.SERVER)
    assert s.receive(b"".join(c.send(Hello()))) == [Hello(info={})]
    assert [type(m) for m in c.receive(b"".join(s.send(Hello())))] == [Hello]
    return c, s


def test_receive_returns_every_message_of_a_chunk_in_order() -> None:
    c, s = _ready_pair()
    calls = [Call(i, "read", [1, i, None]) for i in range(1, 6)]
    wire = b"".join(b"".join(c.send(m)) for m in calls)
    assert s.receive(wire[:7]) == []
    assert s.receive(wire[7:]) == calls
    s.check()


def test_a_bad_frame_behind_good_ones_is_raised_after_them() -> None:
    c, s = _ready_pair()
    good = b"".join(s.send(Reply(1, b"ok")))
    bad = HEADER.pack(0xFFFFFFFF, 0)
    assert c.receive(good + bad) == [Reply(1, b"ok")]
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        c.check()
    with pytest.raises(ProtocolError):
        c.receive(b"more")


def test_a_bad_first_frame_raises_at_once() -> None:
    _, s = _ready_pair()
    with pytest.raises(ProtocolError):
        s.receive(HEADER.pack(0, 0))
