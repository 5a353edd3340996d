"""The decoder under hostile input: hypothesis-mutated frames (2,000 in `make test`, 20,000
with HWBRIDGE_FUZZ=long, `make fuzz`) and a deterministic sweep of 60 golden frames through
every bit flip, byte flip and truncation. Every outcome is a message whose meaning is stable
(it re-encodes to itself), NEED_DATA, or ProtocolError: never another exception."""
from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.protocol import (
    NEED_DATA,
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
)

LONG = os.environ.get("HWBRIDGE_FUZZ") == "long"
EXAMPLES = 20_000 if LONG else 2_000

GOLDEN: list[tuple[Role, Message]] = [
    (Role.SERVER, Hello()),
    (Role.CLIENT, Hello(info={"server": "hwbridge", "devices": [{"name": "x"}]})),
    *[(Role.SERVER, Call(i, op, args)) for i, (op, args) in enumerate([
        ("open", ["uart0"]), ("open", ["null", "rw"]), ("close", [1]), ("devices", []),
        ("info", ["i2c1"]), ("read", [1, 16, None]), ("read", [2, 4096, 0.5]),
        ("write", [1, b"abc", None]), ("write", [1, b"\x00" * 5000, 1.0]),
        ("ioctl", [3, "TCGETS", None]), ("ioctl", [3, 0x5401, b"\x00" * 60]),
        ("poll", [1, 0]), ("lease", ["uart0", 30.0, None]), ("renew", ["uart0", 7]),
        ("release", ["uart0", 7]), ("leases", []), ("call", [4, "dev_add", [1, 2], None]),
        ("transfer", [5, 0x48, [[b"\x00", False], [2, True]], None]),
        ("configure", [6, {"baudrate": 115200, "parity": "N"}]),
        ("write", [1, bytearray(b"xyz"), None]),
    ], start=1)],
    *[(Role.SERVER, Batch(i, ops)) for i, ops in enumerate([
        [("open", ["null"]), ("write", [Ref(0), b"a", None]), ("close", [Ref(0)])],
        [("devices", [])], [("read", [1, 1, 0]), ("read", [1, 1, 0])],
        [("info", ["uart0"]), ("info", ["spi0"]), ("info", ["gpiochip0"])],
        [("open", ["i2c1"]), ("transfer", [Ref(0), 80, [[b"\x10", False]], 1.0])],
    ], start=100)],
    *[(Role.CLIENT, Reply(i, v)) for i, v in enumerate([
        None, True, 0, -1, 2**40, 1.5, "text", b"", b"data", b"\xff" * 4096,
        [1, 2, 3], {"a": 1, "b": [None]}, [[b"\x19\x00"]], {"device": "uart0", "token": 3},
    ], start=200)],
    *[(Role.CLIENT, Error(i, e, m)) for i, (e, m) in enumerate([
        (13, "null: open: permission denied"), (2, "no device 'x'"), (110, "timed out"),
        (116, "fenced: uart0: leased by alice"), (71, "protocol error"),
    ], start=300)],
    (Role.CLIENT, BatchReply(400, [1, b"x", None], None)),
    (Role.CLIENT, BatchReply(401, [1], BatchError(1, 5, "io error"))),
    (Role.CLIENT, BatchReply(402, [], BatchError(0, 13, "denied"))),
    *[(Role.CLIENT, Event(t, h, p)) for t, h, p in [
        ("edge", 3, {"line": 1, "rising": True, "ns": 123}), ("data", 1, b"abc"),
        ("closed", 2, None), ("edge", 9, [1, 2]),
    ]],
]


def _frame(msg: Message) -> bytes:
    return b"".join(bytes(b) for b in Connection(Role.CLIENT).send(msg))


def _greeted(role: Role) -> Connection:
    c = Connection(role)
    peer = Role.CLIENT if role is Role.SERVER else Role.SERVER
    c.receive_data(_frame(Hello()) if peer is Role.CLIENT else
                   b"".join(bytes(b) for b in Connection(peer).send(Hello())))
    assert isinstance(c.next_event(), Hello)
    return c


def _outcome(role: Role, greeted: bool, data: bytes, eof: bool) -> list[Any]:
    """Feed ``data``; every message out must re-encode to itself (stable meaning)."""
    c = _greeted(role) if greeted else Connection(role)
    out: list[Any] = []
    try:
        c.receive_data(data)
        if eof:
            c.receive_data(b"")
        for _ in range(64):
            ev = c.next_event()
            if ev is NEED_DATA or ev is None:
                out.append(ev)
                break
            again = _greeted(role) if not isinstance(ev, Hello) else Connection(role)
            again.receive_data(_frame(ev))
            # Compared as bytes: NaN is a stable meaning too.
            assert _frame(again.next_event()) == _frame(ev), "meaning not stable"  # type: ignore[arg-type]
            out.append(ev)
    except ProtocolError as e:
        out.append(e)
    return out


def test_golden_frames_decode_to_themselves() -> None:
    assert len(GOLDEN) >= 50
    for role, msg in GOLDEN:
        greeted = not isinstance(msg, Hello)
        assert _outcome(role, greeted, _frame(msg), False)[0] == msg


def test_every_bit_flip_byte_flip_and_truncation_of_golden_frames() -> None:
    mutations = 0
    for role, msg in GOLDEN:
        raw = _frame(msg)
        greeted = not isinstance(msg, Hello)
        limit = min(len(raw), 300)  # bulk payload bytes beyond this are opaque data
        for i in range(limit):
            for bit in range(8):
                m = bytearray(raw)
                m[i] ^= 1 << bit
                _outcome(role, greeted, bytes(m), True)
                mutations += 1
            m = bytearray(raw)
            m[i] ^= 0xFF
            _outcome(role, greeted, bytes(m), True)
            mutations += 1
        for n in range(len(raw)):
            res = _outcome(role, greeted, raw[:n], True)
            assert res and isinstance(res[-1], ProtocolError) or res == [None]
            mutations += 1
    print(f"\ngolden mutations: {len(GOLDEN)} frames, {mutations} mutated inputs")
    assert mutations > 10_000


_roles = st.sampled_from([Role.SERVER, Role.CLIENT])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data(), _roles, st.booleans())
def test_fuzz_hypothesis_mutated_golden_frames(data: st.DataObject, role: Role,
                                              eof: bool) -> None:
    i = data.draw(st.integers(0, len(GOLDEN) - 1))
    grole, msg = GOLDEN[i]
    raw = bytearray(_frame(msg))
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["set", "insert", "delete", "splice"]))
        pos = data.draw(st.integers(0, len(raw)))
        if kind == "set" and pos < len(raw):
            raw[pos] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            raw[pos:pos] = data.draw(st.binary(max_size=16))
        elif kind == "delete":
            del raw[pos:pos + data.draw(st.integers(1, 16))]
        else:
            raw[pos:] = _frame(GOLDEN[data.draw(st.integers(0, len(GOLDEN) - 1))][1])
    _outcome(role, not isinstance(msg, Hello), bytes(raw), eof)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=512), _roles, st.booleans())
def test_fuzz_hypothesis_raw_bytes(data: bytes, role: Role, greeted: bool) -> None:
    _outcome(role, greeted, data, True)
