"""Injected disconnects: 1,000 connections end abruptly mid-hello, mid-frame, with an
operation waiting on a device, and while holding a lease on a real kernel node. Afterwards
the host has leaked no file descriptor and no lease, and it still serves."""
from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import serial
from bridge.drivers.gpio import Direction, Edge

import bridge
from bridge.protocol import HEADER, Call, Connection, Hello, Role
from bridge.url import parse_url

from .conftest import ServerProc, start_server

ROUNDS = 250  # of each of the four kinds: 1,000 disconnects

MANIFEST = """
[devices.null]
kind = "node"
path = "/dev/null"
ioctls = ["FIONREAD"]

[devices.leased]
kind = "node"
path = "/dev/null"
ioctls = ["FIONREAD"]

[devices.uart0]
kind = "serial"
sim = "loopback"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with start_server(MANIFEST, workdir=tmp_path_factory.mktemp("disc")) as s:
        yield s


def _reset(s: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer would."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def _frames(*msgs: object) -> bytes:
    c = Connection(Role.CLIENT)
    return b"".join(bytes(b) for m in msgs for b in c.send(m))  # type: ignore[arg-type]


def test_a_thousand_disconnects_leak_nothing(server: ServerProc) -> None:
    u = parse_url(server.url)
    addr = (u.host, u.port)
    with bridge.connect(server.url) as probe:
        probe.devices()
        time.sleep(0.2)
        base = server.fd_count() - 1  # without the probe's own connection
    hello = _frames(Hello())
    call = _frames(Call(1, "open", ["null"]))
    counts = dict.fromkeys(("hello", "frame", "waiting", "lease"), 0)
    for i in range(ROUNDS):
        s = socket.create_connection(addr, timeout=10)  # mid-hello
        s.sendall(hello[: 1 + i % (len(hello) - 1)])
        (_reset if i % 2 else socket.socket.close)(s)
        counts["hello"] += 1

        s = socket.create_connection(addr, timeout=10)  # mid-frame, after the hello
        s.sendall(hello + call[: 1 + i % (len(call) - 1)] + HEADER.pack(50, 0)[: i % 9])
        (_reset if i % 2 else socket.socket.close)(s)
        counts["frame"] += 1

        c = bridge.connect(server.url)  # a read waiting on the device, and an open fd
        node = c.open("null")
        assert node.write(b"x") == 1
        h = c.call("open", ["uart0"])
        c.submit("read", [h, 1, 5.0])
        _reset(c._sock) if i % 2 else c.close()
        counts["waiting"] += 1

        c = bridge.connect(server.url)  # holding a lease, mid-ioctl
        c.lease("leased", timeout=10, renew=False)  # waits for the last holder's exit
        node = c.open("leased")
        c.submit("ioctl", [node.handle, "FIONREAD", None])  # in flight when the peer goes
        _reset(c._sock) if i % 2 else c.close()
        counts["lease"] += 1
    assert sum(counts.values()) == 4 * ROUNDS
    with bridge.connect(server.url) as after:
        end = time.monotonic() + 20
        while after.leases() and time.monotonic() < end:
            time.sleep(0.05)
        assert after.leases() == [], "orphaned lease"
        with after.open("null") as dev:
            assert dev.write(b"alive") == 5
    end = time.monotonic() + 20
    while server.fd_count() != base and time.monotonic() < end:
        time.sleep(0.05)
    assert server.fd_count() == base, "file descriptors leaked"
    print(f"\ndisconnects: {counts}, fds {server.fd_count()} (baseline {base})")
    assert os.path.exists(f"/proc/{server.proc.pid}")


def test_waits_on_a_host_that_goes_away_end_with_the_connection() -> None:
    """The host dies while a serial read and a GPIO wait_event wait (30 s timeouts): both
    raise the lost connection's error as soon as the client sees it, instead of returning
    b"" or None when their timeouts run out, as pyserial's read raises for a vanished port;
    the port's other waits and a clean close behave alike."""
    srv = start_server()  # the built-in lab
    try:
        c = bridge.connect(srv.url)
        port = c.open("uart0")
        port.timeout = 30
        chip = c.open("gpiochip0")
        chip.configure(1, Direction.IN, Edge.BOTH)
        outcome: dict[str, BaseException | object] = {}

        def wait_edge() -> None:
            try:
                outcome["edge"] = chip.wait_event(1, 30)
            except BaseException as e:  # the outcome is the test's to check
                outcome["edge"] = e

        t = threading.Thread(target=wait_edge)
        t.start()
        threading.Timer(0.3, srv.proc.send_signal, (signal.SIGKILL,)).start()
        with pytest.raises(serial.SerialException) as info:
            port.read(10)
        # a reset (or a broken pipe, had something been sent meanwhile): never a timeout
        assert info.value.errno in (errno.ECONNRESET, errno.EPIPE) and "uart0" in str(info.value)
        t.join(30)
        assert isinstance(outcome.get("edge"), ConnectionError), outcome
        c.close()
    finally:
        srv.stop()
    with start_server() as again, bridge.connect(again.url) as c2:  # a clean close too
        port2 = c2.open("uart0")
        port2.timeout = 30
        threading.Timer(0.3, c2.close).start()
        with pytest.raises(serial.SerialException) as closed:
            port2.read(10)
        assert closed.value.errno == errno.ECONNABORTED
