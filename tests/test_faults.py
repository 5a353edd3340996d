# Faults against a real server process: a client SIGKILLed in the middle of a blocking call,
# a thousand clients that connect, open and vanish (some in the middle of a frame), a frame
# header announcing 4 GiB, garbage instead of a hello. Each time the server keeps serving
# and its file descriptor count returns to its baseline.
from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from bridge.sim.backend import register
from bridge.sim.nodes import ZeroNode

import bridge
from bridge.host import Host
from bridge.manifest import parse
from bridge.protocol import (
    HEADER,
    NEED_DATA,
    Call,
    Connection,
    Error,
    Hello,
    Reply,
    Role,
)
from bridge.server import Server
from bridge.session import Session
from bridge.testing import start_server

from .conftest import ServerProc
from .nodes_helpers import Pty, node_manifest, wait_for

CYCLES = 1000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, Pty]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    pty = Pty(master, slave, os.ttyname(slave))
    s = start_server(node_manifest(pty), workdir=tmp_path_factory.mktemp("faults"))
    try:
        yield s, pty
    finally:
        s.stop()
        os.close(master)
        os.close(slave)


@pytest.fixture
def server(served: tuple[ServerProc, Pty]) -> ServerProc:
    return served[0]


def _addr(server: ServerProc) -> tuple[str, int]:
    u = urlsplit(server.url)
    assert u.hostname is not None and u.port is not None
    return u.hostname, u.port


def _frame(conn: Connection, msg: Hello | Call) -> bytes:
    return b"".join(bytes(b) for b in conn.send(msg))


def _baseline(server: ServerProc) -> int:
    """The server's fd count once earlier tests' connections are gone (it only goes down)."""
    last = server.fd_count()
    end = time.monotonic() + 10
    while time.monotonic() < end:
        time.sleep(0.1)
        now = server.fd_count()
        if now >= last:
            return now
        last = now
    return last


def _back_to(server: ServerProc, baseline: int) -> None:
    wait_for(lambda: server.fd_count() <= baseline, 20,
             f"the server's fds to return to {baseline} (now {server.fd_count()})")


def _working(server: ServerProc) -> None:
    with bridge.connect(server.url) as c, c.open("zero") as z:
        assert z.read(16) == bytes(16)


def _read_until_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _messages(data: bytes) -> list[object]:
    conn = Connection(Role.CLIENT)
    conn.receive_data(data)
    out: list[object] = []
    while (ev := conn.next_event()) is not NEED_DATA and ev is not None:
        out.append(ev)
    return out


def test_client_killed_mid_call(served: tuple[ServerProc, Pty]) -> None:
    server, pty = served
    baseline = _baseline(server)
    script = (
        "import sys, bridge\n"
        "host = bridge.connect(sys.argv[1])\n"
        "dev = host.open('pty'); host.open('null')\n"
        "print('ready', flush=True)\n"
        "dev.read(10)\n"
        "print('read returned', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, server.url], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout=30), "the client never got ready"
        assert proc.stdout.readline() == b"ready\n"
        # two device fds and a socket more than before
        wait_for(lambda: server.fd_count() >= baseline + 3, 10, "the client's handles")
        time.sleep(0.3)  # let the read reach the host and start waiting there
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    _back_to(server, baseline)
    # the dead client's wait on the pty has ended: a new reader gets the bytes
    with bridge.connect(server.url) as c, c.open("pty") as dev:
        dev.timeout = 5.0
        os.write(pty.master, b"after")
        got = b""
        while len(got) < 5:
            got += dev.read(5 - len(got))
        assert got == b"after"
    _working(server)


def test_thousand_connect_open_vanish_cycles(server: ServerProc) -> None:
    baseline = _baseline(server)
    addr = _addr(server)
    for i in range(CYCLES):
        style = i % 5
        if style < 2:  # vanish in the middle of a frame (header or body)
            conn = Connection(Role.CLIENT)
            call = _frame(conn, Call(1, "open", ["null"]))
            cut = 3 if style == 0 else len(call) - 2
            sock = socket.create_connection(addr, timeout=10)
            try:
                sock.sendall(_frame(conn, Hello()) + call[:cut])
            finally:
                sock.close()
        else:  # open a real node, then vanish without closing it (FIN or RST)
            _open_and_vanish(addr, "null" if style == 2 else "zero", reset=style == 4)
    _back_to(server, baseline)
    _working(server)


def _open_on(sock: socket.socket, conn: Connection, name: str) -> int:
    """Say hello and open ``name`` over a raw socket; the handle number."""
    sock.sendall(_frame(conn, Hello()) + _frame(conn, Call(1, "open", [name])))
    got: list[object] = []
    while not any(isinstance(m, Reply | Error) for m in got):
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        conn.receive_data(data)
        while (ev := conn.next_event()) is not NEED_DATA and ev is not None:
            got.append(ev)
    reply = got[-1]
    assert isinstance(reply, Reply) and type(reply.result) is int, reply
    return reply.result


def _open_and_vanish(addr: tuple[str, int], name: str, reset: bool) -> None:
    sock = socket.create_connection(addr, timeout=10)
    try:
        _open_on(sock, Connection(Role.CLIENT), name)
        if reset:  # an abortive close: RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


@pytest.mark.parametrize("size", [0xFFFFFFFF, 4 << 30])
def test_four_gib_header_closes_that_connection_only(server: ServerProc, size: int) -> None:
    baseline = _baseline(server)
    with bridge.connect(server.url) as other, other.open("zero") as z:
        assert z.read(4) == bytes(4)
        conn = Connection(Role.CLIENT)
        sock = socket.create_connection(_addr(server), timeout=10)
        try:
            body, data = min(size, 0xFFFFFFFF), max(0, size - 0xFFFFFFFF)
            sock.sendall(_frame(conn, Hello()) + HEADER.pack(body, data))
            msgs = _messages(_read_until_closed(sock))
        finally:
            sock.close()
        assert isinstance(msgs[0], Hello)
        assert len(msgs) == 2 and isinstance(msgs[1], Error)
        assert msgs[1].errno == errno.EPROTO and "limit" in msgs[1].message
        assert z.read(4) == bytes(4)  # the other client never noticed
    _working(server)
    _back_to(server, baseline)


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    HEADER.pack(5, 0) + b"\xc1" * 5,                       # a byte msgpack never uses
    HEADER.pack(3, 0) + b"\x93\x01\x02",                   # an array, but no hello
    HEADER.pack(0, 0),                                     # an empty body
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),  # a TLS ClientHello
])
def test_garbage_instead_of_hello(server: ServerProc, garbage: bytes) -> None:
    baseline = _baseline(server)
    sock = socket.create_connection(_addr(server), timeout=10)
    try:
        sock.sendall(garbage)
        msgs = _messages(_read_until_closed(sock))
    finally:
        sock.close()
    assert len(msgs) == 1 and isinstance(msgs[0], Error)
    assert msgs[0].id == 0 and msgs[0].errno == errno.EPROTO
    _working(server)
    _back_to(server, baseline)


def test_forbidden_message_after_hello(server: ServerProc) -> None:
    conn = Connection(Role.CLIENT)
    sock = socket.create_connection(_addr(server), timeout=10)
    try:
        server_conn = Connection(Role.SERVER)  # encodes a server-bound message
        sock.sendall(_frame(conn, Hello()) + b"".join(
            bytes(b) for b in server_conn.send(Reply(1, "not from a client"))))
        msgs = _messages(_read_until_closed(sock))
    finally:
        sock.close()
    assert isinstance(msgs[-1], Error) and msgs[-1].errno == errno.EPROTO
    _working(server)


def test_bridge_client_sees_protocol_error_from_a_non_server() -> None:
    """Connecting the client to something that is not a hwbridge host fails cleanly."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    def fake() -> None:
        s, _ = listener.accept()
        s.recv(4096)
        s.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        s.close()

    t = threading.Thread(target=fake, daemon=True)
    t.start()
    try:
        with pytest.raises((bridge.ProtocolError, ConnectionError)):
            bridge.connect(f"hwbridge://127.0.0.1:{port}", timeout=10)
    finally:
        t.join(10)
        listener.close()


def test_many_waiting_reads_stall_neither_this_nor_other_clients(
        served: tuple[ServerProc, Pty]) -> None:
    """More blocking reads than the host lets one connection park: the extra ones fail
    with EAGAIN at once, the connection and other clients keep working, and closing the
    connection ends every wait."""
    server, pty = served
    baseline = _baseline(server)
    with bridge.connect(server.url) as greedy:
        dev = greedy.open("pty")
        waits = [greedy.submit("read", [dev.handle, 1, 60.0]) for _ in range(300)]
        with greedy.open("zero") as z:  # its reply comes after every refusal
            assert z.read(3) == bytes(3)
        refused = [p for p in waits if p.done]
        assert 0 < len(refused) < len(waits), "no limit on parked operations"
        for p in refused:
            with pytest.raises(BlockingIOError):
                greedy.result(p)
        _working(server)  # another client
        with greedy.open("zero") as z:  # and this connection, for non-blocking work
            assert z.read(3) == bytes(3)
    _back_to(server, baseline)
    _working(server)


def test_a_client_that_never_reads_stalls_nobody_else(server: ServerProc) -> None:
    """Replies pile up for a client that does not read; other clients are not affected and
    the stuck connection is cleaned up when it goes."""
    baseline = _baseline(server)
    conn = Connection(Role.CLIENT)
    sock = socket.create_connection(_addr(server), timeout=10)
    try:
        handle = _open_on(sock, conn, "zero")
        calls = [_frame(conn, Call(i, "read", [handle, 256 * 1024, None]))
                 for i in range(2, 400)]
        sock.sendall(b"".join(calls))  # ~100 MiB of replies that nobody reads
        for _ in range(3):
            _working(server)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    _back_to(server, baseline)
    _working(server)


class _SlowClose(ZeroNode):
    """/dev/zero whose close takes a while (like a device that must be reset on release)."""

    def close(self) -> None:
        if not self.closed:
            time.sleep(0.5)
        super().close()


def test_shutdown_closes_every_handle_before_returning() -> None:
    register("slow-close-zero", _SlowClose)
    host = Host(parse({"devices": {"slow": {"kind": "node", "sim": "slow-close-zero"}}}))
    host.prepare()
    server = Server(host)
    _, port = server.listen_tcp("127.0.0.1", 0)
    sessions: list[Session] = []
    server.on_session = sessions.append
    server.start()
    client = bridge.connect(f"hwbridge://127.0.0.1:{port}")
    try:
        client.open("slow")
        (session,) = sessions
        handles = [e.handle for e in session.handles.values()]
        assert len(handles) == 1
        server.shutdown()
        assert all(h.closed for h in handles)
    finally:
        client.close()
