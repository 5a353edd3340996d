"""Limits end to end: each exceeded limit is a clear error to that client alone, and the
host's deadlines end silent, slow and idle peers while others keep working."""
from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable, Iterator

import pytest

import bridge
from bridge.protocol import HEADER, Connection, Hello, Role

from .conftest import ServerProc, start_server

MANIFEST = """
[server]
max_frame = 16384

[limits]
max_connections_per_principal = 3
max_handles = 3
max_in_flight = 2
handshake_timeout = 1.0  # room for a loaded CI machine; the trickle below outlasts it
frame_timeout = 0.5
idle_timeout = 60.0  # the witness must outlast a stalled test process; see IDLE_MANIFEST

[devices.uart0]
kind = "serial"
sim = "loopback"

[devices.null]
kind = "node"
sim = "null"
"""


# The idle deadline has a host of its own: with a short one on the shared host, a witness
# is closed whenever the test process stalls for that long (it did once on a loaded CI
# machine, between two calls of _alive).
IDLE_MANIFEST = MANIFEST.replace("idle_timeout = 60.0", "idle_timeout = 2.0")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with start_server(MANIFEST, workdir=tmp_path_factory.mktemp("limits")) as s:
        yield s


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with start_server(IDLE_MANIFEST, workdir=tmp_path_factory.mktemp("idle")) as s:
        yield s


@pytest.fixture
def witness(server: ServerProc) -> Iterator[bridge.Client]:
    """A bystander: it must keep working whatever the others do."""
    with bridge.connect(server.url) as c:
        yield c


def _alive(c: bridge.Client) -> None:
    with c.open("null") as dev:
        assert dev.write(b"still here") == 10


def _raw(server: ServerProc) -> socket.socket:
    u = bridge.url.parse_url(server.url)
    s = socket.create_connection((u.host, u.port), timeout=10)
    return s


def _hello_bytes() -> bytes:
    return b"".join(bytes(b) for b in Connection(Role.CLIENT).send(Hello()))


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """True when the host closes ``s`` (EOF or reset) within ``seconds``."""
    s.settimeout(seconds)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if not s.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def test_connections_per_principal(server: ServerProc, witness: bridge.Client) -> None:
    others = [bridge.connect(server.url) for _ in range(2)]  # 3 with the witness
    try:
        with pytest.raises(ConnectionRefusedError, match=r"anonymous has 3 connections.*limit 3"):
            bridge.connect(server.url)
        _alive(witness)
    finally:
        for c in others:
            c.close()
    _wait_for(lambda: _connects(server), "a slot to free up")


def _connects(server: ServerProc) -> bool:
    try:
        bridge.connect(server.url).close()
        return True
    except ConnectionRefusedError:
        return False


def _wait_for(cond: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + 10
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_handles_per_connection(server: ServerProc, witness: bridge.Client) -> None:
    with bridge.connect(server.url) as c:
        handles = [c.open("null") for _ in range(3)]
        with pytest.raises(OSError, match="more than 3 open handles") as info:
            c.open("null")
        assert info.value.errno == errno.EMFILE
        handles.pop().close()
        handles.append(c.open("null"))  # a freed slot is usable again
    with witness.open("uart0") as port:
        assert port.write(b"ok") == 2


def test_requests_in_flight(server: ServerProc, witness: bridge.Client) -> None:
    with bridge.connect(server.url) as c:
        h = c.call("open", ["uart0"])
        waiting = [c.submit("read", [h, 1, 3.0]) for _ in range(2)]
        third = c.submit("read", [h, 1, 3.0])
        with pytest.raises(BlockingIOError, match="more than 2 waiting operations"):
            c.result(third)
        _alive(witness)
        c.call("write", [h, b"ab", None])
        assert sorted(c.result(p) for p in waiting) == [b"a", b"b"]


def test_oversize_frame_ends_only_that_client(server: ServerProc,
                                              witness: bridge.Client) -> None:
    c = bridge.connect(server.url)
    h = c.call("open", ["null"])
    # The client knows the host's limit from the hello: refused locally, connection kept.
    with pytest.raises(ValueError, match="frame limit of 16384"):
        c.call("write", [h, b"x" * 20000, None])
    assert c.call("write", [h, b"x", None]) == 1
    # A client that ignores the limit is cut off by the host, and only that client.
    c._conn.send_limit = 1 << 30
    with pytest.raises(bridge.ProtocolError, match="exceeds the limit of 16384"):
        c.call("write", [h, b"x" * 20000, None])
    c.close()
    s = _raw(server)
    s.sendall(_hello_bytes() + HEADER.pack(0xFFFFFFF0, 0xFFFFFFF0))
    assert _closed_within(s, 5)
    s.close()
    _alive(witness)


def test_handshake_deadline(server: ServerProc, witness: bridge.Client) -> None:
    silent, slow = _raw(server), _raw(server)
    hello = _hello_bytes()
    slow.sendall(hello[:3])
    start = time.monotonic()
    for i in range(3, 14):  # trickle: each byte inside the deadline, the whole (1.3 s) not
        time.sleep(0.12)
        try:
            slow.sendall(hello[i:i + 1])
        except OSError:
            break
    assert _closed_within(silent, 5) and _closed_within(slow, 5)
    assert time.monotonic() - start < 5
    silent.close()
    slow.close()
    _alive(witness)


def test_frame_deadline(server: ServerProc, witness: bridge.Client) -> None:
    s = _raw(server)
    s.sendall(_hello_bytes())
    s.settimeout(5)
    assert s.recv(65536)  # the host's hello
    s.sendall(HEADER.pack(100, 0) + b"\x94")  # a frame that never completes
    assert _closed_within(s, 5)
    s.close()
    _alive(witness)


def test_idle_deadline_spares_a_waiting_client(idle_server: ServerProc) -> None:
    server = idle_server
    with bridge.connect(server.url) as idle, bridge.connect(server.url) as busy:
        h = busy.call("open", ["uart0"])
        p = busy.submit("read", [h, 1, 3.0])  # waits 3 s on the host: not idle
        time.sleep(2.6)  # past the idle deadline (2 s)
        with pytest.raises(TimeoutError):  # the host answered: the connection lived on
            busy.result(p)
        assert busy.devices()
        with pytest.raises((ConnectionError, bridge.ProtocolError)):
            idle.devices()


def test_limits_table_is_validated() -> None:
    from bridge.manifest import ManifestError, parse

    with pytest.raises(ManifestError, match="no key 'max_sockets'"):
        parse({"limits": {"max_sockets": 3}})
    with pytest.raises(ManifestError, match="positive integer"):
        parse({"limits": {"max_handles": 0}})
    assert parse({"limits": {"idle_timeout": 0}}).limits.idle_timeout == 0
