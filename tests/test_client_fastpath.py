# The client's call path against a scripted host on a socketpair (no server process): the
# common case (this thread alone reads, the reply is one whole frame) and every way out of
# it — a reply split across reads, frames for others before it, an error, a malformed frame,
# a send that does not go through at once, a sender or reader already busy — each answered
# correctly, with the connection still usable afterwards where it should be. The same
# scripts run against the path that registers a Pending before sending (TLS, Windows).
from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bridge.client import Client
from bridge.protocol import (
    HEADER,
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
    Reply,
    Role,
)
from bridge.url import parse_url

# What the host sends for one call: the chunks to write, each written after a pause so that
# it arrives in its own recv.
Script = Callable[[Call, Connection], list[bytes]]


def _frames(conn: Connection, *msgs: Message) -> bytes:
    return b"".join(bytes(b) for m in msgs for b in conn.send(m))


def _echo(call: Call, conn: Connection) -> list[bytes]:
    """The default script: the call's arguments back, as one whole frame."""
    return [_frames(conn, Reply(call.id, list(call.args)))]


class ScriptedHost:
    """A host thread on one end of a socketpair that answers each call with a script."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.script: Script = _echo
        self.calls: list[Call] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = Connection(Role.SERVER)
        while True:
            data = self.sock.recv(1 << 16)
            for msg in conn.receive(data):
                if isinstance(msg, Hello):
                    self.sock.sendall(_frames(conn, Hello(info={"devices": []})))
                elif isinstance(msg, Batch):  # every op's arguments back, up to a "fail"
                    ops = [op for op, _ in msg.ops]
                    stop = ops.index("fail") if "fail" in ops else len(ops)
                    err = BatchError(stop, errno.EIO, "failed") if stop < len(ops) else None
                    self.sock.sendall(_frames(conn, BatchReply(
                        msg.id, [list(a) for _, a in msg.ops[:stop]], err)))
                elif isinstance(msg, Call):
                    self.calls.append(msg)
                    for i, chunk in enumerate(self.script(msg, conn)):
                        if i:
                            time.sleep(0.05)
                        self.sock.sendall(chunk)
            if not data:
                return


class PartialSocket(socket.socket):
    """A socket whose first sends without blocking go only partly (``partial``) or not at
    all (BlockingIOError), as when the kernel's send buffer is full."""

    def __init__(self, fileno: int, partial: list[int | None]) -> None:
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fileno)
        self.partial = partial

    def send(self, data: Any, flags: int = 0) -> int:
        if flags and self.partial:
            n = self.partial.pop(0)
            if n is None:
                raise BlockingIOError(errno.EAGAIN, "would block")
            return super().send(bytes(data)[:n], flags)
        return super().send(data, flags)


def _client(sock: socket.socket) -> Client:
    return Client(parse_url("hwbridge://scripted:1"), sock, 1 << 20)


@pytest.fixture(params=["reader-sends", "pending-first"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[Client, ScriptedHost]]:
    """A client and its scripted host; each test runs with the fast path, and with the
    path where no send can be tried without blocking (TLS, Windows) for comparison."""
    a, b = socket.socketpair()
    host = ScriptedHost(b)
    client = _client(a)
    assert client._dontwait  # a plain socket: the fast path is on
    if request.param == "pending-first":
        client._dontwait = 0
    try:
        yield client, host
    finally:
        client.close()
        host.thread.join(5)
        b.close()


def test_the_common_call_needs_no_pending(pair: tuple[Client, ScriptedHost]) -> None:
    client, _ = pair
    for i in range(50):
        assert client.call("read", [1, i, None]) == [1, i, None]
        assert client._pending == {}
    assert client.call("ioctl", [1, "X", 3], lambda r: ("seen", r)) == ("seen", [1, "X", 3])


def test_a_reply_with_a_data_section(pair: tuple[Client, ScriptedHost]) -> None:
    client, host = pair
    data = bytes(range(256)) * 40  # travels in the frame's data section
    host.script = lambda call, conn: [_frames(conn, Reply(call.id, data))]
    assert client.call("read", [1, len(data), None]) == data
    assert client._pending == {}


def test_a_reply_split_across_reads(pair: tuple[Client, ScriptedHost]) -> None:
    client, host = pair

    def split(call: Call, conn: Connection) -> list[bytes]:
        wire = _frames(conn, Reply(call.id, b"split"))
        return [wire[:3], wire[3:11], wire[11:]]

    host.script = split
    assert client.call("read", [1, 5, None]) == b"split"
    host.script = _echo
    assert client.call("read", [1, 6, None]) == [1, 6, None]  # and the fast path again
    assert client._pending == {}


def test_frames_before_the_reply(pair: tuple[Client, ScriptedHost]) -> None:
    """An event and a late reply to an abandoned call, then the reply with the next frame in
    the same read: the right result each time."""
    client, host = pair

    def noisy(call: Call, conn: Connection) -> list[bytes]:
        return [_frames(conn, Event("rx", 1, b"e")),
                _frames(conn, Reply(999_999, "late")),
                _frames(conn, Reply(call.id, "mine"), Event("rx", 1, b"f"))]

    host.script = noisy
    assert client.call("read", [1, 5, None]) == "mine"
    host.script = _echo
    assert client.call("read", [1, 6, None]) == [1, 6, None]


def test_a_reply_for_another_request_reaches_its_pending(
        pair: tuple[Client, ScriptedHost]) -> None:
    client, host = pair
    answers: list[Call] = []

    def later(call: Call, conn: Connection) -> list[bytes]:
        # the submitted request is answered together with the next call, before it
        answers.append(call)
        if len(answers) == 1:
            return []
        return [_frames(conn, Reply(answers[0].id, "submitted")),
                _frames(conn, Reply(call.id, "called"))]

    host.script = later
    p = client.submit("read", [1, 1, None])
    assert client.call("read", [1, 2, None]) == "called"
    assert p.done and client.result(p) == "submitted"


def test_an_error_reply_raises_its_oserror(pair: tuple[Client, ScriptedHost]) -> None:
    client, host = pair
    host.script = lambda call, conn: [_frames(conn, Error(call.id, errno.EACCES, "denied"))]
    with pytest.raises(PermissionError, match="denied"):
        client.call("read", [1, 5, None])
    host.script = _echo
    assert client.call("read", [1, 6, None]) == [1, 6, None]


def test_a_malformed_reply_breaks_the_connection(pair: tuple[Client, ScriptedHost]) -> None:
    client, host = pair
    host.script = lambda call, conn: [HEADER.pack(3, 0) + b"\xc1\xc1\xc1"]
    with pytest.raises(ProtocolError, match="malformed"):
        client.call("read", [1, 5, None])
    with pytest.raises(ConnectionError, match="broken"):
        client.call("read", [1, 6, None])


def test_the_host_closing_during_a_call(pair: tuple[Client, ScriptedHost]) -> None:
    client, host = pair

    def hang_up(call: Call, conn: Connection) -> list[bytes]:
        host.sock.shutdown(socket.SHUT_WR)
        return []

    host.script = hang_up
    with pytest.raises(ConnectionResetError, match="closed the connection"):
        client.call("read", [1, 5, None])


@pytest.mark.parametrize("partial", [[3], [None], [0], [None, None]])
def test_a_send_that_does_not_go_through_at_once(partial: list[int | None]) -> None:
    a, b = socket.socketpair()
    host = ScriptedHost(b)
    sock = PartialSocket(a.detach(), [])
    client = _client(sock)
    try:
        sock.partial = list(partial)
        assert client.call("read", [1, 5, None]) == [1, 5, None]
        assert host.calls[-1] == Call(host.calls[-1].id, "read", [1, 5, None])
        assert client.call("read", [1, 6, None]) == [1, 6, None]
        assert client._pending == {}
    finally:
        client.close()
        host.thread.join(5)
        b.close()


def test_a_busy_sender_is_not_awaited_holding_the_read_side(
        pair: tuple[Client, ScriptedHost]) -> None:
    """While another thread sends, a call must not hold the read side waiting for it: a
    host blocked on our reading would deadlock against that sender."""
    client, _ = pair
    got: list[Any] = []
    with client._send_lock:
        t = threading.Thread(target=lambda: got.append(client.call("read", [1, 5, None])))
        t.start()
        time.sleep(0.2)
        assert t.is_alive() and not client._recv_lock.locked()
    t.join(5)
    assert got == [[1, 5, None]]


def test_a_call_while_another_thread_reads(pair: tuple[Client, ScriptedHost]) -> None:
    """The reading thread delivers the reply of a call made meanwhile by another thread."""
    client, host = pair
    slow = threading.Event()

    def script(call: Call, conn: Connection) -> list[bytes]:
        if call.op == "slow":
            slow.wait(5)
        return _echo(call, conn)

    host.script = script
    # the host answers in order: "slow" holds back the quick call's reply until released
    out: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: out.update(slow=client.call("slow", [1])))
    reader.start()
    time.sleep(0.1)
    quick = threading.Thread(target=lambda: out.update(quick=client.call("read", [2])))
    quick.start()
    time.sleep(0.1)
    slow.set()
    reader.join(5)
    quick.join(5)
    assert out == {"slow": [1], "quick": [2]}


def test_the_fast_flag_follows_what_it_stands_for(pair: tuple[Client, ScriptedHost]) -> None:
    """call() tests one flag for the batch, exact receives, broken and closed conditions:
    it must change with each of them, and each call must still be answered its own way."""
    client, host = pair

    def check() -> None:
        assert client._fast == client._fast_ok()

    check()
    client.exact_receives(True)
    check()
    assert not client._fast
    assert client.call("read", [1, 2, None]) == [1, 2, None]  # read by _pump, exactly
    client.exact_receives(False)
    check()
    assert client.call("read", [1, 3, None]) == [1, 3, None]
    assert client._pending == {}

    with client.batch():
        check()
        assert not client._fast  # while a batch is open, calls look for theirs
        d = client.call("read", [1, 4, None])  # a Deferred: nothing sent yet
        assert not host.calls or host.calls[-1].args != [1, 4, None]
    check()
    assert client._fast or not client._send_flags  # closed: the fast path again
    assert d.result() == [1, 4, None]
    # a Deferred argument is sent as its result (the packer resolves it), on the fast path
    assert client.call("read", [d, 5]) == [[1, 4, None], 5]
    assert client.call("read", [1, [d]]) == [1, [[1, 4, None]]]  # nested too
    assert client._pending == {}
    with pytest.raises(OSError, match="batch operation 0"), client.batch():
        failed = client.call("fail", [])
        late = client.call("read", [1, 9, None])
    with pytest.raises(OSError):
        failed.result()
    check()
    assert client._batches_open == 0  # a batch that raised is closed too
    with pytest.raises(RuntimeError, match="not executed"):
        client.call("read", [late, 5])  # the result of an op that never ran: nothing sent
    assert client.call("read", [1, 10, None]) == [1, 10, None]

    host.script = lambda call, conn: [HEADER.pack(3, 0) + b"\xc1\xc1\xc1"]
    with pytest.raises(ProtocolError, match="malformed"):
        client.call("read", [1, 6, None])
    check()
    with pytest.raises(ConnectionError, match="broken"):
        client.call("read", [1, 7, None])

    client.close()
    check()
    with pytest.raises(ConnectionAbortedError, match="closed"):
        client.call("read", [1, 8, None])


def test_a_call_after_the_connection_broke_unbatched(pair: tuple[Client, ScriptedHost]) -> None:
    """The flag, not a per-call check, stops the fast path once the host hung up."""
    client, host = pair
    assert client.call("read", [1, 1, None]) == [1, 1, None]

    def hang_up(call: Call, conn: Connection) -> list[bytes]:
        host.sock.shutdown(socket.SHUT_WR)
        return []

    host.script = hang_up
    with pytest.raises(ConnectionResetError):
        client.call("read", [1, 2, None])
    assert not client._fast
    with pytest.raises(ConnectionError, match="broken"):
        client.call("read", [1, 3, None])
