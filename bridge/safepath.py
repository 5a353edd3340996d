# Hardened opening of manifest paths on the device host (POSIX only).
#
# Owns: turning a manifest path into a file descriptor without ever following a symbolic
# link. The threat: the manifest names /dev/ttyUSB0, but after the server starts someone
# who can write to a directory on the way swaps in a symlink (to /etc/shadow, to a disk),
# or a path uses `..` to climb out of /dev, or names a /proc/PID/fd/N "magic link" that
# reopens some other process's file. A configured symlink (/dev/serial/by-id/...) is
# resolved once, at manifest load, by pin(); every later open refuses links in any
# component, through openat2(RESOLVE_NO_SYMLINKS) where the kernel has it and a
# component-by-component O_NOFOLLOW walk elsewhere.
# Must not know about the protocol, sockets or devices' meaning. ctypes is loaded lazily so
# this module imports anywhere.
from __future__ import annotations

import enum
import errno
import os
import stat
import sys
from typing import Any

SYS_openat2 = 437  # the same number on every architecture (unified syscall table, 5.6+)
AT_FDCWD = -100
# linux/openat2.h
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08

_ALWAYS = os.O_CLOEXEC | os.O_NOCTTY
_O_PATH: int = getattr(os, "O_PATH", 0)
# O_PATH|O_NOFOLLOW opens a symlink itself, so fstat can tell; without O_PATH (not Linux),
# O_NOFOLLOW|O_DIRECTORY fails with ELOOP or ENOTDIR on a link.
_DIR_FLAGS = (
    (_O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    if _O_PATH
    else (os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
)

_have_openat2 = sys.platform == "linux"


class FileType(enum.Enum):
    """The kind of file a manifest path must be."""

    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    SOCKET = "socket"
    FILE = "file"
    ANY = "any"

    @classmethod
    def from_mode(cls, st_mode: int) -> FileType:
        """The type of a stat mode; ValueError for directories, links and the like."""
        for test, kind in _MODE_TESTS:
            if test(st_mode):
                return kind
        raise ValueError(f"unsupported file type: {_describe(st_mode)}")


_MODE_TESTS = (
    (stat.S_ISCHR, FileType.CHAR),
    (stat.S_ISBLK, FileType.BLOCK),
    (stat.S_ISFIFO, FileType.FIFO),
    (stat.S_ISSOCK, FileType.SOCKET),
    (stat.S_ISREG, FileType.FILE),
)


_EXPECTED = {
    FileType.CHAR: "a character device",
    FileType.BLOCK: "a block device",
    FileType.FIFO: "a FIFO",
    FileType.SOCKET: "a socket",
    FileType.FILE: "a regular file",
    FileType.ANY: "any file",
}


def _describe(st_mode: int) -> str:
    names = {
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFREG: "a regular file",
        stat.S_IFDIR: "a directory",
        stat.S_IFLNK: "a symbolic link",
    }
    return names.get(stat.S_IFMT(st_mode), f"file type {stat.S_IFMT(st_mode):#o}")


def canonical(path: str) -> str:
    """An absolute, normalised `path`; ValueError if relative, or with `..` or NUL in it."""
    if "\0" in path:
        raise ValueError(f"path {path!r} contains a NUL byte")
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} is not absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {path!r} contains '..'")
    return "/" + "/".join(parts)


def pin(path: str) -> str:
    """Resolve symlinks in a configured path once, at manifest load (by-id names and such)."""
    return canonical(os.path.realpath(canonical(path)))


def _loop_error(path: str) -> OSError:
    return OSError(errno.ELOOP, "refusing to follow a symbolic link in the path", path)


class _Unsupported(Exception):
    """openat2 cannot be used here; walk the path instead."""


def _openat2(path: str, flags: int) -> int:
    try:
        import ctypes

        class _OpenHow(ctypes.Structure):
            _fields_ = [  # struct open_how, linux/openat2.h
                ("flags", ctypes.c_uint64),
                ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64),
            ]

        libc: Any = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (ImportError, OSError, AttributeError) as exc:
        raise _Unsupported from exc
    syscall.restype = ctypes.c_long
    how = _OpenHow(flags, 0, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    fd = syscall(
        ctypes.c_long(SYS_openat2),
        ctypes.c_int(AT_FDCWD),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    # ENOSYS: kernel before 5.6; EPERM: seccomp filters (older container runtimes) that
    # reject unknown syscalls. The walk is as strict, and reports a real EPERM itself.
    if err in (errno.ENOSYS, errno.EPERM):
        raise _Unsupported
    if err == errno.ELOOP:
        raise _loop_error(path)
    raise OSError(err, os.strerror(err), path)


def _open_dir(name: str, dir_fd: int, path: str) -> int:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP or _is_link(name, dir_fd):
            raise _loop_error(path) from None
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISLNK(mode):
            raise _loop_error(path)
        if not stat.S_ISDIR(mode):
            raise OSError(errno.ENOTDIR, f"{name!r} is not a directory", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_walk(path: str, flags: int) -> int:
    *dirs, last = path.split("/")[1:]
    dir_fd = os.open("/", _DIR_FLAGS)
    try:
        for name in dirs:
            next_fd = _open_dir(name, dir_fd, path)
            os.close(dir_fd)
            dir_fd = next_fd
        try:
            return os.open(last, flags | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP or _is_link(last, dir_fd):
                raise _loop_error(path) from None
            raise OSError(exc.errno, exc.strerror, path) from None
    finally:
        os.close(dir_fd)


def _open_nofollow(path: str, flags: int) -> int:
    global _have_openat2
    if _have_openat2:
        try:
            return _openat2(path, flags)
        except _Unsupported:
            _have_openat2 = False
    return _open_walk(path, flags)


def open_device(path: str, flags: int, expect: FileType) -> int:
    """Open `path` refusing symlinks in any component; check it is of type `expect`.

    O_CLOEXEC and O_NOCTTY are always added. A symlink raises OSError(ELOOP); a file of
    the wrong type raises OSError(EACCES). Never creates files (O_CREAT is a ValueError).
    """
    if flags & os.O_CREAT:
        raise ValueError("open_device never creates files; O_CREAT is not allowed")
    path = canonical(path)
    if path == "/":
        raise ValueError("refusing to open '/'")
    fd = _open_nofollow(path, flags | _ALWAYS)
    try:
        mode = os.fstat(fd).st_mode
        if expect is not FileType.ANY and not _matches(mode, expect):
            raise OSError(
                errno.EACCES,
                f"expected {_EXPECTED[expect]} but found {_describe(mode)}",
                path,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _matches(st_mode: int, expect: FileType) -> bool:
    try:
        return FileType.from_mode(st_mode) is expect
    except ValueError:
        return False
