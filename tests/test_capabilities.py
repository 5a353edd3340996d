"""Capability tokens end to end, through real server processes: a handle narrowed and passed
to another connection (or principal) can do at most what the token says, re-sharing only
narrows, and revoking, closing the original or dropping its connection fences every handle
derived from it; forged tokens and tokens of another host or an earlier run are useless."""
from __future__ import annotations

import errno
import os
import secrets
import select
import time
from collections.abc import Callable, Iterator

import pytest

import bridge

from .conftest import ServerProc
from .security_helpers import Pki, pki

__all__ = ["pki"]


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    """A real pty pair: (master fd, slave path)."""
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def _manifest(path: str) -> str:
    return (f'[devices.tty]\nkind = "node"\npath = "{path}"\n'
            'ioctls = ["TIOCGWINSZ", "FIONREAD"]\n'
            '[devices.null]\nkind = "node"\nsim = "null"\n')


@pytest.fixture
def host(make_server: Callable[..., ServerProc], pty: tuple[int, str]) -> ServerProc:
    return make_server(_manifest(pty[1]))


@pytest.fixture
def clients(host: ServerProc) -> Iterator[Callable[[], bridge.Client]]:
    made: list[bridge.Client] = []

    def make() -> bridge.Client:
        c = bridge.connect(host.url)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _stale(op: Callable[[], object]) -> OSError:
    with pytest.raises(OSError) as exc:
        op()
    assert exc.value.errno == errno.ESTALE, exc.value
    return exc.value


def _until_stale(op: Callable[[], object], what: str) -> None:
    """The host notices a dropped connection on its own thread: wait for it, bounded."""
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            op()
        except OSError as e:
            if e.errno == errno.ESTALE:
                return
            raise
        time.sleep(0.02)
    raise AssertionError(f"{what} was never fenced")


def test_read_only_token_reads_but_cannot_write(clients: Callable[[], bridge.Client],
                                                pty: tuple[int, str]) -> None:
    master, _ = pty
    a, b = clients(), clients()
    dev = a.open("tty")
    token = dev.share(access="r")
    assert type(token) is bytes and len(token) == 32
    ro = b.adopt(token)
    assert ro.description["access"] == "r"
    os.write(master, b"hello\n")
    ro.timeout = 5.0
    assert ro.read(64) == b"hello\n"
    with pytest.raises(PermissionError):
        ro.write(b"nope\n")
    assert dev.write(b"ok\n") == 3  # the original keeps its rights
    out = b""
    for _ in range(50):  # the echo of hello may come in its own read
        if select.select([master], [], [], 5)[0]:
            out += os.read(master, 64)
        if out.endswith(b"ok\r\n"):
            break
    assert out.endswith(b"ok\r\n"), out


def test_sharing_again_only_narrows(clients: Callable[[], bridge.Client],
                                    pty: tuple[int, str]) -> None:
    master, _ = pty
    a, b, c = clients(), clients(), clients()
    dev = a.open("tty")
    mid = b.adopt(dev.share(access="r", ioctls=["FIONREAD"]))
    with pytest.raises(PermissionError):
        mid.share(access="rw")  # a write right the handle does not have
    with pytest.raises(PermissionError):
        mid.share(ioctls=["TIOCGWINSZ"])  # an ioctl it may not issue
    with pytest.raises(PermissionError):
        mid.ioctl("TIOCGWINSZ")
    assert mid.ioctl("FIONREAD") == bytes(4)  # nothing waiting to be read
    last = c.adopt(mid.share(ioctls=[]))
    assert last.description["access"] == "r" and "ioctls" not in last.description
    with pytest.raises(PermissionError):
        last.ioctl("FIONREAD")
    with pytest.raises(PermissionError):
        last.write(b"x")
    os.write(master, b"down the line\n")
    last.timeout = 5.0
    assert last.read(64) == b"down the line\n"


def test_revoke_fences_the_adopted_handle(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    dev = a.open("tty")
    token = dev.share(access="r")
    ro = b.adopt(token)
    ro.timeout = 0
    assert ro.poll(0) in (True, False)
    with pytest.raises(PermissionError):
        b.revoke(token)  # only the connection that made it
    assert dev.revoke(token) is True
    err = _stale(lambda: ro.poll(0))
    assert "revoked" in str(err)
    assert dev.revoke(token) is False  # already gone
    with pytest.raises(PermissionError):
        b.adopt(token)
    ro.close()  # closing a fenced handle is fine


def test_closing_or_dropping_the_original_fences_everything_derived(
        clients: Callable[[], bridge.Client]) -> None:
    a, b, c = clients(), clients(), clients()
    dev = a.open("null")
    derived = b.adopt(dev.share())
    second = c.adopt(derived.share(access="r"))
    dev.close()
    _stale(lambda: derived.write(b"x"))
    _stale(lambda: second.read(1))
    # and by the end of the connection
    dev = a.open("null")
    derived = b.adopt(dev.share(access="w"))
    assert derived.write(b"abc") == 3
    a.close()
    _until_stale(lambda: derived.write(b"abc"), "a handle derived from a closed connection")


def test_closing_an_adopted_handle_revokes_its_own_tokens(
        clients: Callable[[], bridge.Client]) -> None:
    a, b, c = clients(), clients(), clients()
    dev = a.open("null")
    mid = b.adopt(dev.share())
    last = c.adopt(mid.share())
    mid.close()
    _stale(lambda: last.write(b"x"))
    assert dev.write(b"still mine") == 10  # upstream is untouched


def test_forged_tokens_are_refused(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    real = a.open("null").share()
    for forged in (secrets.token_bytes(32), real[:-1], real + b"\0", b"",
                   bytes(32), bytes([real[0] ^ 1]) + real[1:]):
        with pytest.raises(PermissionError, match="not a live capability token"):
            b.adopt(forged)
    with pytest.raises(PermissionError):
        b.call("adopt", ["a string, not a token"])
    assert b.adopt(real.hex()).write(b"ok") == 2  # the real one, as hex


def test_expired_token_fences(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    token = a.open("null").share(ttl=0.3)
    derived = b.adopt(token)
    _until_stale(lambda: derived.write(b"x"), "a handle adopted through an expired token")
    with pytest.raises(PermissionError):
        b.adopt(token)


def test_token_of_another_host_or_an_earlier_run_is_useless(
        make_server: Callable[..., ServerProc], pty: tuple[int, str]) -> None:
    text = _manifest(pty[1])
    one, two = make_server(text), make_server(text)
    with bridge.connect(one.url) as a, bridge.connect(two.url) as b:
        token = a.open("null").share()
        with pytest.raises(PermissionError):
            b.adopt(token)
        assert a.adopt(token).write(b"x") == 1  # valid where it was made
    one.stop()
    again = make_server(text)
    with bridge.connect(again.url) as c, pytest.raises(PermissionError):
        c.adopt(token)


def test_adopt_through_a_lease_holder(clients: Callable[[], bridge.Client]) -> None:
    a, b = clients(), clients()
    with a.lease("null"):
        with pytest.raises(OSError) as exc:
            b.open("null")
        assert exc.value.errno == errno.EBUSY
        dev = a.open("null")
        assert b.adopt(dev.share()).write(b"delegated") == 9


def test_another_principal_without_a_grant(make_server: Callable[..., ServerProc],
                                           pki: Pki) -> None:
    host = make_server(pki.manifest())
    with bridge.connect(host.url, **pki.client("alice")) as alice, \
            bridge.connect(host.url, **pki.client("bob")) as bob:
        with pytest.raises(PermissionError, match="no grant"):
            bob.open("null")
        ro = bob.adopt(alice.open("null").share(access="r"))
        assert ro.read(16) == b""  # /dev/null semantics: end of file
        with pytest.raises(PermissionError):
            ro.write(b"x")
        lib = alice.open("vendorlib")
        with pytest.raises(PermissionError):  # alice's grant has dev_add only
            alice.share(lib, functions=["dev_checksum"])
        theirs = bob.adopt(alice.share(lib, functions=["dev_add"]))
        assert theirs.dev_add(20, 22) == 42
