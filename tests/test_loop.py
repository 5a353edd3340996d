"""The host's event loop (bridge/loop.py): calls that cannot wait run on the loop, the rest
on the connection's own lane, in order; a slow operation stalls no other connection; the
selectors fallback (hosts without epoll) serves the same; large replies queue and drain."""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from bridge.sim.backend import register
from bridge.sim.nodes import ZeroNode

import bridge
from bridge.host import Host
from bridge.loopconn import WAIT_OUT
from bridge.manifest import parse
from bridge.protocol import NEED_DATA, Call, Connection, Error, Event, Hello, Reply, Role
from bridge.server import Server
from bridge.session import Session

from .conftest import NoHostThread, ServerProc, start_server

MANIFEST = """
[devices.zero]
kind = "node"
path = "/dev/zero"
access = "r"

[devices.tty]
kind = "node"
path = "{pty}"
ioctls = ["TIOCGWINSZ", "TCGETS", "TCSETS"]

[devices.slow]
kind = "node"
sim = "null"
faults = [{{op = "write", latency = 5.0}}]

[devices.null]
kind = "node"
sim = "null"
"""


@pytest.fixture(scope="module", params=["epoll", "selectors"])
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    master, slave = os.openpty()
    env = {"HWBRIDGE_POLLER": request.param}
    try:
        with start_server(MANIFEST.format(pty=os.ttyname(slave)), env=env,
                          workdir=tmp_path_factory.mktemp("loop")) as s:
            yield s
    finally:
        os.close(master)
        os.close(slave)


def _raw(server: ServerProc) -> tuple[socket.socket, Connection]:
    host, port = server.url.rsplit("/", 1)[-1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=20)
    conn = Connection(Role.CLIENT)
    sock.sendall(b"".join(bytes(b) for b in conn.send(Hello())))
    assert isinstance(_next(sock, conn), Hello)
    return sock, conn


def _next(sock: socket.socket, conn: Connection) -> object:
    while True:
        ev = conn.next_event()
        if ev is not NEED_DATA:
            assert ev is not None, "the host closed the connection"
            return ev
        conn.receive_data(sock.recv(1 << 20))


def _frame(conn: Connection, msg: Call | Hello) -> bytes:
    return b"".join(bytes(b) for b in conn.send(msg))


def test_the_posix_paths_work_on_either_poller(server: ServerProc) -> None:
    with bridge.connect(server.url) as host:
        zero, tty = host.open("zero"), host.open("tty")
        assert zero.read(16) == bytes(16)
        assert len(zero.read(4 << 20)) == 4 << 20  # larger than a socket buffer: queued
        assert len(tty.ioctl("TIOCGWINSZ")) == 8  # inline (ioctl.NO_WAIT)
        attrs = tty.ioctl("TCGETS")  # inline
        assert len(attrs) == 36
        assert tty.ioctl("TCSETS", attrs) == 0  # on the lane (a USB adapter may sleep)
        assert tty.ioctl("TCGETS") == attrs
        with host.batch():
            a = zero.read(3)
            b = zero.read(5)
        assert (a.result(), b.result()) == (bytes(3), bytes(5))
        zero.close()
        with pytest.raises(OSError) as e:
            zero.read(1)
        assert e.value.errno == 9  # EBADF


@contextlib.contextmanager
def _in_process(devices: dict[str, Any], device: str, server: dict[str, Any] | None = None
                ) -> Iterator[tuple[Server, int, list[Session], socket.socket, Connection, int]]:
    """A host in this process (so tests can look inside it) and a raw client that said
    hello and opened ``device``: (server, port, sessions, socket, connection, handle)."""
    host = Host(parse({"devices": devices, "server": server or {}}))
    host.prepare()
    server = Server(host)
    _, port = server.listen_tcp("127.0.0.1", 0)
    sessions: list[Session] = []
    server.on_session = sessions.append
    server.start()
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    conn = Connection(Role.CLIENT)
    try:
        sock.sendall(_frame(conn, Hello()) + _frame(conn, Call(1, "open", [device])))
        assert isinstance(_next(sock, conn), Hello)
        opened = _next(sock, conn)
        assert isinstance(opened, Reply)
        yield server, port, sessions, sock, conn, opened.result
    finally:
        sock.close()
        server.shutdown()


class _Sluggish(ZeroNode):
    """/dev/zero whose ioctls take 20 ms and are not inline: they run on the lane."""

    INLINE_ALL = False

    def do_ioctl(self, request: int, arg: int | bytearray) -> int:
        time.sleep(0.02)
        return 0


def test_pipelined_calls_answer_in_order_across_loop_and_lane() -> None:
    """Once a call went to the lane, later calls of that connection queue behind it."""
    register("sluggish-zero", _Sluggish)
    devices = {"sluggish": {"kind": "node", "sim": "sluggish-zero", "ioctls": ["TIOCEXCL"]}}
    with _in_process(devices, "sluggish") as (_, _, _, sock, conn, h):
        # Every 7th call is a 20 ms ioctl (the lane); the reads between them the loop runs
        # at once, unless calls wait on the lane before them: then they queue behind.
        calls = [Call(i, "ioctl", [h, "TIOCEXCL", None]) if i % 7 == 0 else
                 Call(i, "read", [h, 8, None]) for i in range(2, 202)]
        sock.sendall(b"".join(_frame(conn, c) for c in calls))
        got = []
        while len(got) < len(calls):
            ev = _next(sock, conn)
            assert isinstance(ev, Reply), ev
            got.append(ev.id)
        assert got == [c.id for c in calls]


class _Chatty(ZeroNode):
    """/dev/zero whose write pushes two events before it returns (the second from a large
    buffer it then overwrites) and has a thread push a third; whose ioctl pushes one and
    then fails; whose read pushes one and returns too much to send."""

    def write_nowait(self, data: bytes) -> int | None:
        buf = bytearray(b"a" * 8192)  # a data section of its own on the wire
        self.emit("chat", "first")
        self.emit("chat", buf)
        buf[:] = b"b" * 8192  # reused at once: what was pushed must not change
        # a device thread pushing meanwhile (a serial port's input) comes after, not before
        t = threading.Thread(target=self.emit, args=("chat", "from a device thread"))
        t.start()
        t.join()
        return len(data)

    def do_ioctl(self, request: int, arg: int | bytearray) -> int:
        self.emit("chat", "before the error")
        raise OSError(5, "Input/output error")

    def read_nowait(self, n: int) -> bytes | None:
        self.emit("chat", "before a reply too large")
        return bytes(20000)  # whatever was asked: over the host's 16 KiB frame limit


def test_events_an_inline_call_pushes_leave_with_its_reply() -> None:
    """The loop holds what a call it runs pushes to the same client and sends it with the
    reply, in one send: the events first, in order, as they were when pushed; a small
    event and the call's error arrive in one receive; a reply that cannot be sent (over
    the frame limit) loses none of the events before its error."""
    register("chatty-zero", _Chatty)
    devices = {"chatty": {"kind": "node", "sim": "chatty-zero", "ioctls": ["TIOCEXCL"]}}
    with _in_process(devices, "chatty", {"max_frame": 16384}) as (_, _, _, sock, conn, h):
        sock.sendall(_frame(conn, Call(2, "write", [h, b"xy", None])))
        got = [_next(sock, conn) for _ in range(4)]
        assert got == [Event("chat", h, "first"), Event("chat", h, b"a" * 8192),
                       Event("chat", h, "from a device thread"), Reply(2, 2)]

        sock.sendall(_frame(conn, Call(3, "ioctl", [h, "TIOCEXCL", None])))
        conn.receive_data(sock.recv(1 << 20))  # one receive: both frames, one small send
        assert conn.next_event() == Event("chat", h, "before the error")
        err = conn.next_event()
        assert isinstance(err, Error) and (err.id, err.errno) == (3, 5)

        sock.sendall(_frame(conn, Call(4, "read", [h, 8, None])))  # the reply cannot go
        assert _next(sock, conn) == Event("chat", h, "before a reply too large")
        err = _next(sock, conn)
        assert isinstance(err, Error) and (err.id, err.errno) == (4, 22), err


def test_a_bug_serving_one_client_ends_that_client_only() -> None:
    """An exception nothing below the loop caught (a bug on some path) ends the connection
    being served, and the loop goes on serving everyone else."""
    devices = {"zero": {"kind": "node", "sim": "zero"}}
    with _in_process(devices, "zero") as (server, port, sessions, sock, conn, h):
        loop = server._loop
        assert loop is not None
        end = time.monotonic() + 10
        while any(c.lane_busy for c in list(loop.conns.values())):  # open's lane is done
            assert time.monotonic() < end
            time.sleep(0.01)

        def bug(call: Call) -> bool:
            raise RuntimeError("a bug")

        sessions[0].call_inline = bug  # type: ignore[method-assign]
        sock.sendall(_frame(conn, Call(2, "read", [h, 4, None])))
        assert sock.recv(1 << 16) == b""  # that client is ended
        with bridge.connect(f"hwbridge://127.0.0.1:{port}", timeout=5) as other, \
                other.open("zero") as z:
            assert z.read(4) == bytes(4)


def test_a_host_out_of_threads_fails_those_calls_and_serves_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With no thread to be had, a call for the lane (open) and a wait (a read with nothing
    to read) fail with EAGAIN and the connection goes on; calls on the loop still work;
    the connection's end is done on the loop; once threads come back, all is as before."""
    monkeypatch.setattr("bridge.loopconn.LANE_LINGER", 0.01)  # idle lane threads end soon
    devices = {"uart0": {"kind": "serial", "sim": "loopback"}}
    with _in_process(devices, "uart0") as (server, port, sessions, sock, conn, h):
        loop = server._loop
        assert loop is not None
        end = time.monotonic() + 10
        while any(c.lane_thread for c in list(loop.conns.values())):
            assert time.monotonic() < end
            time.sleep(0.01)
        with monkeypatch.context() as m:
            m.setattr(threading, "Thread", NoHostThread)
            sock.sendall(_frame(conn, Call(2, "open", ["uart0"])) +
                         _frame(conn, Call(3, "read", [h, 1, 5.0])) +
                         _frame(conn, Call(4, "in_waiting", [h])))
            got = [_next(sock, conn) for _ in range(3)]
            assert [(type(e), e.id) for e in got] == [(Error, 2), (Error, 3), (Reply, 4)]
            assert [e.errno for e in got[:2]] == [errno.EAGAIN] * 2, got
            assert "can't start new thread" in got[0].message, got[0]
            assert sessions[0]._waiting == 0  # the failed wait holds no slot
            other = socket.create_connection(("127.0.0.1", port), timeout=20)
            other_conn = Connection(Role.CLIENT)
            other.sendall(_frame(other_conn, Hello()))
            assert isinstance(_next(other, other_conn), Hello)
            other.close()  # its end runs on the loop: no lane thread for it
            end = time.monotonic() + 10
            while len(sessions) < 2 or not sessions[1].closed:
                assert time.monotonic() < end, "the connection's end never ran"
                time.sleep(0.01)
        sock.sendall(_frame(conn, Call(5, "open", ["uart0"])))  # threads again: as before
        reply = _next(sock, conn)
        assert isinstance(reply, Reply) and type(reply.result) is int, reply


def test_a_slow_operation_stalls_no_other_connection(server: ServerProc) -> None:
    with bridge.connect(server.url) as a, bridge.connect(server.url) as b:
        slow = a.call("open", ["slow"])
        order: list[str] = []
        pending = a.submit("write", [slow, b"x", None])  # 5 s of fault latency
        waiter = threading.Thread(target=lambda: (a.result(pending), order.append("slow")))
        waiter.start()
        z = b.open("zero")
        n = b.open("null")
        for _ in range(100):
            assert z.read(4) == bytes(4)
            assert n.write(b"ok") == 2
        assert b.devices()  # a lane call of the other connection too
        order.append("others")
        waiter.join(20)
        assert order == ["others", "slow"]


def test_garbage_after_good_calls_gets_their_replies_then_an_error(
        server: ServerProc) -> None:
    sock, conn = _raw(server)
    try:
        sock.sendall(_frame(conn, Call(1, "devices", [])) + b"\x00\x00\x00\x01\x00\x00\x00\x00\xc1")
        first = _next(sock, conn)
        assert isinstance(first, Reply) and first.id == 1
        err = _next(sock, conn)
        assert isinstance(err, Error) and err.errno == 71  # EPROTO
    finally:
        sock.close()
    with bridge.connect(server.url) as host:
        assert host.open("zero").read(2) == bytes(2)


def test_pushed_events_to_a_client_that_never_reads_are_bounded() -> None:
    """A source pushes as fast as it can to a client that stops reading: the host's queue
    for it stays bounded (the pushing thread waits), other clients are served, and when
    the client goes the pushing thread is released and the port closed."""
    devices = {"src": {"kind": "serial", "sim": "source"}, "zero": {"kind": "node", "sim": "zero"}}
    with _in_process(devices, "src") as (server, port, sessions, sock, conn, h):
        sock.sendall(_frame(conn, Call(2, "stream", [h, True])) +
                     _frame(conn, Call(3, "write", [h, b"go", None])))  # starts the source
        with bridge.connect(f"hwbridge://127.0.0.1:{port}") as other:
            zero = other.open("zero")
            for _ in range(10):  # about 1 s of pushing into a full socket
                assert zero.read(8) == bytes(8)
                time.sleep(0.1)
        assert server._loop is not None
        (pushed,) = [c for c in server._loop.conns.values() if c.session is sessions[0]]
        # WAIT_OUT (4 MiB) plus one push: a few MiB, not everything the source made
        assert WAIT_OUT < pushed.out_bytes <= 8 << 20, pushed.out_bytes
        src = next(iter(sessions[0].handles.values())).handle
        sock.close()
        end = time.monotonic() + 10
        while not src.closed and time.monotonic() < end:
            time.sleep(0.05)
        assert src.closed, "the port of the vanished client was not closed"


FILL_STANDIN = '''
def dev_fill(buf, n, value):
    for i in range(n):
        buf[i] = value
    return n
'''


@pytest.mark.parametrize("inline", ["true", "false"])
def test_a_result_too_large_for_a_frame_is_an_error_not_a_hang_up(
        make_server: Any, tmp_path: Any, inline: str) -> None:
    """On the loop (inline) or the lane, a reply over the frame limit fails that call with
    EINVAL; the connection goes on."""
    (tmp_path / "fillstandin.py").write_text(FILL_STANDIN)
    s = make_server(f"""
[server]
max_frame = 16384

[devices.fill]
kind = "library"
sim = "library"
standin = "fillstandin"
isolation = "none"
cdef = "int dev_fill(uint8_t *buf, size_t n, uint8_t value);"
functions = {{dev_fill = {{args = {{buf = {{dir = "out", size = "n"}}}}, inline = {inline}}}}}
""", env={"PYTHONPATH": str(tmp_path)})
    with bridge.connect(s.url) as host, host.open("fill") as lib:
        assert lib.dev_fill(4, 7) == (4, b"\x07" * 4)
        with pytest.raises(OSError) as e:
            lib.dev_fill(20000, 7)
        assert e.value.errno == 22 and "frame limit" in str(e.value)
        assert lib.dev_fill(3, 1) == (3, b"\x01" * 3)


def test_a_peer_that_never_reads_what_the_loop_sends_it_is_dropped() -> None:
    """Writes to one end of a simulated UART pair run on the loop, which never waits: what
    they push to a client that never reads piles up until DROP_OUT, then that client is
    dropped, and the writer and the host go on."""
    devices = {"a": {"kind": "serial", "sim": "uart-pair", "peer": "b"},
               "b": {"kind": "serial", "sim": "uart-pair", "peer": "a"}}
    with _in_process(devices, "a") as (server, port, sessions, sock, conn, h):
        sock.sendall(_frame(conn, Call(2, "stream", [h, True])))
        assert isinstance(_next(sock, conn), Reply)
        with bridge.connect(f"hwbridge://127.0.0.1:{port}") as writer:
            b = writer.open("b")
            chunk = bytes(1 << 20)
            for _ in range((64 << 20) // len(chunk) + 32):  # DROP_OUT is 64 MiB
                assert b.write(chunk) == len(chunk)
            end = time.monotonic() + 10
            while sessions[0].handles and time.monotonic() < end:
                time.sleep(0.05)
            assert not sessions[0].handles, "the client that never read was not dropped"
            assert b.write(b"still here") == 10
