"""Slowloris: 200 connections that trickle bytes (mid-hello and mid-frame) and announce
oversize frames, while a legitimate client keeps working. Its latency is measured and
reported; every hostile connection ends by the host's deadlines, and the host's file
descriptors return to their baseline."""
from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Iterator

import pytest

import bridge
from bridge.protocol import HEADER, Connection, Hello, Role
from bridge.url import parse_url

from .conftest import ServerProc, start_server

HOSTILE = 200
CALLS = 400

MANIFEST = """
[limits]
handshake_timeout = 2.0
frame_timeout = 2.0

[devices.null]
kind = "node"
sim = "null"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with start_server(MANIFEST, workdir=tmp_path_factory.mktemp("slow")) as s:
        yield s


def _hello() -> bytes:
    return b"".join(bytes(b) for b in Connection(Role.CLIENT).send(Hello()))


def test_legitimate_client_keeps_working_under_slowloris(server: ServerProc) -> None:
    u = parse_url(server.url)
    base_fds = server.fd_count()
    hello = _hello()
    with bridge.connect(server.url) as good, good.open("null") as dev:
        hostile: list[tuple[socket.socket, bytes]] = []
        for i in range(HOSTILE):
            s = socket.create_connection((u.host, u.port), timeout=10)
            s.setblocking(False)
            if i % 4 == 0:  # an oversize header right after the hello: refused at once
                script = hello + HEADER.pack(0x7FFFFFFF, 0x7FFFFFFF)
            elif i % 4 == 1:  # a frame that never finishes
                script = hello + HEADER.pack(60000, 0) + b"\x94" * 200
            else:  # the hello, one byte at a time, never finished
                script = hello[:-1]
            hostile.append((s, script))
        lat: list[float] = []
        pos = 0
        end = time.monotonic() + 60
        while len(lat) < CALLS and time.monotonic() < end:
            for s, script in hostile:  # one more byte from every hostile peer
                if pos < len(script):
                    try:
                        s.send(script[pos:pos + 1])
                    except OSError:
                        pass
            pos += 1
            for _ in range(4):
                t = time.perf_counter()
                assert dev.write(b"ping") == 4
                lat.append(time.perf_counter() - t)
        assert len(lat) == CALLS
        lat.sort()
        p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
        print(f"\nslowloris: {HOSTILE} hostile connections, {CALLS} calls: "
              f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {lat[-1] * 1e3:.2f} ms")
        # The requirement, with a wide margin for a loaded machine.
        assert p99 < 0.250, f"p99 {p99 * 1e3:.1f} ms"
        closed = 0
        until = time.monotonic() + 20
        for s, _ in hostile:
            s.setblocking(True)
            s.settimeout(max(until - time.monotonic(), 0.01))
            try:
                while s.recv(65536):
                    pass
                closed += 1
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
            s.close()
        assert closed == HOSTILE, "the host's deadlines left hostile connections open"
        assert dev.write(b"after") == 5
    deadline = time.monotonic() + 10
    while server.fd_count() > base_fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.fd_count() == base_fds
