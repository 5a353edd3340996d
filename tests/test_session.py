# The per-connection Session driven directly, with no sockets (the transport only hands it
# messages and a send function): batch references, errors per operation, handle lifetime,
# and a blocking read on a real pty answered from a thread.
from __future__ import annotations

import errno
import os
import threading
import tty
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.host import Host
from bridge.manifest import parse
from bridge.protocol import Batch, BatchReply, Call, Error, Message, Ref, Reply
from bridge.session import Session


class Wire:
    """Collects what a Session sends; waits (bounded) for replies sent from threads."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self._cv = threading.Condition()

    def __call__(self, msg: Message) -> None:
        with self._cv:
            self.sent.append(msg)
            self._cv.notify_all()

    def reply(self, rid: int, timeout: float = 10) -> Message:
        with self._cv:
            ok = self._cv.wait_for(lambda: any(getattr(m, "id", None) == rid
                                               for m in self.sent), timeout)
            assert ok, f"no reply to request {rid}"
            return next(m for m in self.sent if getattr(m, "id", None) == rid)


@pytest.fixture
def pty() -> Iterator[tuple[int, int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, slave, os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.fixture
def session(pty: tuple[int, int, str]) -> Iterator[tuple[Session, Wire]]:
    manifest = parse({"devices": {
        "zero": {"kind": "node", "sim": "zero"},
        "null": {"kind": "node", "sim": "null", "access": "r"},
        "pty": {"kind": "node", "path": pty[2]},
    }}, source="<test>")
    host = Host(manifest)
    host.prepare()
    wire = Wire()
    s = Session(host, wire, "test")
    yield s, wire
    s.close()
    host.close()


def call(s: Session, w: Wire, rid: int, op: str, *args: Any) -> Message:
    s.handle(Call(rid, op, list(args)))
    return w.reply(rid)


def test_open_read_close(session: tuple[Session, Wire]) -> None:
    s, w = session
    opened = call(s, w, 1, "open", "zero")
    assert isinstance(opened, Reply) and type(opened.result) is int
    assert call(s, w, 2, "read", opened.result, 4, None) == Reply(2, bytes(4))
    assert call(s, w, 3, "close", opened.result) == Reply(3, None)
    again = call(s, w, 4, "close", opened.result)
    assert isinstance(again, Error) and again.errno == errno.EBADF
    assert s.handles == {}


@pytest.mark.parametrize(("ops", "index", "code"), [
    ([("read", [Ref(0), 1, None])], 0, errno.EINVAL),                  # refers to itself
    ([("open", ["zero"]), ("read", [Ref(1), 1, None])], 1, errno.EINVAL),  # to a later op
    ([("open", ["zero"]), ("read", [Ref(7), 1, None])], 1, errno.EINVAL),  # out of range
    ([("open", ["zero"]), ("open", ["nope"]), ("devices", [])], 1, errno.ENOENT),
    ([("open", ["null"]), ("write", [Ref(0), b"x", None])], 1, errno.EACCES),
])
def test_batch_errors(session: tuple[Session, Wire], ops: list[tuple[str, list[Any]]],
                      index: int, code: int) -> None:
    s, w = session
    s.handle(Batch(9, ops))
    r = w.reply(9)
    assert isinstance(r, BatchReply) and r.error is not None
    assert (r.error.index, r.error.errno) == (index, code)
    assert len(r.results) == index  # the operations before the failing one ran


def test_batch_refs_chain(session: tuple[Session, Wire]) -> None:
    s, w = session
    s.handle(Batch(1, [("open", ["zero"]), ("read", [Ref(0), 3, None]),
                       ("open", ["pty"]), ("write", [Ref(2), Ref(1), None]),
                       ("close", [Ref(0)]), ("close", [Ref(2)])]))
    r = w.reply(1)
    assert isinstance(r, BatchReply) and r.error is None
    assert r.results[1] == bytes(3) and r.results[3] == 3
    assert s.handles == {}


def test_blocking_read_is_answered_from_a_thread(session: tuple[Session, Wire],
                                                 pty: tuple[int, int, str]) -> None:
    s, w = session
    h = call(s, w, 1, "open", "pty")
    assert isinstance(h, Reply)
    s.handle(Call(2, "read", [h.result, 5, 30.0]))  # returns at once: the read waits aside
    assert call(s, w, 3, "devices") is not None  # the session still answers meanwhile
    assert not any(getattr(m, "id", None) == 2 for m in w.sent)
    os.write(pty[0], b"hello")
    assert w.reply(2) == Reply(2, b"hello")


def test_closing_the_session_ends_waits_and_closes_handles(
        session: tuple[Session, Wire]) -> None:
    s, w = session
    h = call(s, w, 1, "open", "pty")
    z = call(s, w, 2, "open", "zero")
    assert isinstance(h, Reply) and isinstance(z, Reply)
    handles = [e.handle for e in s.handles.values()]
    s.handle(Call(3, "read", [h.result, 5, 30.0]))
    s.close()
    assert all(x.closed for x in handles)
    waits = [t for t in threading.enumerate() if t.name.startswith("hwbridge-wait")]
    for t in waits:
        t.join(5)
    assert not any(t.is_alive() for t in waits)


def test_read_timeout_zero_polls(session: tuple[Session, Wire]) -> None:
    s, w = session
    h = call(s, w, 1, "open", "pty")
    assert isinstance(h, Reply)
    r = call(s, w, 2, "read", h.result, 5, 0)
    assert isinstance(r, Error) and r.errno == errno.ETIMEDOUT
    assert "pty" in r.message and "read" in r.message
