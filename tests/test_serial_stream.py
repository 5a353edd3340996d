# Streaming serial input through a real server: the simulated source port pushes a repeating
# pattern as fast as the client takes it; every byte must arrive once, in order, whatever the
# push size and the read size, across reset_input_buffer; large pushes switch the connection
# to exact-size receives for as long as the port streams them, and only then.
from __future__ import annotations

from collections.abc import Callable

import pytest

import bridge
from bridge.testing import ServerProc

MANIFEST = """
[devices.src]
kind = "serial"
sim = "source"

[devices.big]
kind = "serial"
sim = "source"
chunk = 1048576

[devices.odd]
kind = "serial"
sim = "source"
chunk = 65792

[devices.small]
kind = "serial"
sim = "source"
chunk = 1024

[devices.loop]
kind = "serial"
sim = "loopback"
"""

PATTERN = bytes(range(256)) * (5 * 1024 * 1024 // 256)  # longer than any one read


def check_continues(data: bytes, offset: int | None) -> int:
    """Assert ``data`` is the source's pattern from ``offset`` (None: any phase); return
    the offset after it."""
    start = data[0] if offset is None else offset % 256
    assert data == PATTERN[start:start + len(data)]
    return start + len(data)


@pytest.fixture
def srv(make_server: Callable[..., ServerProc]) -> ServerProc:
    return make_server(MANIFEST)


@pytest.mark.parametrize("device", ["src", "big", "odd", "small"])
def test_every_byte_arrives_once_in_order(srv: ServerProc, device: str) -> None:
    with bridge.connect(srv.url) as host, host.open(device) as port:
        port.timeout = 10
        port.write(b"go")
        offset = 0
        total = 0
        for size in (1, 255, 256 * 1024, 100_000, 1 << 20, 3, 777_777):
            data = port.read(size)
            assert len(data) == size
            offset = check_continues(data, offset)
            total += size
        assert port.status()["overflow"] == 0


def test_reset_input_buffer_mid_stream_keeps_what_follows_contiguous(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, host.open("odd") as port:
        port.timeout = 10
        port.write(b"go")
        check_continues(port.read(300_000), 0)
        for _ in range(3):
            port.reset_input_buffer()
            offset = check_continues(port.read(70_001), None)  # from wherever it resumed
            check_continues(port.read(200_000), offset)


def test_large_pushes_switch_exact_receives_on_and_close_switches_them_off(
        srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host:
        with host.open("src") as port:
            port.timeout = 10
            port.write(b"go")
            check_continues(port.read(4 << 20), 0)
            assert host._bulk == 1  # 256 KiB pushes: their data arrives at its exact size
        assert host._bulk == 0
        with host.open("src") as a, host.open("big") as b:  # two streaming ports
            a.timeout = b.timeout = 10
            a.write(b"go")
            b.write(b"go")
            check_continues(a.read(2 << 20), 0)
            check_continues(b.read(4 << 20), 0)
            assert host._bulk == 2
            a.close()
            assert host._bulk == 1
        assert host._bulk == 0
        assert host.call("devices", [])  # the connection works as before


def test_small_pushes_leave_the_connection_as_it_is(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host:
        with host.open("small") as port:
            port.timeout = 10
            port.write(b"go")
            check_continues(port.read(1 << 20), 0)
            assert host._bulk == 0
        with host.open("loop") as port:
            port.timeout = 5
            port.write(b"hello\n")
            assert port.readline() == b"hello\n"
            assert host._bulk == 0


def test_a_source_chunk_that_is_not_a_multiple_of_256_is_refused(
        make_server: Callable[..., ServerProc]) -> None:
    srv = make_server('[devices.bad]\nkind = "serial"\nsim = "source"\nchunk = 1000\n')
    with bridge.connect(srv.url) as host, pytest.raises(OSError, match="multiple of 256"):
        host.open("bad")
