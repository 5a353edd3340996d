# How a client receives pushed events: the background reader waits for bytes without holding
# the read side (so calls keep their fast path), a thread waiting for pushed data receives it
# itself (pull_events) while the reader stays aside, a read that pulls still ends at once on
# cancel_read(), exact-size receives are a counted public switch, and they work over TLS.
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

import bridge
from bridge.protocol import Event
from bridge.testing import ServerProc

from .security_helpers import GRANTS, Pki, pki

__all__ = ["pki"]

MANIFEST = """
[devices.a]
kind = "serial"
sim = "uart-pair"
peer = "b"

[devices.b]
kind = "serial"
sim = "uart-pair"
peer = "a"

[devices.loop]
kind = "serial"
sim = "loopback"
"""

SOURCE = '\n[devices.src]\nkind = "serial"\nsim = "source"\n'


@pytest.fixture
def srv(make_server: Callable[..., ServerProc]) -> ServerProc:
    return make_server(MANIFEST)


def test_exact_receives_are_counted_and_cannot_go_below_zero(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host:
        host.exact_receives(True)
        host.exact_receives(True)
        host.exact_receives(False)
        assert host._bulk == 1
        assert host.call("devices", [])  # frames still arrive, in exact pieces
        host.exact_receives(False)
        with pytest.raises(ValueError, match="not requested"):
            host.exact_receives(False)
        assert host._bulk == 0


def test_the_background_reader_leaves_the_read_side_free_while_idle(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, host.open("loop") as port:
        port.timeout = 5
        for _ in range(20):
            time.sleep(0.005)
            assert not host._recv_lock.locked()  # so a call reads its own reply
            port.write(b"x")
            assert port.read(1) == b"x"


def test_a_pulling_thread_receives_the_pushes_itself(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, bridge.connect(srv.url) as other, \
            host.open("a") as a, other.open("b") as b:
        seen: list[int] = []
        host.on_event(lambda ev: seen.append(threading.get_ident()), "serial.data",
                      direct=True)
        stop = threading.Event()
        puller: list[int] = []

        def pull() -> None:
            puller.append(threading.get_ident())
            while not stop.is_set():
                host.pull_events(0.05)
            host.end_pull()

        t = threading.Thread(target=pull)
        t.start()
        try:
            for i in range(10):
                b.write(bytes([i]))
                time.sleep(0.02)
            a.timeout = 5
            assert a.read(10) == bytes(range(10))
        finally:
            stop.set()
            t.join(5)
        assert len(seen) == 10 and set(seen) == set(puller)  # none through the reader


def test_cancel_read_ends_a_read_that_pulls(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, host.open("loop") as port:
        port.timeout = None
        for _ in range(20):
            got: list[bytes] = []
            t = threading.Thread(target=lambda out=got: out.append(port.read(10)))
            t.start()
            time.sleep(0.01)
            port.cancel_read()
            t.join(2)
            assert not t.is_alive() and got == [b""]


def test_pull_events_without_bytes_returns_false_after_its_timeout(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host:
        host.on_event(lambda ev: None, "serial.data", direct=True)
        t = time.monotonic()
        assert host.pull_events(0.05) is False
        assert 0.04 <= time.monotonic() - t < 2.0
        assert host.call("devices", [])


def test_a_broken_connection_makes_pull_events_return_false(srv: ServerProc) -> None:
    host = bridge.connect(srv.url)
    host.on_event(lambda ev: None, "serial.data", direct=True)
    host.close()
    assert host.pull_events(0.01) is False


def test_exact_receives_work_over_tls(pki: Pki) -> None:
    from bridge.testing import start_server

    with start_server(pki.manifest(), workdir=pki.dir) as s, \
            bridge.connect(s.url, **pki.client("alice")) as host, host.open("null") as dev:
        host.exact_receives(True)  # TLS receives take no MSG_WAITALL: pieces may come short
        try:
            for _ in range(20):
                assert dev.write(b"abc") == 3
            assert [d.name for d in host.devices()]
        finally:
            host.exact_receives(False)


def test_large_pushes_stream_over_tls(pki: Pki) -> None:
    """Frames with a data section (pushes, large replies) over TLS: the host writes their
    two parts one after the other (ssl.SSLSocket has no sendmsg)."""
    from bridge.testing import start_server

    grants = GRANTS.replace("[grants.alice]\n", '[grants.alice]\nsrc = "rw"\n')
    with start_server(pki.manifest(SOURCE, grants), workdir=pki.dir) as s, \
            bridge.connect(s.url, **pki.client("alice")) as host, host.open("src") as port:
        port.timeout = 3
        port.write(b"go")
        data = port.read(3 << 20)  # 256 KiB pushes: exact receives, over TLS
        assert len(data) == 3 << 20
        assert data == (bytes(range(256)) * (len(data) // 256 + 1))[:len(data)]
        assert host.call("devices", [])  # and the connection goes on


def test_an_event_handler_sees_events_as_before(srv: ServerProc) -> None:
    with bridge.connect(srv.url) as host, host.open("loop") as port:
        got: list[Event] = []
        done = threading.Event()

        def handler(ev: Event) -> None:
            got.append(ev)
            done.set()

        host.on_event(handler, "serial.data")  # on the dispatcher thread
        port.write(b"ping")
        assert done.wait(5)
        assert got[0].payload == b"ping"
