# End to end on real kernel nodes: a real `hwbridge serve` process on loopback serving a pty
# slave and /dev/null, /dev/zero, /dev/full; the test drives the pty master directly and
# checks what the bridge reports against termios and fcntl on the slave.
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import termios
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import bridge

from .conftest import ServerProc
from .nodes_helpers import Pty, Winsize, node_server, shared_pty

__all__ = ["node_server", "shared_pty"]


@pytest.fixture
def pty_pair(shared_pty: Pty) -> Pty:
    return shared_pty


@pytest.fixture
def host(node_server: tuple[ServerProc, Pty], shared_pty: Pty) -> Iterator[bridge.Client]:
    with bridge.connect(node_server[0].url) as client:
        yield client


def test_devices_listed(host: bridge.Client) -> None:
    kinds = {d.name: (d.kind, d.access) for d in host.devices()}
    assert kinds == {"pty": ("node", "rw"), "null": ("node", "rw"), "zero": ("node", "r"),
                     "full": ("node", "rw")}


def test_bytes_both_ways(host: bridge.Client, pty_pair: Pty) -> None:
    with host.open("pty") as dev:
        dev.timeout = 5.0
        os.write(pty_pair.master, b"from the master")
        got = b""
        while len(got) < 15:
            got += dev.read(64)
        assert got == b"from the master"
        payload = bytes(range(256))
        assert dev.write(payload) == len(payload)
        assert pty_pair.read_master(len(payload)) == payload


def test_tcgets_matches_termios(host: bridge.Client, pty_pair: Pty) -> None:
    with host.open("pty") as dev:
        raw = dev.ioctl("TCGETS")
        assert isinstance(raw, bytes) and len(raw) == 36
        assert list(struct.unpack_from("4I", raw)) == termios.tcgetattr(pty_pair.slave)[:4]


def test_tcsets_changes_the_slave(host: bridge.Client, pty_pair: Pty) -> None:
    before = termios.tcgetattr(pty_pair.slave)
    with host.open("pty") as dev:
        raw = bytearray(dev.ioctl("TCGETS"))
        iflag, oflag, cflag, lflag = struct.unpack_from("4I", raw)
        struct.pack_into("4I", raw, 0, iflag, oflag, cflag, lflag ^ termios.ECHO)
        assert dev.ioctl("TCSETS", bytes(raw)) == 0
    after = termios.tcgetattr(pty_pair.slave)
    assert after[3] == before[3] ^ termios.ECHO
    assert after[:3] == before[:3]


def test_winsize_with_a_ctypes_structure(host: bridge.Client, pty_pair: Pty) -> None:
    with host.open("pty") as dev:
        assert dev.ioctl("TIOCSWINSZ", Winsize(24, 80, 640, 480)) == 0
        local = fcntl.ioctl(pty_pair.slave, termios.TIOCGWINSZ, bytes(8))
        assert struct.unpack("4H", local) == (24, 80, 640, 480)
        fcntl.ioctl(pty_pair.slave, termios.TIOCSWINSZ, struct.pack("4H", 50, 132, 1, 2))
        ws = dev.ioctl("TIOCGWINSZ", Winsize())
        assert type(ws) is Winsize
        assert (ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel) == (50, 132, 1, 2)
        # by code instead of by name, and as plain bytes
        assert dev.ioctl(termios.TIOCGWINSZ, bytes(8)) == struct.pack("4H", 50, 132, 1, 2)


def test_fionread_counts_pending_bytes(host: bridge.Client, pty_pair: Pty) -> None:
    with host.open("pty") as dev:
        assert int.from_bytes(dev.ioctl("FIONREAD"), "little") == 0
        os.write(pty_pair.master, b"0123456789")
        pty_pair.wait_pending(10)
        assert int.from_bytes(dev.ioctl("FIONREAD", bytes(4)), "little") == 10
        dev.timeout = 5.0
        assert dev.read(3) == b"012"
        assert int.from_bytes(dev.ioctl("FIONREAD"), "little") == 7


def test_dev_null(host: bridge.Client) -> None:
    with host.open("null") as dev:
        assert dev.write(b"x" * 10000) == 10000
        assert dev.read(16) == b""


@pytest.mark.parametrize("n", [16, 1 << 20])
def test_dev_zero(host: bridge.Client, n: int) -> None:
    with host.open("zero") as dev:
        got = b""
        for _ in range(64):  # a read returns what is available: /dev/zero gives it all
            got += dev.read(n - len(got))
            if len(got) == n:
                break
        assert got == bytes(n)


def test_dev_full_gives_enospc(host: bridge.Client) -> None:
    with host.open("full") as dev, pytest.raises(OSError) as info:
        dev.write(b"abc")
    assert info.value.errno == errno.ENOSPC == 28
    assert "full" in str(info.value) and "write" in str(info.value)
    with host.open("zero") as z:  # the connection is still fine
        assert z.read(4) == bytes(4)


def test_read_timeout_on_an_idle_pty(host: bridge.Client) -> None:
    with host.open("pty") as dev:
        dev.timeout = 0.2
        with pytest.raises(TimeoutError) as info:
            dev.read(10)
        assert info.value.errno == errno.ETIMEDOUT
        dev.timeout = 0
        with pytest.raises(TimeoutError):
            dev.read(10)


def test_blocking_read_does_not_block_other_calls(host: bridge.Client, pty_pair: Pty) -> None:
    """A read waiting on the pty; other threads' calls on the same connection go through."""
    outcome: dict[str, Any] = {}
    with host.open("pty") as dev, host.open("zero") as z:
        dev.timeout = 30.0  # long: the data written below ends the wait, not the timeout

        def reader() -> None:
            try:
                outcome["data"] = dev.read(5)
            except BaseException as e:
                outcome["error"] = e

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        # give the reader time to send its call; the checks below do not depend on it
        t.join(0.3)
        for _ in range(20):
            assert z.read(16) == bytes(16)
        assert {d.name for d in host.devices()} >= {"pty", "zero"}
        assert t.is_alive() and not outcome, "the read finished although no data was sent"
        os.write(pty_pair.master, b"hello")
        t.join(10)
        assert not t.is_alive()
    assert outcome == {"data": b"hello"}


def test_timeout_read_while_another_thread_works(host: bridge.Client) -> None:
    errors: list[BaseException] = []
    with host.open("pty") as dev, host.open("zero") as z:
        dev.timeout = 1.0

        def reader() -> None:
            try:
                dev.read(1)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        done = 0
        while t.is_alive() and done < 10_000:
            assert z.read(8) == bytes(8)
            done += 1
        t.join(10)
        assert done > 0
    assert len(errors) == 1 and isinstance(errors[0], TimeoutError)


def test_poll(host: bridge.Client, pty_pair: Pty) -> None:
    with host.open("pty") as dev:
        assert dev.poll(0) is False
        assert dev.poll(0.1) is False
        os.write(pty_pair.master, b"!")
        assert dev.poll(5.0) is True
        assert dev.poll(0) is True
        dev.timeout = 5.0
        assert dev.read(1) == b"!"
        assert dev.poll(0) is False


def test_large_write_to_the_pty(host: bridge.Client, pty_pair: Pty) -> None:
    """More than a pty buffer holds: the write blocks on the host and finishes as we read."""
    payload = os.urandom(64 * 1024)
    with host.open("pty") as dev:
        dev.write_timeout = 10.0
        box: dict[str, Any] = {}

        def writer() -> None:
            total = 0
            while total < len(payload):
                total += dev.write(payload[total:])
            box["n"] = total

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        assert pty_pair.read_master(len(payload), timeout=20) == payload
        t.join(10)
        assert box == {"n": len(payload)}


def test_ctypes_array_argument(host: bridge.Client) -> None:
    with host.open("pty") as dev:
        arr = (ctypes.c_ushort * 4)(10, 20, 30, 40)
        assert dev.ioctl("TIOCSWINSZ", arr) == 0
        back = dev.ioctl("TIOCGWINSZ", (ctypes.c_ushort * 4)())
        assert list(back) == [10, 20, 30, 40]


def test_write_larger_than_a_frame_is_short_not_fatal(host: bridge.Client) -> None:
    """Node.write sends at most one host frame's worth and says how much went."""
    limit = host.server_info["max_frame"]
    with host.open("null") as dev:
        n = dev.write(b"x" * (limit + 12345))
        assert 0 < n <= limit
        assert dev.write(b"y" * 10) == 10  # the connection is intact


def test_oversized_call_fails_locally_and_keeps_the_connection(host: bridge.Client) -> None:
    limit = host.server_info["max_frame"]
    with host.open("null") as dev:
        with pytest.raises((ValueError, OSError)):
            host.call("write", [dev.handle, b"x" * (limit + 1), None])
        assert dev.write(b"still here") == 10


def test_pipelined_calls_reply_out_of_order(host: bridge.Client, pty_pair: Pty) -> None:
    """Many requests in flight on one connection; a slow one does not hold back the rest."""
    with host.open("pty") as dev, host.open("zero") as z:
        slow = host.submit("read", [dev.handle, 4, 30.0])
        fast = [host.submit("read", [z.handle, i, None]) for i in range(1, 40)]
        assert [len(host.result(p)) for p in fast] == list(range(1, 40))
        os.write(pty_pair.master, b"last")
        assert host.result(slow) == b"last"
