"""Grants end to end: each principal sees and uses only what its grant gives, narrowed from
the manifest and never widened; without a grant, nothing (PermissionError)."""
from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

import pytest

import bridge
from bridge.grants import Grant, Policy
from bridge.manifest import ManifestError, parse

from .conftest import ServerProc, start_server
from .security_helpers import DEVICES, Pki, pki

__all__ = ["pki"]


@pytest.fixture(scope="module")
def host(pki: Pki) -> Iterator[ServerProc]:
    with start_server(pki.manifest(), workdir=pki.dir) as s:
        yield s


@pytest.fixture
def alice(host: ServerProc, pki: Pki) -> Iterator[bridge.Client]:
    with bridge.connect(host.url, **pki.client("alice")) as c:
        yield c


def test_a_principal_sees_only_its_grant(alice: bridge.Client) -> None:
    seen = {d.name: d.access for d in alice.devices()}
    assert seen == {"null": "rw", "uart0": "r", "vendorlib": "rw"}
    assert sorted(d["name"] for d in alice.server_info["devices"]) == sorted(seen)


def test_access_is_narrowed(alice: bridge.Client) -> None:
    with pytest.raises(PermissionError, match="grants 'r'"):
        alice.open("uart0", "rw")
    port = alice.open("uart0")
    try:
        with pytest.raises(PermissionError):
            port.write(b"x")
    finally:
        port.close()


def test_ungranted_device_is_permission_error(alice: bridge.Client) -> None:
    with pytest.raises(PermissionError, match="alice has no grant for zero"):
        alice.open("zero")
    with pytest.raises(FileNotFoundError):
        alice.open("nosuchdevice")


def test_ioctls_are_narrowed(alice: bridge.Client) -> None:
    with alice.open("null") as dev:
        with pytest.raises(PermissionError, match="FIONREAD"):
            dev.ioctl("FIONREAD")


def test_library_functions_are_narrowed(alice: bridge.Client) -> None:
    h = alice.call("open", ["vendorlib"])
    assert [f["name"] for f in alice.call("functions", [h])] == ["dev_add"]
    assert alice.call("call", [h, "dev_add", [2, 3], None]) == [5]
    with pytest.raises(PermissionError, match="dev_checksum"):
        alice.call("call", [h, "dev_checksum", [b"ab", 2], None])


def test_principal_without_grant_sees_nothing(host: ServerProc, pki: Pki) -> None:
    with bridge.connect(host.url, **pki.client("bob")) as bob:
        assert bob.devices() == []
        for name in ("null", "zero", "uart0", "vendorlib"):
            with pytest.raises(PermissionError) as info:
                bob.open(name)
            assert info.value.errno == errno.EACCES
            with pytest.raises(PermissionError):
                bob.info(name)
        with pytest.raises(PermissionError):
            bob.lease("null", timeout=0)


def test_anonymous_only_where_the_manifest_says(make_server: Callable[..., ServerProc]) -> None:
    closed = make_server(DEVICES + '[grants.someone]\nnull = "r"\n')
    with pytest.raises(PermissionError, match="no anonymous clients"):
        bridge.connect(closed.url)
    opened = make_server('[server]\nallow_anonymous = true\n' + DEVICES
                         + '[grants.anonymous]\nzero = "r"\n')
    with bridge.connect(opened.url) as c:
        assert [d.name for d in c.devices()] == ["zero"]
        with pytest.raises(PermissionError):
            c.open("null")


def test_a_grant_never_widens() -> None:
    m = parse({"devices": {"ro": {"kind": "node", "sim": "zero", "access": "r",
                                  "ioctls": ["FIONREAD"]}},
               "grants": {"x": {"ro": "rw"}, "y": {"*": {"access": "w"}}}})
    assert m.policy.view("x", m.devices).devices["ro"].access.text() == "r"
    assert m.policy.view("y", m.devices).devices["ro"].access.text() == ""
    assert m.policy.view("z", m.devices).devices == {}
    with pytest.raises(ManifestError, match="cannot widen"):
        parse({"devices": {"ro": {"kind": "node", "sim": "zero", "ioctls": ["FIONREAD"]}},
               "grants": {"x": {"ro": {"ioctls": ["TCGETS"]}}}})
    with pytest.raises(ManifestError, match="no device 'ghost'"):
        parse({"devices": {}, "grants": {"x": {"ghost": "r"}}})
    with pytest.raises(ManifestError, match="names no"):
        parse({"devices": {}, "principals": {"a": {}}, "grants": {"b": {}}})


def test_unrestricted_policy_is_the_whole_manifest() -> None:
    m = parse({"devices": {"z": {"kind": "node", "sim": "zero"}}})
    assert m.policy == Policy() and m.policy.view("anonymous", m.devices).devices is m.devices
    assert Grant().ioctls is None
