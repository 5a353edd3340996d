"""Leases end to end on a real host: exclusive holders, a FIFO wait queue with timeouts,
release on disconnect, expiry without renewal, and fencing of stale holders' handles."""
from __future__ import annotations

import contextlib
import errno
import io
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import bridge
from bridge.cli import main
from bridge.leaseclient import Lease

from .conftest import ServerProc, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    with start_server(workdir=tmp_path_factory.mktemp("leases")) as s:
        yield s


@pytest.fixture
def clients(server: ServerProc) -> Iterator[Callable[[], bridge.Client]]:
    made: list[bridge.Client] = []

    def make() -> bridge.Client:
        c = bridge.connect(server.url)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
    with bridge.connect(server.url) as c:
        assert c.leases() == [], "a lease outlived its connection"


def _until(cond: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + 10
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_second_client_waits_then_times_out(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    with a.lease("uart0") as lease:
        assert lease.token > 0 and lease.holder.startswith("anonymous@")
        with pytest.raises(TimeoutError, match="uart0 is leased"):
            b.lease("uart0", timeout=0.2)
        with pytest.raises(TimeoutError):
            b.lease("uart0", timeout=0)
        with pytest.raises(OSError) as info:
            b.open("uart0")
        assert info.value.errno == errno.EBUSY and "leased by" in str(info.value)
        with a.open("uart0") as port:  # the holder uses it freely
            port.write(b"mine")
            assert port.read(4) == b"mine"
    with b.lease("uart0", timeout=0) as second:
        assert second.token > lease.token


def test_waiter_gets_the_lease_on_release(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    first = a.lease("instr0")
    t, out = _in_thread(lambda: b.lease("instr0", timeout=10))
    _until(lambda: a.leases()[0]["waiting"] == 1, "b to queue")
    first.release()
    t.join(10)
    (got,) = out
    assert isinstance(got, Lease) and got.token > first.token
    got.release()


def test_wait_queue_is_first_come_first_served(clients: Callable[[], bridge.Client]) -> None:
    a, b, c = clients(), clients(), clients()
    first = a.lease("zero")
    tb, ob = _in_thread(lambda: b.lease("zero", timeout=10, renew=False))
    _until(lambda: a.leases()[0]["waiting"] == 1, "b to queue")
    tc, oc = _in_thread(lambda: c.lease("zero", timeout=10, renew=False))
    _until(lambda: a.leases()[0]["waiting"] == 2, "c to queue")
    first.release()
    tb.join(10)
    (lb,) = ob
    assert isinstance(lb, Lease) and not oc
    lb.release()
    tc.join(10)
    (lc,) = oc
    assert isinstance(lc, Lease) and lc.token > lb.token
    lc.release()


def test_disconnect_releases_to_the_next_in_line(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    first = a.lease("null")
    t, out = _in_thread(lambda: b.lease("null", timeout=10))
    _until(lambda: b.leases()[0]["waiting"] == 1, "b to queue")
    a.close()
    t.join(10)
    (got,) = out
    assert isinstance(got, Lease) and got.token > first.token
    assert [ls["device"] for ls in b.leases()] == ["null"]


def test_stale_holder_is_fenced(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    stale = a.lease("uart0", ttl=0.3, renew=False)
    port = a.open("uart0")
    assert port.write(b"before") == 6
    fresh = b.lease("uart0", timeout=10)  # waits until a's lease expires
    assert fresh.token > stale.token
    with pytest.raises(OSError) as info:
        port.write(b"late")
    assert info.value.errno == errno.ESTALE and "expired" in str(info.value)
    with pytest.raises(OSError) as info:
        stale.renew()
    assert info.value.errno == errno.ESTALE
    port.close()
    fresh.release()


def test_taking_a_lease_fences_other_users(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    port = b.open("uart0")
    port.write(b"x")
    with a.lease("uart0") as lease:
        with pytest.raises(OSError) as info:
            port.write(b"y")
        assert info.value.errno == errno.ESTALE
        assert f"token {lease.token}" in str(info.value)
    port.close()


def test_renewal_keeps_the_lease(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    # Renewed every ttl/3 s in the background; b waits past the ttl. The ttl is long enough
    # that a stalled test process (seconds, on a loaded CI machine) does not end the lease.
    with a.lease("spi0", ttl=2.4) as lease:
        with pytest.raises(TimeoutError):
            b.lease("spi0", timeout=3.0)
        assert lease.error is None


def test_bad_lease_arguments(clients: Callable[[], bridge.Client]) -> None:
    a = clients()
    with pytest.raises(FileNotFoundError):
        a.lease("nosuch", timeout=0)
    with pytest.raises(OSError, match="ttl") as bad:
        a.lease("null", ttl=-1)
    assert bad.value.errno == errno.EINVAL
    with a.lease("null"):
        with pytest.raises(OSError) as info:
            a.lease("null")
        assert info.value.errno == errno.EALREADY
        with pytest.raises(OSError) as info:
            a.call("release", ["null", 999999])
        assert info.value.errno == errno.ESTALE


def test_ls_shows_who_holds_what(server: ServerProc,
                                 clients: Callable[[], bridge.Client]) -> None:
    a = clients()
    with a.lease("gpiochip0") as lease:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["ls", server.url]) == 0
        line = next(x for x in out.getvalue().splitlines() if x.startswith("gpiochip0"))
        assert f"leased by {lease.holder}, token {lease.token}" in line
