# Connection.receive(): the one-call hot path returns every complete message of a chunk;
# a bad frame behind good ones is raised only after those were handed out (by the next
# receive() or by check()), so a peer's hello is answered before its garbage ends it.
# Connection.reply_result(): the client's one-frame fast path answers only for exactly one
# whole Reply to the given id with nothing pending; anything else is MISS and left intact
# for receive(), which then handles or reports it.
from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.protocol import (
    HEADER,
    MISS,
    Call,
    Connection,
    Error,
    Event,
    Hello,
    Message,
    ProtocolError,
    Ref,
    Reply,
    Role,
    State,
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


def _wire(s: Connection, *msgs: Message) -> bytes:
    return b"".join(bytes(b) for m in msgs for b in s.send(m))


def _result(c: Connection, wire: bytes, id: int) -> object:
    """reply_result() as the client calls it: over a larger receive buffer."""
    buf = bytearray(1 << 16)
    buf[:len(wire)] = wire
    return c.reply_result(memoryview(buf), len(wire), id)


@pytest.mark.parametrize("result", [b"\0" * 16, 7, None, [0, None], {"a": 1}, Ref(3), "x"])
def test_reply_result_gives_the_result_of_the_awaited_reply(result: object) -> None:
    c, s = _ready_pair()
    assert _result(c, _wire(s, Reply(42, result)), 42) == result
    assert c.state is State.READY and c.buffered() == 0
    # the connection goes on as usual afterwards
    assert c.receive(_wire(s, Reply(43, 1))) == [Reply(43, 1)]


def test_reply_result_misses_everything_else_and_receive_still_gets_it() -> None:
    c, s = _ready_pair()
    whole = _wire(s, Reply(42, b"ok"))
    cases: list[tuple[bytes, list[Message]]] = [
        (_wire(s, Reply(41, b"ok")), [Reply(41, b"ok")]),  # another call's reply
        (_wire(s, Error(42, 13, "denied")), [Error(42, 13, "denied")]),
        (_wire(s, Event("rx", 1, b"data")), [Event("rx", 1, b"data")]),
        (whole + _wire(s, Reply(43, 1)), [Reply(42, b"ok"), Reply(43, 1)]),  # two frames
    ]
    for wire, messages in cases:
        assert _result(c, wire, 42) is MISS
        assert c.buffered() == 0  # nothing consumed
        assert c.receive(wire) == messages
    # part of a frame: a miss, and once receive() holds the first part, so is the rest
    assert _result(c, whole[:5], 42) is MISS
    assert c.receive(whole[:5]) == []
    assert _result(c, whole[5:], 42) is MISS
    assert c.receive(whole[5:]) == [Reply(42, b"ok")]


def test_reply_result_takes_a_data_section_as_the_result() -> None:
    c, s = _ready_pair()
    big = bytes(range(256)) * 20  # past BULK_MIN: it travels in the data section
    wire = _wire(s, Reply(42, big))
    assert HEADER.unpack_from(wire)[1] == len(big)
    got = _result(c, wire, 42)
    assert got == big and type(got) is bytes
    # a data section behind a result that is not nil is malformed: receive() says so
    raw = msgpack.packb([2, 42, 1])
    bad = HEADER.pack(len(raw), 3) + raw + b"abc"
    assert _result(c, bad, 42) is MISS
    with pytest.raises(ProtocolError, match="nil result"):
        c.receive(bad)


def test_reply_result_checks_what_decode_checks() -> None:
    c, _ = _ready_pair()
    for body in ([2, 42.0, b"ok"], [2, True, b"ok"], [2, 42], [2, 42, 1, 2]):
        raw = msgpack.packb(body)
        assert _result(c, HEADER.pack(len(raw), 0) + raw, 42) is MISS


def test_reply_result_leaves_malformed_frames_to_receive() -> None:
    c, _ = _ready_pair()
    garbage = HEADER.pack(3, 0) + b"\xc1\xc1\xc1"  # 0xc1 is never used in msgpack
    assert _result(c, garbage, 42) is MISS
    with pytest.raises(ProtocolError, match="malformed"):
        c.receive(garbage)


def test_reply_result_needs_a_ready_connection() -> None:
    c, s = Connection(Role.CLIENT), Connection(Role.SERVER)
    s.state = State.READY  # the server side only encodes here
    assert _result(c, _wire(s, Reply(42, 1)), 42) is MISS  # still in the hello
    c, s = _ready_pair()
    c.receive(b"")  # end of stream
    assert _result(c, _wire(s, Reply(42, 1)), 42) is MISS


def test_reply_result_respects_the_frame_limit() -> None:
    c, s = Connection(Role.CLIENT, max_frame=16), Connection(Role.SERVER)
    c.state = s.state = State.READY  # a hello does not fit in 16 bytes
    assert _result(c, _wire(s, Reply(42, b"x" * 8)), 42) == b"x" * 8
    too_big = _wire(s, Reply(42, b"x" * 32))
    assert _result(c, too_big, 42) is MISS
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        c.receive(too_big)


# Connection.events_then_reply(): the client's path for a call whose reply comes behind the
# events it raised (a serial instrument's answer, a GPIO edge), in one receive.

def _events_then(c: Connection, wire: bytes, id: int) -> object:
    buf = bytearray(1 << 16)
    buf[:len(wire)] = wire
    return c.events_then_reply(memoryview(buf), len(wire), id)


def test_events_then_reply_gives_the_events_in_order_and_the_result() -> None:
    c, s = _ready_pair()
    big = bytes(range(256)) * 20  # data sections: an event's and the reply's
    events = [Event("serial.data", 3, b"answer\n"), Event("gpio.edge", 4, [1, 2]),
              Event("serial.data", 3, big)]
    for result in (5, big, None):
        wire = _wire(s, *events, Reply(42, result))
        assert _result(c, wire, 42) is MISS  # not one frame: the other path
        got = _events_then(c, wire, 42)
        assert got == (events, result)
        assert c.buffered() == 0 and c.receive(wire) == [*events, Reply(42, result)]


def test_events_then_reply_misses_everything_else_and_receive_still_gets_it() -> None:
    c, s = _ready_pair()
    ev = Event("rx", 1, b"data")
    cases: list[tuple[Message, ...]] = [
        (Reply(42, 1),),  # no events: reply_result's case
        (ev,),  # no reply
        (ev, Reply(41, 1)),  # another call's reply
        (ev, Error(42, 5, "failed")),  # an error
        (Reply(41, 1), Reply(42, 1)),  # a reply first, not an event
        (ev, Reply(42, 1), ev),  # something after the reply
    ]
    for msgs in cases:
        wire = _wire(s, *msgs)
        assert _events_then(c, wire, 42) is MISS, msgs
        assert c.buffered() == 0  # nothing consumed
        assert c.receive(wire) == list(msgs)
    whole = _wire(s, ev, Reply(42, 1))
    for cut in (3, 8, 20, len(whole) - 1):  # part of a frame
        assert _events_then(c, whole[:cut], 42) is MISS
    garbage = HEADER.pack(3, 0) + b"\xc1\xc1\xc1"
    assert _events_then(c, _wire(s, ev) + garbage + _wire(s, Reply(42, 1)), 42) is MISS
    bad_event = msgpack.packb([6, 7, 1, b"x"])  # a topic that is not a string
    assert _events_then(c, HEADER.pack(len(bad_event), 0) + bad_event
                        + _wire(s, Reply(42, 1)), 42) is MISS
    c.receive(b"")  # end of stream: nothing is ready any more
    assert _events_then(c, whole, 42) is MISS


_INTS = st.integers(-(1 << 63), (1 << 64) - 1)  # what msgpack carries
_MSGS = st.one_of(
    st.builds(Event, st.sampled_from(["rx", "gpio.edge"]), st.integers(0, 3),
              st.one_of(st.binary(max_size=40), _INTS, st.none(),
                        st.binary(min_size=4096, max_size=4200))),
    st.builds(Reply, st.integers(40, 43), st.one_of(st.binary(max_size=20), _INTS)),
    st.builds(Error, st.integers(40, 43), st.integers(1, 100), st.text(max_size=10)),
)


@settings(max_examples=300, deadline=None)
@given(msgs=st.lists(_MSGS, max_size=5), cut=st.integers(0, 12))
def test_events_then_reply_agrees_with_receive(msgs: list[Message], cut: int) -> None:
    """Whatever the bytes, it answers exactly what receive() makes of them, or MISS."""
    c, s = _ready_pair()
    wire = _wire(s, *msgs)
    wire = wire[:len(wire) - cut] if cut < len(wire) else wire
    got = _events_then(c, wire, 42)
    assert c.buffered() == 0
    received = c.receive(wire)
    if got is not MISS:
        events, result = got  # type: ignore[misc]
        assert [*events, Reply(42, result)] == received
        assert events and all(type(e) is Event for e in events)
