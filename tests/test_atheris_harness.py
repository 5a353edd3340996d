"""The atheris harnesses (fuzz/) run without atheris: each TestOneInput over a few hundred
generated inputs (valid frames, mutated frames, raw bytes) in a plain loop, so `make test`
proves the harnesses and their oracles work; `make fuzz-atheris` runs them under atheris."""
from __future__ import annotations

import random

from bridge.protocol import Batch, Call, Message, Ref, encode
from fuzz import atheris_decoder, atheris_session

N = 300

_OPS: list[tuple[str, list[object]]] = [
    ("open", ["null"]), ("open", ["zero", "r"]), ("open", ["devnull"]), ("open", ["i2c1"]),
    ("open", ["spi0"]), ("open", ["nope"]), ("open", ["zero", "w"]), ("devices", []),
    ("info", ["spi0"]), ("read", [1, 4, 0]), ("read", [2, 16, None]), ("write", [1, b"ab", 1]),
    ("write", [3, b"x" * 5000, None]), ("ioctl", [1, "FIONREAD", None]),
    ("ioctl", [3, "TCGETS", b"\x00" * 36]), ("ioctl", [3, "TCGETS", b"\x00"]),
    ("poll", [1, 0]), ("close", [1]), ("close", [99]), ("close", ["x"]),
    ("transfer", [4, 0x48, [[b"\x00", False], [2, True]], None]),
    ("transfer", [5, b"\x9f\x00\x00\x00", None]), ("lease", ["null", 5.0, None]),
    ("leases", []), ("release", ["null", 1]), ("read", [Ref(0), 1, 0]),
]


def _frames(rng: random.Random) -> bytes:
    msgs: list[Message] = []
    for i in range(rng.randrange(1, 8)):
        if rng.random() < 0.3:
            ops = [(op, list(a)) for op, a in rng.sample(_OPS, rng.randrange(1, 5))]
            msgs.append(Batch(i, ops))
        else:
            op, args = rng.choice(_OPS)
            msgs.append(Call(i, op, [a for a in args if not isinstance(a, Ref)]))
    return b"".join(bytes(b) for m in msgs for b in encode(m))


def _mutate(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    for _ in range(rng.randrange(1, 4)):
        if not b:
            break
        i = rng.randrange(len(b))
        kind = rng.randrange(3)
        if kind == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            del b[i:i + rng.randrange(1, 9)]
        else:
            b[i:i] = rng.randbytes(rng.randrange(1, 9))
    return bytes(b)


def _inputs(seed: int, seeds: list[bytes], prefix: bool) -> list[bytes]:
    rng = random.Random(seed)
    out = list(seeds)
    while len(out) < N:
        raw = _frames(rng)
        head = bytes([rng.randrange(256), rng.randrange(256)]) if prefix else b""
        r = rng.random()
        out.append(head + (raw if r < 0.4 else _mutate(rng, raw) if r < 0.85
                           else rng.randbytes(rng.randrange(64))))
    return out


def test_decoder_harness_runs_without_atheris() -> None:
    atheris_decoder.STATS.clear()
    for data in _inputs(1, atheris_decoder.seeds(), prefix=True):
        atheris_decoder.TestOneInput(data)
    s = atheris_decoder.STATS
    print("\ndecoder harness:", dict(s))
    assert s["Call"] and s["Batch"] and s["ProtocolError"] and s["closed"]


def test_session_harness_runs_without_atheris() -> None:
    atheris_session.STATS.clear()
    for data in _inputs(2, atheris_session.seeds(), prefix=False):
        atheris_session.TestOneInput(data)
    s = atheris_session.STATS
    print("\nsession harness:", dict(s))
    assert s["Call -> ok"] and s["Batch -> ok"] and s["ProtocolError"]
    assert s["Call -> EBADF"] and s["Call -> ENOENT"] and s["Call -> EACCES"]
