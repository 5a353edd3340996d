# Flow control of a streaming serial port, end to end through a real server: a port whose
# client buffer reaches its high-water mark with no read waiting asks the host to pause;
# reads bring it back. Across any number of pauses no byte is lost or repeated, the client's
# memory stays bounded, and a read that wants more than the mark still gets it. Host side:
# no serial operation waits for the lock a push holds while the client is slow.
from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from bridge.sim.serial import Loopback

import bridge
from bridge.manifest import DeviceSpec
from bridge.testing import ServerProc

# Sources at a line's pace (fast ones, but slower than a client reads): the host then has
# little queued for the client and reads its requests at once, as with real ports. (A source
# as fast as the client reads keeps the host's output queue full; the host then reads the
# client's requests, a pause included, only as its queue drains below bridge/loop.py's
# PAUSE_OUT, so far more arrives before the pause takes effect.)
MANIFEST = """
[devices.src]
kind = "serial"
sim = "source"
chunk = 65536
rate = 40000000

[devices.odd]
kind = "serial"
sim = "source"
chunk = 65792
rate = 40000000
"""

PATTERN = bytes(range(256)) * (8 * 1024 * 1024 // 256 + 1)  # longer than any one read
IN_FLIGHT = 8 << 20  # what may still arrive after the port asked for a pause (generous)


def contiguous(data: bytes, offset: int) -> int:
    """Assert ``data`` is the source's pattern from ``offset``; return the offset after."""
    start = offset % 256
    assert data == PATTERN[start:start + len(data)]
    return offset + len(data)


def wait_until(cond: Callable[[], bool], seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


@pytest.fixture
def srv(make_server: Callable[..., ServerProc]) -> ServerProc:
    return make_server(MANIFEST)


def test_a_port_nobody_reads_pauses_and_its_buffer_stops_growing(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, host.open("src") as port:
        port.set_buffer_size(1 << 20)
        port.timeout = 10
        port.write(b"go")
        offset = contiguous(port.read(1000), 0)
        wait_until(lambda: port.status()["streaming"] is False)
        wait_until(lambda: len(port._rx) >= 1 << 20)  # the port's buffer reached the mark
        time.sleep(0.2)  # what was in flight when the host stopped lands
        held = len(port._rx)
        assert 1 << 20 <= held <= (1 << 20) + IN_FLIGHT
        time.sleep(0.5)
        assert len(port._rx) == held  # paused: nothing more arrives
        assert port.status()["streaming"] is False
        # Everything that arrived, then what the host held meanwhile, follows on.
        for _ in range(12):
            offset = contiguous(port.read(777_777), offset)
        assert port.status()["overflow"] == 0


def test_pauses_and_resumes_lose_and_repeat_nothing(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, host.open("odd") as port:
        port.set_buffer_size(256 * 1024)
        port.timeout = 10
        port.write(b"go")
        offset = 0
        while port._pauses < 3 and offset < 1 << 30:
            offset = contiguous(port.read(1_000_001), offset)
            # A slow consumer: the buffer fills past the mark meanwhile (256 KiB take
            # 6.5 ms at the source's 40 MB/s; 5 ms, tried before, left the pauses to chance:
            # a run could read 1 GiB without the third).
            time.sleep(0.02)
        assert port._pauses >= 3
        offset = contiguous(port.read(3_000_000), offset)  # and after the last resume
        assert port.status()["overflow"] == 0


def test_a_read_larger_than_the_mark_gets_all_it_asks_for(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, host.open("odd") as port:
        port.set_buffer_size(64 * 1024)
        port.timeout = 10
        port.write(b"go")
        offset = contiguous(port.read(5 << 20), 0)
        time.sleep(0.3)  # paused at the mark again, then:
        contiguous(port.read(3 << 20), offset)


def test_reset_input_buffer_of_a_paused_port_resumes_it(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, host.open("src") as port:
        port.set_buffer_size(512 * 1024)
        port.timeout = 10
        port.write(b"go")
        port.read(10)
        wait_until(lambda: port.status()["streaming"] is False)
        port.reset_input_buffer()
        wait_until(lambda: port.status()["streaming"] is True)
        first = port.read(300_000)
        contiguous(port.read(2 << 20), first[0] + len(first))


def test_set_buffer_size_checks_its_argument(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, host.open("src") as port:
        with pytest.raises(ValueError, match="rx_size"):
            port.set_buffer_size(0)
        port.set_buffer_size(4096, tx_size=1 << 20)  # tx_size accepted, as by pyserial


# -- host side: the push lock -----------------------------------------------------------


class SlowSink:
    """An event sink whose first push blocks until released, as a connection does while a
    slow client has not read enough (back-pressure)."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, topic: str, payload: Any) -> None:
        assert topic == "serial.data"
        self.events.append(payload)
        if len(self.events) == 1:
            self.entered.set()
            assert self.release.wait(10)


def test_no_operation_waits_for_a_push_that_waits_for_the_client() -> None:
    port = Loopback(DeviceSpec("flow-loop", "serial", "sim", sim="loopback"))
    sink = SlowSink()
    port.attach(sink)
    try:
        port.stream(True)
        pusher = threading.Thread(target=port.feed, args=(b"first",))
        pusher.start()
        assert sink.entered.wait(5)  # the push holds the lock, waiting for the client
        t = time.monotonic()
        port.stream(False)
        assert port.in_waiting() == [5, 0]
        with port._rx_cv:  # what the device sent while paused (a feed would wait its turn)
            port._rx += b"held"
        assert port.status()["buffered"] == 4
        port.stream(True)  # cannot push the held bytes now: the blocked push will
        port.reset_output()
        assert time.monotonic() - t < 1.0
        assert sink.events == [b"first"]
        sink.release.set()
        pusher.join(5)
        assert sink.events == [b"first", b"held"]  # after the push that held the lock
        port.feed(b"next")
        assert sink.events == [b"first", b"held", b"next"]
        assert port.in_waiting() == [13, 0]
    finally:
        sink.release.set()
        port.close()


def test_a_lost_port_delivers_what_it_held_then_its_end_once() -> None:
    """SerialHandle.lost (the posix reader calls it when the port goes away): the bytes
    held are read or pushed first, then reads and writes fail with the errno, and a
    streaming client is told once, after the last bytes."""
    port = Loopback(DeviceSpec("gone-loop", "serial", "sim", sim="loopback"))
    events: list[Any] = []
    port.attach(lambda topic, payload: events.append(payload))
    try:
        port.feed(b"held")  # not streaming yet: buffered
        port.lost(OSError(errno.EIO, "Input/output error"))
        assert events == []
        assert port.read_nowait(2) == b"he"
        port.stream(True)
        end = {"errno": errno.EIO, "message": "gone-loop: the port is gone: Input/output error"}
        assert events == [b"ld", end]
        with pytest.raises(OSError) as read:
            port.read_nowait(1)
        assert read.value.errno == errno.EIO
        with pytest.raises(OSError) as written:
            port.write_nowait(b"x")
        assert written.value.errno == errno.EIO
        assert port.wait(False, 5.0)  # a waiting read wakes up to fail
        port.stream(False)
        port.stream(True)
        assert events == [b"ld", end]  # told once
    finally:
        port.close()
