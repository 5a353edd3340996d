# Everything the manifest does not allow is refused with a clear error, and the server goes
# on serving other clients: unknown devices, paths as device names, a symlink swapped in
# after start, ioctls off the allowlist or with the wrong size, writes to read-only devices
# and opening with more access than granted.
from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import bridge
from bridge.testing import start_server

from .conftest import ServerProc
from .nodes_helpers import Pty, Winsize, node_manifest

RO_NULL = """
[devices.ronull]
kind = "node"
path = "/dev/null"
access = "r"
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One server for the module: a pty slave, the kernel nodes and a read-only null."""
    master, slave = os.openpty()
    pty = Pty(master, slave, os.ttyname(slave))
    s = start_server(node_manifest(pty, RO_NULL), workdir=tmp_path_factory.mktemp("deny"))
    try:
        yield s
    finally:
        s.stop()
        os.close(master)
        os.close(slave)


@pytest.fixture
def host(server: ServerProc) -> Iterator[bridge.Client]:
    with bridge.connect(server.url) as client:
        yield client


def still_serving(server: ServerProc) -> None:
    """Another client connects and works, and the first connection's failure did no harm."""
    with bridge.connect(server.url) as other, other.open("zero") as z:
        assert z.read(8) == bytes(8)


@pytest.mark.parametrize("name", ["nosuch", "/etc/passwd", "../x", "/dev/zero", "zero/..",
                                  "", "ZERO", "zero\0"])
def test_only_manifest_names_open(host: bridge.Client, server: ServerProc, name: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        host.open(name)
    assert info.value.errno == errno.ENOENT
    assert repr(name) in str(info.value) or name in str(info.value)
    with pytest.raises(FileNotFoundError):
        host.info(name)
    assert host.open("zero").read(1) == b"\0"  # the same connection still works
    still_serving(server)


def test_no_operation_names_a_path(host: bridge.Client) -> None:
    """The only ops that take a name are open and info, and both look it up in the manifest."""
    for op, args in [("read", ["/etc/passwd", 16, None]), ("ioctl", ["/dev/zero", 0, None]),
                     ("openat", ["/etc/passwd"]), ("load", ["/lib/libc.so.6"])]:
        with pytest.raises(OSError):
            host.call(op, args)
    info = host.info("pty")
    assert "path" not in info and "/dev" not in repr(info)  # clients never see host paths


def test_symlink_swapped_in_after_start(tmp_path: Path,
                                        make_server: Callable[..., ServerProc]) -> None:
    swap = tmp_path / "swap.bin"
    swap.write_bytes(b"file contents")
    server = make_server(f'[devices.swap]\nkind = "node"\npath = "{swap}"\n'
                         'file_type = "file"\naccess = "r"\n')
    host = bridge.connect(server.url)
    with host.open("swap") as dev:  # the real file opens
        assert dev.read(100) == b"file contents"
    swap.unlink()
    os.symlink("/dev/zero", swap)
    with pytest.raises(OSError) as info:
        host.open("swap")
    assert info.value.errno in (errno.ELOOP, errno.EACCES)
    assert "swap" in str(info.value)
    host.close()
    still_serving_any(server)


def test_symlink_swapped_for_a_directory_on_the_way(tmp_path: Path,
                                                    make_server: Callable[..., ServerProc]
                                                    ) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    (d / "f").write_bytes(b"ok")
    server = make_server(f'[devices.f]\nkind = "node"\npath = "{d}/f"\nfile_type = "file"\n')
    with bridge.connect(server.url) as host:
        assert host.open("f").read(10) == b"ok"
        other = tmp_path / "other"
        other.mkdir()
        (other / "f").write_bytes(b"evil")
        d.rename(tmp_path / "old")
        os.symlink(other, d)
        with pytest.raises(OSError) as info:
            host.open("f")
        assert info.value.errno in (errno.ELOOP, errno.EACCES)
    still_serving_any(server)


def still_serving_any(server: ServerProc) -> None:
    """A new client connects and lists the devices."""
    with bridge.connect(server.url) as other:
        assert other.devices()


def test_wrong_file_type_is_refused(tmp_path: Path,
                                    make_server: Callable[..., ServerProc]) -> None:
    f = tmp_path / "plain"
    f.write_bytes(b"x")
    server = make_server(f'[devices.f]\nkind = "node"\npath = "{f}"\n')  # expects a char dev
    with bridge.connect(server.url) as host, pytest.raises(PermissionError) as info:
        host.open("f")
    assert "character device" in str(info.value)


def test_ioctl_not_allowlisted(host: bridge.Client, server: ServerProc) -> None:
    with host.open("pty") as dev:
        for request in ("TIOCEXCL", "TCFLSH", 0x540C, "NOT_AN_IOCTL"):
            with pytest.raises(PermissionError) as info:
                dev.ioctl(request)
            assert info.value.errno == errno.EACCES
            assert "pty" in str(info.value) and "ioctl" in str(info.value)
        assert dev.ioctl("TIOCGWINSZ", Winsize()).ws_row >= 0  # the handle still works
    with host.open("null") as n, pytest.raises(PermissionError):
        n.ioctl("FIONREAD")  # allowed on pty, not on null
    still_serving(server)


@pytest.mark.parametrize("size", [0, 3, 7, 9, 64])
def test_wrong_ioctl_size(host: bridge.Client, server: ServerProc, size: int) -> None:
    with host.open("pty") as dev, pytest.raises(OSError) as info:
        dev.ioctl("TIOCSWINSZ", bytes(size))
    assert info.value.errno == errno.EINVAL
    assert "8-byte" in str(info.value) and f"{size} bytes" in str(info.value)
    still_serving(server)


def test_wrong_ioctl_argument_type(host: bridge.Client) -> None:
    with host.open("pty") as dev:
        for arg in (5, "text", [1, 2]):
            with pytest.raises(OSError) as info:
                dev.ioctl("TCSETS", arg)
            assert info.value.errno == errno.EINVAL


def test_write_to_a_read_only_device(host: bridge.Client, server: ServerProc) -> None:
    for name in ("zero", "ronull"):
        with host.open(name) as dev, pytest.raises(PermissionError) as info:
            dev.write(b"x")
        assert info.value.errno == errno.EACCES and name in str(info.value)
    still_serving(server)


def test_more_access_than_granted(host: bridge.Client, server: ServerProc) -> None:
    for access in ("rw", "w"):
        with pytest.raises(PermissionError) as info:
            host.open("ronull", access)
        assert "ronull" in str(info.value)
    with host.open("pty", "r") as ro, pytest.raises(PermissionError):
        ro.write(b"x")  # a narrower handle than the manifest allows stays narrow
    with host.open("pty", "w") as wo, pytest.raises(PermissionError):
        wo.read(1)
    with pytest.raises(OSError) as info:
        host.open("pty", "rwx")
    assert info.value.errno == errno.EINVAL
    still_serving(server)


def test_bad_arguments_are_errors_not_crashes(host: bridge.Client, server: ServerProc) -> None:
    with host.open("zero") as z:
        h = z.handle
        for op, args in [("read", [h, -1, None]), ("read", [h, "x", None]),
                         ("read", [h, 1, -5]), ("read", [h]), ("read", []),
                         ("read", [h + 1000, 1, None]), ("close", ["x"]), ("open", []),
                         ("open", [1, 2, 3]), ("poll", [h, "soon"]), ("devices", [1]),
                         ("nosuchop", [h])]:
            with pytest.raises(OSError):
                host.call(op, args)
        assert z.read(2) == bytes(2)
    still_serving(server)
