# Transports: TCP (TCP_NODELAY on the client's socket) and Unix-domain sockets, through a
# real server process; many requests in flight on one connection from several threads.
from __future__ import annotations

import socket
import threading
from pathlib import Path

import bridge

from .conftest import ServerProc

MANIFEST = """
[server]
unix = "{sock}"

[devices.zero]
kind = "node"
path = "/dev/zero"
access = "r"
"""


def test_unix_socket_url_serves_the_same_devices(make_server, tmp_path: Path) -> None:
    sock = tmp_path / "hwbridge.sock"
    srv: ServerProc = make_server(MANIFEST.format(sock=sock))
    with bridge.connect(f"hwbridge+unix://{sock}") as host:
        assert [d.name for d in host.devices()] == ["zero"]
        with host.open("zero") as z:
            assert z.read(32) == bytes(32)
    with bridge.open_device(f"hwbridge+unix://{sock}#zero") as z:
        assert z.read(3) == bytes(3)
    with bridge.connect(srv.url) as host:  # TCP still works beside it
        assert host.devices()[0].name == "zero"


def test_tcp_nodelay_on_the_client_socket(lab: ServerProc) -> None:
    with bridge.connect(lab.url) as host:
        s: socket.socket = host._sock
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_many_threads_share_one_connection(lab: ServerProc) -> None:
    errors: list[BaseException] = []
    with bridge.connect(lab.url) as host, host.open("zero") as z:
        def worker(n: int) -> None:
            try:
                for i in range(200):
                    size = (n * 7 + i) % 97 + 1
                    assert z.read(size) == bytes(size)
            except BaseException as e:  # reported below, with the thread's failure
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_pipelined_requests_complete_out_of_order_ids(lab: ServerProc) -> None:
    with bridge.connect(lab.url) as host, host.open("zero") as z:
        pending = [host.submit("read", [z.handle, n, None]) for n in range(1, 65)]
        for n, p in reversed(list(enumerate(pending, 1))):
            assert host.result(p) == bytes(n)
