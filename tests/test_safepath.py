"""bridge.safepath: opening manifest paths without following symlinks, on both the
openat2 path and the component walk, with no file descriptor leaked on any path."""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

if sys.platform != "linux":
    pytest.skip("safepath tests count fds in /proc/self/fd", allow_module_level=True)

from bridge import safepath
from bridge.safepath import FileType, canonical, open_device, pin


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=["openat2", "walk"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run each test through openat2 and through the fallback walk; check no fd leaks."""
    if request.param == "openat2":
        try:
            os.close(safepath._openat2("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except safepath._Unsupported:
            pytest.skip("openat2 not available on this kernel")
        monkeypatch.setattr(safepath, "_have_openat2", True)
    else:
        monkeypatch.setattr(safepath, "_have_openat2", False)
    before = _fd_count()
    yield request.param
    assert _fd_count() == before, "file descriptor leaked"


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """tmp_path with any symlinks in it (a /tmp link, say) resolved, as pin() would."""
    return Path(pin(str(tmp_path)))


def _expect_errno(code: int, path: str, kind: FileType = FileType.ANY) -> OSError:
    with pytest.raises(OSError) as info:
        fd = open_device(path, os.O_RDONLY, kind)
        os.close(fd)
    assert info.value.errno == code, info.value
    return info.value


def test_regular_file(impl: str, tmp: Path) -> None:
    f = tmp / "data"
    f.write_bytes(b"abc")
    fd = open_device(str(f), os.O_RDONLY, FileType.FILE)
    try:
        assert os.read(fd, 3) == b"abc"
        assert os.get_inheritable(fd) is False
        assert stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_wrong_type(impl: str, tmp: Path) -> None:
    f = tmp / "data"
    f.write_bytes(b"abc")
    err = _expect_errno(errno.EACCES, str(f), FileType.CHAR)
    assert "character device" in str(err) and "regular file" in str(err)


def test_directory_is_wrong_type(impl: str, tmp: Path) -> None:
    err = _expect_errno(errno.EACCES, str(tmp), FileType.FILE)
    assert "directory" in str(err)


def test_dev_null(impl: str) -> None:
    fd = open_device("/dev/null", os.O_RDWR, FileType.CHAR)
    try:
        assert os.write(fd, b"x") == 1
    finally:
        os.close(fd)


def test_any_accepts_char(impl: str) -> None:
    os.close(open_device("/dev/null", os.O_RDONLY, FileType.ANY))


def test_missing_file(impl: str, tmp: Path) -> None:
    _expect_errno(errno.ENOENT, str(tmp / "nope"))
    _expect_errno(errno.ENOENT, str(tmp / "nodir" / "nope"))


def test_symlink_last_component(impl: str, tmp: Path) -> None:
    target = tmp / "data"
    target.write_bytes(b"abc")
    (tmp / "link").symlink_to(target)
    err = _expect_errno(errno.ELOOP, str(tmp / "link"))
    assert "symbolic link" in str(err)


def test_symlink_to_device(impl: str, tmp: Path) -> None:
    (tmp / "ttyFAKE").symlink_to("/dev/null")
    _expect_errno(errno.ELOOP, str(tmp / "ttyFAKE"), FileType.CHAR)


def test_symlink_intermediate_component(impl: str, tmp: Path) -> None:
    real = tmp / "real"
    real.mkdir()
    (real / "data").write_bytes(b"abc")
    (tmp / "dirlink").symlink_to(real)
    _expect_errno(errno.ELOOP, str(tmp / "dirlink" / "data"), FileType.FILE)


def test_file_as_directory(impl: str, tmp: Path) -> None:
    (tmp / "data").write_bytes(b"abc")
    _expect_errno(errno.ENOTDIR, str(tmp / "data" / "x"))


def test_swap_after_pin(impl: str, tmp: Path) -> None:
    dev = tmp / "ttyUSB0"
    dev.write_bytes(b"abc")
    pinned = pin(str(dev))
    assert pinned == str(dev.resolve())
    os.close(open_device(pinned, os.O_RDONLY, FileType.FILE))
    secret = tmp / "secret"
    secret.write_bytes(b"private")
    dev.unlink()
    dev.symlink_to(secret)
    _expect_errno(errno.ELOOP, pinned, FileType.FILE)


def test_magic_link(impl: str, tmp: Path) -> None:
    f = tmp / "data"
    f.write_bytes(b"abc")
    fd = os.open(f, os.O_RDONLY)
    try:
        _expect_errno(errno.ELOOP, f"/proc/{os.getpid()}/fd/{fd}")
        _expect_errno(errno.ELOOP, f"/proc/self/fd/{fd}")
        _expect_errno(errno.ELOOP, f"/proc/{os.getpid()}/root{f}")
    finally:
        os.close(fd)


def test_creat_refused(tmp: Path) -> None:
    with pytest.raises(ValueError, match="O_CREAT"):
        open_device(str(tmp / "new"), os.O_WRONLY | os.O_CREAT, FileType.FILE)
    assert not (tmp / "new").exists()


def test_canonical() -> None:
    assert canonical("/dev/ttyUSB0") == "/dev/ttyUSB0"
    assert canonical("//dev/./serial//x/") == "/dev/serial/x"
    for bad in ("dev/null", "", "/dev/../etc/shadow", "/dev/null/..", "/dev/\0null"):
        with pytest.raises(ValueError):
            canonical(bad)


def test_dotdot_refused_by_open(tmp: Path) -> None:
    before = _fd_count()
    with pytest.raises(ValueError, match=r"\.\."):
        open_device(f"{tmp}/../etc/passwd", os.O_RDONLY, FileType.ANY)
    assert _fd_count() == before


def test_pin_resolves_configured_symlink(tmp: Path) -> None:
    (tmp / "by-id").mkdir()
    (tmp / "by-id" / "usb-FTDI").symlink_to("../ttyUSB0")
    (tmp / "ttyUSB0").write_bytes(b"")
    assert pin(str(tmp / "by-id" / "usb-FTDI")) == str((tmp / "ttyUSB0").resolve())
    with pytest.raises(ValueError):
        pin("relative/path")


def test_from_mode() -> None:
    assert FileType.from_mode(os.stat("/dev/null").st_mode) is FileType.CHAR
    assert FileType.from_mode(stat.S_IFREG | 0o644) is FileType.FILE
    assert FileType.from_mode(stat.S_IFIFO) is FileType.FIFO
    assert FileType.from_mode(stat.S_IFBLK) is FileType.BLOCK
    assert FileType.from_mode(stat.S_IFSOCK) is FileType.SOCKET
    with pytest.raises(ValueError):
        FileType.from_mode(stat.S_IFDIR)
