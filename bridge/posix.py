# The posix backend: real device nodes on a Linux or Solaris host, opened through the
# hardened path code and driven with os.read/os.write/fcntl.ioctl on non-blocking fds.
# Must not know about the wire or the session; later kinds (serial, i2c, spi, gpio) add
# their handle classes here or in their own posix_<kind> modules.
from __future__ import annotations

import errno
import fcntl
import importlib
import os
import select
import stat
import threading
from collections.abc import Sequence
from typing import Any

from . import safepath
from .backend import Access, Backend, DeviceHandle, NodeHandle
from .ioctl import NO_WAIT
from .manifest import DeviceSpec

POSIX_KINDS = ("serial", "i2c", "spi", "gpio", "usb", "library")

# A waiting thread wakes this often to notice that its handle was closed under it.
WAIT_SLICE = 0.25

_FLAGS = {Access.READ: os.O_RDONLY, Access.WRITE: os.O_WRONLY, Access.RW: os.O_RDWR}


# What each pinned path was when the server started: the device number of a device node,
# else the inode. A later open must find the same thing there, so a bind mount (or a
# rename) that puts another file or device at a manifest path is refused. A path that did
# not exist at start (a device plugged in later) is only type-checked.
_IDENTITY: dict[str, tuple[int, ...]] = {}


def _identity(st: os.stat_result) -> tuple[int, ...]:
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return (st.st_mode & 0o170000, st.st_rdev)
    return (st.st_mode & 0o170000, st.st_dev, st.st_ino)


def open_fd(spec: DeviceSpec, path: str, access: Access) -> int:
    """Open ``path`` for ``spec`` with no symlink anywhere, non-blocking, type-checked,
    and the same device or file that was there when the server started."""
    if access not in _FLAGS:
        raise PermissionError(errno.EACCES, "open needs read or write access")
    expect = safepath.FileType[spec.file_type.upper()]
    fd = safepath.open_device(path, _FLAGS[access] | os.O_NONBLOCK, expect)
    pinned = _IDENTITY.get(path)
    if pinned is not None and _identity(os.fstat(fd)) != pinned:
        os.close(fd)
        raise PermissionError(errno.EACCES, f"{path} is not the file it was when the server "
                                            "started (replaced or mounted over)")
    return fd


class FdOwner:
    """The one file descriptor a posix handle owns: used under ``_lock``, closed once."""

    fd: int
    closed: bool
    _lock: threading.Lock

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)

    def describe(self) -> dict[str, Any]:
        return {"fd": self.fd}


class PosixNode(FdOwner, NodeHandle):
    """A raw device node: one non-blocking file descriptor."""

    def __init__(self, spec: DeviceSpec, fd: int) -> None:
        super().__init__(spec)
        self.fd = fd
        self._lock = threading.Lock()
        # The manifest's ioctls the kernel answers at once (ioctl.NO_WAIT), by name.
        self._no_wait = frozenset(name for name, s in spec.ioctls.items()
                                  if (s.name, s.request) in NO_WAIT)

    def _fd(self) -> int:
        if self.closed:
            raise OSError(errno.EBADF, "handle is closed")
        return self.fd

    def inline(self, op: str, args: Sequence[Any]) -> bool:
        """Only ioctls the kernel answers at once (by name: ioctl.NO_WAIT)."""
        return op == "ioctl" and len(args) > 1 and type(args[1]) is str and \
            args[1] in self._no_wait

    def read_nowait(self, n: int) -> bytes | None:
        with self._lock:
            if self.closed:  # _fd(), inline: this is every small read's path
                raise OSError(errno.EBADF, "handle is closed")
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                return None

    def write_nowait(self, data: bytes) -> int | None:
        with self._lock:
            try:
                return os.write(self._fd(), data)
            except BlockingIOError:
                return None

    def wait(self, write: bool, timeout: float | None) -> bool:
        p = select.poll()
        mask = select.POLLOUT if write else select.POLLIN
        p.register(self._fd(), mask)
        remaining = timeout
        while True:
            step = WAIT_SLICE if remaining is None else min(WAIT_SLICE, remaining)
            events = p.poll(step * 1000)
            self._fd()
            if events:
                return True
            if remaining is not None:
                remaining -= step
                if remaining <= 0:
                    return False

    def do_ioctl(self, request: int, arg: int | bytearray) -> int:
        with self._lock:
            if self.closed:  # _fd(), inline: every ioctl's path
                raise OSError(errno.EBADF, "handle is closed")
            if type(arg) is bytearray:
                return int(fcntl.ioctl(self.fd, request, arg, True))
            return int(fcntl.ioctl(self.fd, request, arg))



class PosixBackend(Backend):
    """Real hardware through the host's device nodes."""

    name = "posix"

    def __init__(self) -> None:
        self._pinned: dict[str, str] = {}

    def prepare(self, spec: DeviceSpec) -> None:
        """Resolve the manifest path once, at start: later symlink swaps are refused."""
        if spec.path is not None and spec.path not in self._pinned:
            pinned = self._pinned[spec.path] = safepath.pin(spec.path)
            if spec.kind != "library":
                try:
                    _IDENTITY[pinned] = _identity(os.stat(pinned, follow_symlinks=False))
                except OSError:
                    pass  # not there yet (hot-plug): type checks only

    def path(self, spec: DeviceSpec) -> str:
        assert spec.path is not None
        if spec.path not in self._pinned:
            self.prepare(spec)
        return self._pinned[spec.path]

    def open(self, spec: DeviceSpec, access: Access) -> DeviceHandle:
        if spec.kind == "node":
            return PosixNode(spec, open_fd(spec, self.path(spec), access))
        # Every other kind lives in its own module, bridge/posix_<kind>.py, exposing
        # open_device(backend, spec, access) -> DeviceHandle.
        if spec.kind not in POSIX_KINDS:
            raise OSError(errno.ENODEV, f"the posix backend has no {spec.kind} support")
        try:
            module = importlib.import_module(f"bridge.posix_{spec.kind}")
        except ModuleNotFoundError as e:
            if e.name != f"bridge.posix_{spec.kind}":
                raise
            raise OSError(errno.ENODEV, f"the posix backend has no {spec.kind} support") from None
        handle: DeviceHandle = module.open_device(self, spec, access)
        return handle

    def describe(self, spec: DeviceSpec) -> dict[str, Any]:
        return {"backend": "posix"}
