# The sans-I/O protocol with no I/O at all: every message type round-trips through
# Connection.send -> receive_data -> next_event, fed whole and one byte at a time; garbage
# and mutated frames give ProtocolError and never any other exception; the frame limit is
# checked from the header alone; hello, version, role and state rules.
from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.protocol import (
    BULK_MIN,
    HEADER,
    NEED_DATA,
    PROTOCOL_VERSION,
    Batch,
    BatchError,
    BatchReply,
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

LONG = os.environ.get("HWBRIDGE_FUZZ") == "long"
FAST = settings(max_examples=2000 if LONG else 60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings(max_examples=50_000 if LONG else 1000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies over the closed set of wire values ------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
floats = st.floats(allow_nan=False)
small_bytes = st.binary(max_size=64)
# Large byte strings are built from a short pattern so hypothesis need not draw 4 KiB.
bulk = st.tuples(st.binary(min_size=1, max_size=8),
                 st.integers(min_value=BULK_MIN, max_value=BULK_MIN + 300)).map(
    lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]])
refs = st.builds(Ref, st.integers(min_value=0, max_value=0xFFFF))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=40), small_bytes,
                    refs)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers(-1000, 1000)), inner,
                        max_size=5),
    ),
    max_leaves=20,
)
ids = st.integers(min_value=0, max_value=2**32 - 1)
names = st.text(max_size=20)
arg_lists = st.lists(values, max_size=5)
bulk_or_small = st.one_of(bulk, small_bytes, bulk.map(bytearray))

calls = st.one_of(
    st.builds(Call, ids, names, arg_lists),
    # a large bytes last argument travels in the data section
    st.builds(lambda i, op, a, b: Call(i, op, [*a, b]), ids, names, arg_lists, bulk_or_small),
)
replies = st.builds(Reply, ids, st.one_of(values, bulk_or_small))
errors = st.builds(Error, ids, ints, st.text(max_size=60))
batches = st.builds(Batch, ids, st.lists(st.tuples(names, arg_lists), max_size=6))
batch_replies = st.builds(
    BatchReply, ids, st.lists(st.one_of(values, bulk), max_size=6),
    st.one_of(st.none(), st.builds(BatchError, ints, ints, st.text(max_size=40))))
events = st.builds(Event, names, ids, values)
hellos = st.builds(Hello, st.just(PROTOCOL_VERSION),
                   st.lists(st.text(max_size=12), max_size=4).map(tuple),
                   st.dictionaries(st.text(max_size=10).filter(lambda k: k != "magic"), values,
                                   max_size=4))

# What each role receives once the hello is done.
to_server = st.one_of(calls, batches)
to_client = st.one_of(replies, errors, batch_replies, events)


def _bytes(msg: Message, sender: Connection | None = None) -> bytes:
    conn = sender or Connection(Role.CLIENT)
    return b"".join(bytes(b) for b in conn.send(msg))


def _ready(role: Role) -> Connection:
    """A connection of ``role`` that has received the peer's hello."""
    c = Connection(role)
    c.receive_data(_bytes(Hello()))
    assert isinstance(c.next_event(), Hello)
    assert c.state is State.READY
    return c


def _drain(c: Connection) -> list[Any]:
    out = []
    while True:
        ev = c.next_event()
        if ev is NEED_DATA or ev is None:
            return out
        out.append(ev)


def _normal(v: Any) -> Any:
    """What the receiving end holds for a sent value (bytearrays arrive as bytes)."""
    if isinstance(v, bytearray):
        return bytes(v)
    if isinstance(v, list | tuple):
        return [_normal(x) for x in v]
    if isinstance(v, dict):
        return {k: _normal(x) for k, x in v.items()}
    return v


def _expect(msg: Message) -> Message:
    match msg:
        case Call(i, op, args):
            return Call(i, op, _normal(args))
        case Reply(i, r):
            return Reply(i, _normal(r))
        case Batch(i, ops):
            return Batch(i, [(op, _normal(a)) for op, a in ops])
        case BatchReply(i, rs, e):
            return BatchReply(i, _normal(rs), e)
        case Event(t, h, p):
            return Event(t, h, _normal(p))
    return msg


def _check_round_trip(msg: Message, receiver_role: Role) -> None:
    frame = _bytes(msg)
    whole = _ready(receiver_role)
    whole.receive_data(frame)
    assert _drain(whole) == [_expect(msg)]

    bytewise = _ready(receiver_role)
    got: list[Any] = []
    for i in range(len(frame)):
        bytewise.receive_data(frame[i:i + 1])
        got += _drain(bytewise)
        if i < len(frame) - 1:
            assert got == [], "a message came out before its frame was complete"
    assert got == [_expect(msg)]


# -- round trips ----------------------------------------------------------------------------

@FAST
@given(to_server)
def test_messages_to_the_server_round_trip(msg: Message) -> None:
    _check_round_trip(msg, Role.SERVER)


@FAST
@given(to_client)
def test_messages_to_the_client_round_trip(msg: Message) -> None:
    _check_round_trip(msg, Role.CLIENT)


@FAST
@given(hellos, st.sampled_from([Role.CLIENT, Role.SERVER]))
def test_hello_round_trips(msg: Hello, role: Role) -> None:
    frame = _bytes(msg)
    for chunks in ([frame], [frame[i:i + 1] for i in range(len(frame))]):
        c = Connection(role)
        got: list[Any] = []
        for ch in chunks:
            c.receive_data(ch)
            got += _drain(c)
        assert got == [msg]
        assert c.peer_hello == msg and c.state is State.READY


def test_bulk_payload_takes_the_data_section() -> None:
    payload = bytes(range(256)) * (BULK_MIN // 256 + 1)
    frame = _bytes(Reply(7, payload))
    body_len, data_len = HEADER.unpack_from(frame)
    assert data_len == len(payload)
    assert frame[HEADER.size + body_len:] == payload
    assert msgpack.unpackb(frame[HEADER.size:HEADER.size + body_len]) == [2, 7, None]
    small = _bytes(Reply(7, payload[:BULK_MIN - 1]))
    assert HEADER.unpack_from(small)[1] == 0


@FAST
@given(st.lists(st.one_of(to_client), min_size=1, max_size=8),
       st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8))
def test_many_frames_concatenated(msgs: list[Message], cuts: list[int]) -> None:
    stream = b"".join(_bytes(m) for m in msgs)
    want = [_expect(m) for m in msgs]
    whole = _ready(Role.CLIENT)
    whole.receive_data(stream)
    assert _drain(whole) == want
    # the same stream in arbitrary chunk sizes
    c = _ready(Role.CLIENT)
    got: list[Any] = []
    pos, k = 0, 0
    while pos < len(stream):
        n = cuts[k % len(cuts)]
        c.receive_data(stream[pos:pos + n])
        got += _drain(c)
        pos, k = pos + n, k + 1
    assert got == want
    c.receive_data(b"")
    assert c.next_event() is None and c.state is State.CLOSED


def test_ids_allow_out_of_order_replies() -> None:
    c = _ready(Role.CLIENT)
    c.receive_data(_bytes(Reply(3, "c")) + _bytes(Error(1, 5, "EIO")) + _bytes(Reply(2, "b")))
    assert [getattr(m, "id", None) for m in _drain(c)] == [3, 1, 2]


# -- malformed input ------------------------------------------------------------------------

def _feed_all(c: Connection, data: bytes, step: int) -> None:
    """Feed ``data`` then EOF; only ProtocolError may escape (raised to the caller)."""
    for i in range(0, len(data), step):
        c.receive_data(data[i:i + step])
        _drain(c)
    c.receive_data(b"")
    _drain(c)


def _only_protocol_errors(c: Connection, data: bytes, step: int) -> None:
    try:
        _feed_all(c, data, step)
    except ProtocolError:
        assert c.state is State.ERROR
        with pytest.raises(ProtocolError):
            c.next_event()  # the error state is for good


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([Role.CLIENT, Role.SERVER]), st.booleans(),
       st.integers(min_value=1, max_value=300))
def test_fuzz_garbage_gives_only_protocol_error(data: bytes, role: Role, greeted: bool,
                                                step: int) -> None:
    c = _ready(role) if greeted else Connection(role)
    _only_protocol_errors(c, data, step)


@FUZZ
@given(st.binary(max_size=120), st.sampled_from([Role.CLIENT, Role.SERVER]), st.booleans())
def test_fuzz_framed_garbage_gives_only_protocol_error(body: bytes, role: Role,
                                                       greeted: bool) -> None:
    # garbage with a plausible header reaches the msgpack decoder and the message checks
    c = _ready(role) if greeted else Connection(role)
    _only_protocol_errors(c, HEADER.pack(len(body), 0) + body, 7)


# msgpack bodies that decode but are not valid messages
shallow = st.one_of(scalars, st.lists(scalars, max_size=3))


@settings(FUZZ, max_examples=FUZZ.max_examples // 2)
@given(st.lists(shallow, max_size=5), st.sampled_from([Role.CLIENT, Role.SERVER]),
       st.booleans(), st.integers(min_value=0, max_value=8))
def test_fuzz_wrong_shaped_bodies(body: list[Any], role: Role, greeted: bool,
                                  kind: int) -> None:
    packed = msgpack.packb([kind, *body], default=lambda r: msgpack.ExtType(1, bytes(2)))
    c = _ready(role) if greeted else Connection(role)
    _only_protocol_errors(c, HEADER.pack(len(packed), 0) + packed, 1000)


# One valid frame of every shape, bulk data sections included, for the mutation fuzzer.
CORPUS = [_bytes(m) for m in (
    Hello(), Hello(features=(), info={"x": [1, 2.5, None]}),
    Call(1, "open", ["pty"]), Call(2, "write", [1, b"x" * BULK_MIN, None]),
    Call(3, "ioctl", [1, "TCGETS", bytes(36)]), Reply(1, 5), Reply(2, b"y" * BULK_MIN),
    Reply(3, {"name": "null", "ioctls": [{"size": 4}]}), Error(4, 13, "denied"),
    Batch(5, [("open", ["pty"]), ("read", [Ref(0), 16, 1.5]), ("close", [Ref(0)])]),
    BatchReply(5, [1, b"abc", None], BatchError(2, 9, "EBADF")), BatchReply(6, [True]),
    Event("edge", 3, {"line": 1, "rising": True}),
)]


@FUZZ
@given(st.sampled_from(CORPUS), st.data())
def test_fuzz_mutated_frames_give_only_protocol_error(original: bytes, data: st.DataObject
                                                      ) -> None:
    frame = bytearray(original)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        how = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "header"]))
        # mutations land in the header and body more often than deep in a data section
        limit = min(len(frame), 200) if data.draw(st.booleans()) else len(frame)
        pos = data.draw(st.integers(min_value=0, max_value=max(0, limit - 1)))
        if how == "flip" and frame:
            frame[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
        elif how == "insert":
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif how == "delete" and frame:
            del frame[pos]
        elif how == "truncate":
            del frame[pos:]
        elif how == "header" and len(frame) >= HEADER.size:
            frame[:HEADER.size] = HEADER.pack(
                data.draw(st.integers(0, 2**32 - 1)), data.draw(st.integers(0, 2**32 - 1)))
    role = data.draw(st.sampled_from([Role.CLIENT, Role.SERVER]))
    c = _ready(role) if data.draw(st.booleans()) else Connection(role)
    _only_protocol_errors(c, bytes(frame), data.draw(st.sampled_from([3, 64, 1 << 20])))


@pytest.mark.parametrize(("body_len", "data_len"), [
    (0xFFFFFFFF, 1),           # 4 GiB announced in total
    (0xFFFFFFFF, 0xFFFFFFFF),  # 8 GiB
    (16, 0xFFFFFFF0),          # a small body and a 4 GiB data section
    (8 * 1024 * 1024 + 1, 0),  # just over the default limit
])
def test_oversized_header_fails_from_the_header_alone(body_len: int, data_len: int) -> None:
    for c in (Connection(Role.SERVER), _ready(Role.SERVER), _ready(Role.CLIENT)):
        c.receive_data(HEADER.pack(body_len, data_len))  # only the 8 header bytes
        with pytest.raises(ProtocolError, match="exceeds the limit"):
            c.next_event()
        assert c.state is State.ERROR


def test_frame_limit_is_configurable() -> None:
    frame = _bytes(Reply(1, b"x" * 5000))
    small = _ready(Role.CLIENT)
    small.max_frame = 4096
    small.receive_data(frame[:HEADER.size])
    with pytest.raises(ProtocolError):
        small.next_event()
    big = _ready(Role.CLIENT)
    big.max_frame = 8192
    big.receive_data(frame)
    assert _drain(big) == [Reply(1, b"x" * 5000)]
    with pytest.raises(ValueError):
        Connection(Role.CLIENT, max_frame=4096).send(Reply(1, b"x" * 5000))


def test_empty_body_is_an_error() -> None:
    c = Connection(Role.SERVER)
    c.receive_data(HEADER.pack(0, 0))
    with pytest.raises(ProtocolError):
        c.next_event()


def test_version_mismatch() -> None:
    c = Connection(Role.SERVER)
    c.receive_data(_bytes(Hello(version=PROTOCOL_VERSION + 1)))
    with pytest.raises(ProtocolError, match="version"):
        c.next_event()
    assert c.state is State.ERROR


@pytest.mark.parametrize("info", [{"magic": "http"}, {}, None, [1, 2], "hwbridge"])
def test_hello_with_wrong_magic(info: Any) -> None:
    body = msgpack.packb([0, PROTOCOL_VERSION, ["batch"], info])
    for role in Role:
        c = Connection(role)
        c.receive_data(HEADER.pack(len(body), 0) + body)
        with pytest.raises(ProtocolError, match="hello"):
            c.next_event()


@pytest.mark.parametrize("msg", [Reply(1, 2), Error(1, 5, "x"), BatchReply(1, []),
                                 Event("t", 1, None), Hello()])
def test_server_refuses_client_bound_messages(msg: Message) -> None:
    c = _ready(Role.SERVER)
    c.receive_data(_bytes(msg))
    with pytest.raises(ProtocolError, match="unexpected"):
        c.next_event()


@pytest.mark.parametrize("msg", [Call(1, "open", ["x"]), Batch(1, [("devices", [])]),
                                 Hello()])
def test_client_refuses_server_bound_messages(msg: Message) -> None:
    c = _ready(Role.CLIENT)
    c.receive_data(_bytes(msg))
    with pytest.raises(ProtocolError, match="unexpected"):
        c.next_event()


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("msg", [Call(1, "devices", []), Batch(1, []), Reply(1, None),
                                 BatchReply(1, []), Event("t", 1, None)])
def test_nothing_but_hello_before_hello(role: Role, msg: Message) -> None:
    c = Connection(role)
    c.receive_data(_bytes(msg))
    with pytest.raises(ProtocolError):
        c.next_event()


def test_server_refusing_the_hello_closes_the_client() -> None:
    c = Connection(Role.CLIENT)
    c.receive_data(_bytes(Error(0, 71, "protocol error")))
    assert c.next_event() == Error(0, 71, "protocol error")
    assert c.state is State.CLOSED
    s = Connection(Role.SERVER)
    s.receive_data(_bytes(Error(0, 71, "no")))
    with pytest.raises(ProtocolError):
        s.next_event()


def test_eof_mid_frame() -> None:
    frame = _bytes(Reply(1, "hello"))
    for cut in (1, HEADER.size - 1, HEADER.size, len(frame) - 1):
        c = _ready(Role.CLIENT)
        c.receive_data(frame[:cut])
        assert c.next_event() is NEED_DATA
        c.receive_data(b"")
        with pytest.raises(ProtocolError, match="middle of a frame"):
            c.next_event()


def test_eof_between_frames_is_a_clean_close() -> None:
    c = _ready(Role.CLIENT)
    c.receive_data(_bytes(Reply(1, 1)))
    c.receive_data(b"")
    assert c.next_event() == Reply(1, 1)
    assert c.next_event() is None and c.state is State.CLOSED
    with pytest.raises(ProtocolError):
        c.receive_data(b"more")


def test_data_section_on_a_message_without_one() -> None:
    body = msgpack.packb([3, 1, 5, "x"])
    c = _ready(Role.CLIENT)
    c.receive_data(HEADER.pack(len(body), 3) + body + b"abc")
    with pytest.raises(ProtocolError, match="data section"):
        c.next_event()


def test_unknown_extension_type() -> None:
    body = msgpack.packb([1, 1, "read", [msgpack.ExtType(9, b"zz")]])
    c = _ready(Role.SERVER)
    c.receive_data(HEADER.pack(len(body), 0) + body)
    with pytest.raises(ProtocolError, match="extension"):
        c.next_event()


def test_values_outside_the_wire_types_are_refused_on_send() -> None:
    with pytest.raises(TypeError):
        Connection(Role.CLIENT).send(Call(1, "write", [object()]))
    with pytest.raises(TypeError):
        Connection(Role.CLIENT).send("not a message")  # type: ignore[arg-type]
