# Batches end to end: open -> ioctl -> read -> close on a real pty in one round trip (counted
# by a frame-counting TCP proxy on loopback), results fed to later operations, and the stop at
# the first error with its index while later operations report that they did not run.
from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

import bridge

from .conftest import ServerProc
from .nodes_helpers import Pty, Winsize, node_server, shared_pty

__all__ = ["node_server", "shared_pty"]

HEADER = struct.Struct(">II")  # the wire's frame header: body length, data length


class FrameCounter:
    """Counts whole frames in one direction of a byte stream by parsing frame headers."""

    def __init__(self) -> None:
        self.frames = 0
        self._head = b""
        self._skip = 0

    def feed(self, data: bytes) -> None:
        while data:
            if self._skip:
                n = min(self._skip, len(data))
                self._skip -= n
                data = data[n:]
                continue
            need = HEADER.size - len(self._head)
            self._head += data[:need]
            data = data[need:]
            if len(self._head) == HEADER.size:
                body, extra = HEADER.unpack(self._head)
                self._head = b""
                self._skip = body + extra
                self.frames += 1


class CountingProxy:
    """A loopback TCP proxy in front of a server that counts frames each way."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.up = FrameCounter()    # client -> server
        self.down = FrameCounter()  # server -> client
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"hwbridge://127.0.0.1:{self.listener.getsockname()[1]}"

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.listener.accept()
            server = socket.create_connection(self.target, timeout=10)
            self._socks += [client, server]
            for a, b, counter in ((client, server, self.up), (server, client, self.down)):
                threading.Thread(target=self._pump, args=(a, b, counter), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, counter: FrameCounter) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                counter.feed(data)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()


@pytest.fixture
def host(node_server: tuple[ServerProc, Pty], shared_pty: Pty) -> Iterator[bridge.Client]:
    with bridge.connect(node_server[0].url) as client:
        yield client


@pytest.fixture
def proxied(node_server: tuple[ServerProc, Pty], shared_pty: Pty
            ) -> Iterator[tuple[bridge.Client, CountingProxy]]:
    u = urlsplit(node_server[0].url)
    assert u.hostname is not None and u.port is not None
    proxy = CountingProxy((u.hostname, u.port))
    try:
        with bridge.connect(proxy.url) as client:
            yield client, proxy
    finally:
        proxy.close()


def test_open_ioctl_read_close_in_one_round_trip(
        proxied: tuple[bridge.Client, CountingProxy], shared_pty: Pty) -> None:
    host, proxy = proxied
    os.write(shared_pty.master, b"batch!")
    shared_pty.wait_pending(6)
    assert (proxy.up.frames, proxy.down.frames) == (1, 1)  # the hello each way
    with host.batch():
        dev = host.open("pty")
        dev.ioctl("TIOCSWINSZ", Winsize(33, 99, 0, 0))
        ws = dev.ioctl("TIOCGWINSZ", Winsize())
        dev.timeout = 5.0
        data = dev.read(6)
        closed = host.call("close", [dev.handle])
        assert not data.done  # nothing has travelled yet
    assert (proxy.up.frames, proxy.down.frames) == (2, 2)
    assert data.result() == b"batch!"
    w = ws.result()
    assert type(w) is Winsize and (w.ws_row, w.ws_col) == (33, 99)
    assert closed.result() is None
    assert type(dev.handle) is int  # the proxy learnt its handle from the batch
    with pytest.raises(OSError) as info:  # closed inside the batch, for real
        dev.read(1)
    assert info.value.errno == errno.EBADF


def test_a_read_result_feeds_a_write(host: bridge.Client, shared_pty: Pty) -> None:
    os.write(shared_pty.master, b"echo me")
    shared_pty.wait_pending(7)
    with host.open("pty") as dev:
        dev.timeout = 5.0
        with host.batch():
            got = dev.read(7)
            wrote = dev.write(got)
        assert wrote.result() == 7
    assert shared_pty.read_master(7) == b"echo me"


def test_ops_on_handles_opened_earlier_in_the_batch(host: bridge.Client) -> None:
    with host.batch():
        z = host.open("zero")
        n = host.open("null")
        zeros = z.read(32)
        n.write(zeros)
        z.close()
        n.close()
    assert zeros.result() == bytes(32)


def test_stop_at_the_first_error(host: bridge.Client) -> None:
    with pytest.raises(FileNotFoundError) as info, host.batch():
        first = host.open("zero")
        read0 = first.read(4)
        host.open("nosuch")
        later = first.read(4)
        devs = host.call("devices", [])
    assert "batch operation 2" in str(info.value) and "nosuch" in str(info.value)
    assert read0.result() == bytes(4)
    for d in (later, devs):
        with pytest.raises(RuntimeError, match="not executed"):
            d.result()
    assert {d.name for d in host.devices()} >= {"zero"}  # the connection is fine


def test_error_in_a_later_op_keeps_earlier_results(host: bridge.Client) -> None:
    with pytest.raises(PermissionError) as info, host.batch():
        z = host.open("zero")
        ok = z.read(2)
        z.write(b"no")  # zero is read-only in the manifest
        never = z.read(2)
    assert info.value.errno == errno.EACCES
    assert "batch operation 2" in str(info.value)
    assert ok.result() == bytes(2)
    with pytest.raises(RuntimeError, match="not executed"):
        never.result()


def test_deferred_before_the_batch_ran(host: bridge.Client) -> None:
    with host.batch():
        d = host.call("devices", [])
        with pytest.raises(RuntimeError):
            d.result()
    assert {x["name"] for x in d.result()} >= {"pty", "zero"}


def test_blocking_op_inside_a_batch_waits_on_the_host(host: bridge.Client,
                                                      shared_pty: Pty) -> None:
    """The batch's read must wait for data; a write from the master ends the wait."""
    result: dict[str, object] = {}
    with host.open("pty") as dev:
        dev.timeout = 30.0

        def run() -> None:
            with host.batch():
                d = dev.read(3)
                z = host.call("devices", [])
            result["read"], result["devices"] = d.result(), len(z.result())

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(0.3)
        assert t.is_alive()
        os.write(shared_pty.master, b"abc")
        t.join(10)
        assert not t.is_alive()
    assert result == {"read": b"abc", "devices": 4}


def test_a_batch_on_one_thread_leaves_other_threads_calls_alone(
        host: bridge.Client, shared_pty: Pty) -> None:
    """While one thread's batch is open, another thread's calls run at once; once it is
    closed, calls are back on the fast path, and a Deferred handed to a later call (on any
    thread) is sent as its result."""
    zero = host.open("zero")
    opened, release = threading.Event(), threading.Event()
    got: dict[str, object] = {}

    def batching() -> None:
        with host.batch():
            got["d"] = zero.read(7)
            opened.set()
            release.wait(10)

    t = threading.Thread(target=batching, daemon=True)
    t.start()
    assert opened.wait(10)
    assert zero.read(2) == bytes(2)  # not taken into the other thread's batch
    release.set()
    t.join(10)
    d = got["d"]
    assert isinstance(d, bridge.Deferred) and d.result() == bytes(7)
    assert host._batches_open == 0 and host._fast == host._fast_ok()
    with host.open("pty") as dev:
        out: list[object] = []
        w = threading.Thread(target=lambda: out.append(dev.write(d)))  # type: ignore[arg-type]
        w.start()
        w.join(10)
        assert out == [7]
    assert shared_pty.read_master(7) == bytes(7)
    zero.close()
