# Atheris harness for the sans-I/O decoder (bridge.protocol.Connection): any bytes, fed in
# chunks of a size the input chooses, to either role, before or after the hello, under a
# frame limit the input chooses. Owns only the oracle: the decoder raises ProtocolError and
# nothing else, and every message it yields encodes again. Knows nothing of sockets.
#
#     .venv/bin/python fuzz/atheris_decoder.py fuzz/corpus/decoder -max_total_time=60
from __future__ import annotations

from collections import Counter

from bridge.protocol import NEED_DATA, Connection, Hello, ProtocolError, Role, encode

#: What the inputs reached (for the smoke test and for a human watching a run).
STATS: Counter[str] = Counter()

_LIMITS = (64, 4096, 1 << 20)
_HELLO_FROM = {r: b"".join(bytes(b) for b in encode(Hello())) for r in Role}


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris looks for
    """Decode ``data``; anything other than ProtocolError escaping is a finding."""
    if len(data) < 2:
        return
    mode, step, body = data[0], 1 + data[1] % 97, data[2:]
    role = Role.SERVER if mode & 1 else Role.CLIENT
    c = Connection(role, max_frame=_LIMITS[(mode >> 2) % 3])
    try:
        if mode & 2:  # already greeted: the input is what follows the hello
            c.receive_data(_HELLO_FROM[role])
            assert isinstance(c.next_event(), Hello)
        pieces = [body] if mode & 0x80 else [body[i:i + step] for i in range(0, len(body), step)]
        for piece in [*pieces, b""]:
            c.receive_data(piece)
            while True:
                ev = c.next_event()
                if ev is NEED_DATA or ev is None:
                    STATS["need-data" if ev is NEED_DATA else "closed"] += 1
                    break
                STATS[type(ev).__name__] += 1
                encode(ev)  # whatever was decoded can be sent again
            if ev is None:
                break
    except ProtocolError:
        STATS["ProtocolError"] += 1


def seeds() -> list[bytes]:
    """Valid starting inputs: each message type behind a mode byte that fits it."""
    from bridge.protocol import Batch, BatchReply, Call, Error, Event, Ref, Reply

    def frame(m: object) -> bytes:
        return b"".join(bytes(b) for b in encode(m))  # type: ignore[arg-type]
    server = [Call(1, "open", ["null"]), Call(2, "write", [1, b"x" * 5000, None]),
              Batch(3, [("open", ["zero"]), ("read", [Ref(0), 4, 0])])]
    client = [Reply(1, 7), Reply(2, b"y" * 5000), Error(3, 13, "denied"),
              BatchReply(4, [1], None), Event("edge", 1, {"line": 1})]
    return ([bytes([0x03 | 0x80, 0]) + frame(m) for m in server]
            + [bytes([0x02 | 0x80, 0]) + frame(m) for m in client]
            + [bytes([0x80 | 0x01, 0]) + frame(Hello())])


if __name__ == "__main__":
    from fuzz import run_atheris

    run_atheris(seeds(), TestOneInput)
