# Atheris harness for a whole session: frames decoded from the fuzz input drive a
# bridge.session.Session over an in-process Host serving simulated devices (null, zero, an
# I2C bus, an SPI flash) and a real /dev/null. Owns only the oracle: Session.handle never
# raises; every call and batch gets exactly one reply, right away (nothing here blocks) and
# encodable; no operation ends in an "internal error"; closing the session empties its
# handle table and closes every handle. Knows nothing of sockets.
#
#     .venv/bin/python fuzz/atheris_session.py fuzz/corpus/session -max_total_time=60
from __future__ import annotations

import errno
import logging
from collections import Counter
from typing import Any

from bridge.host import Host
from bridge.manifest import parse
from bridge.protocol import (
    NEED_DATA,
    Batch,
    BatchReply,
    Call,
    Connection,
    Error,
    Hello,
    Message,
    ProtocolError,
    Reply,
    Role,
    encode,
)
from bridge.session import Session

#: What the inputs reached (for the smoke test and for a human watching a run).
STATS: Counter[str] = Counter()

MANIFEST = {"devices": {
    "null": {"kind": "node", "sim": "null", "ioctls": ["FIONREAD"]},
    "zero": {"kind": "node", "sim": "zero", "access": "r"},
    "devnull": {"kind": "node", "path": "/dev/null", "ioctls": ["FIONREAD", "TCGETS"]},
    "i2c1": {"kind": "i2c", "sim": "i2c-bus"},
    "spi0": {"kind": "spi", "sim": "spi-flash"},
}}
_HELLO = b"".join(bytes(b) for b in encode(Hello()))
_host: Host | None = None


class _Internal(logging.Handler):
    """Records that an operation ended in the session's 'internal error' path."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            raise AssertionError(f"internal error in the session: {record.getMessage()}")


def host() -> Host:
    """The Host every input shares (as a server process's connections do)."""
    global _host
    if _host is None:
        _host = Host(parse(MANIFEST, source="<fuzz>"))
        _host.prepare()
        log = logging.getLogger("hwbridge.session")
        log.addHandler(_Internal())
        log.propagate = False
    return _host


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris looks for
    """Run the frames in ``data`` through a fresh Session; break the oracle and it raises."""
    sent: list[Message] = []
    wire = Connection(Role.SERVER)  # the encoder the transport would use

    def send(msg: Message) -> None:
        wire.send(msg)  # raises if a reply could not be put on the wire
        sent.append(msg)

    session = Session(host(), send, "fuzz")
    conn = Connection(Role.SERVER, max_frame=1 << 20)
    conn.receive_data(_HELLO)
    assert isinstance(conn.next_event(), Hello)
    wire.receive_data(_HELLO)
    wire.next_event()
    opened: list[Any] = []
    try:
        conn.receive_data(data)
        conn.receive_data(b"")
        while True:
            msg = conn.next_event()
            if msg is NEED_DATA or msg is None:
                break
            if not isinstance(msg, Call | Batch):
                continue
            if isinstance(msg, Call) and msg.op == "lease" and len(msg.args) > 2:
                msg.args = [*msg.args[:2], 0]  # a lease never waits: no thread outlives us
            before = len(sent)
            session.handle(msg)
            replies = [m for m in sent[before:] if getattr(m, "id", None) == msg.id]
            assert len(replies) == 1, f"{msg!r} got {len(replies)} replies: {sent[before:]!r}"
            r = replies[0]
            assert isinstance(r, BatchReply if isinstance(msg, Batch) else Reply | Error), r
            STATS[f"{type(msg).__name__} -> {_outcome(r)}"] += 1
            opened.extend(e.handle for e in session.handles.values())
    except ProtocolError:
        STATS["ProtocolError"] += 1
    finally:
        session.close()
    assert session.handles == {}
    assert all(h.closed for h in opened), "a handle outlived its session"


def _outcome(r: Message) -> str:
    if isinstance(r, Error):
        assert r.errno != errno.EIO or "internal error" not in r.message, r
        return errno.errorcode.get(r.errno, str(r.errno))
    if isinstance(r, BatchReply) and r.error is not None:
        return "batch " + errno.errorcode.get(r.error.errno, str(r.error.errno))
    return "ok"


def seeds() -> list[bytes]:
    """Valid starting inputs: sessions that open, use and close each device."""
    from bridge.protocol import Ref

    def frames(*msgs: Message) -> bytes:
        return b"".join(bytes(b) for m in msgs for b in encode(m))
    return [
        frames(Call(1, "open", ["null"]), Call(2, "write", [1, b"abc", None]),
               Call(3, "read", [1, 4, 0]), Call(4, "ioctl", [1, "FIONREAD", None]),
               Call(5, "close", [1]), Call(6, "close", [1])),
        frames(Batch(1, [("open", ["zero"]), ("read", [Ref(0), 8, None]),
                         ("close", [Ref(0)])])),
        frames(Call(1, "open", ["i2c1"]), Call(2, "transfer", [1, 0x48, [[b"\x00", False],
                                                                       [2, True]]])),
        frames(Call(1, "open", ["spi0"]), Call(2, "transfer", [1, b"\x9f\x00\x00\x00"])),
        frames(Call(1, "open", ["devnull", "w"]), Call(2, "ioctl", [1, "TCGETS", None]),
               Call(3, "devices", []), Call(4, "info", ["i2c1"]),
               Call(5, "lease", ["zero", 5.0, 0]), Call(6, "leases", [])),
    ]


if __name__ == "__main__":
    from fuzz import run_atheris

    run_atheris(seeds(), TestOneInput)
