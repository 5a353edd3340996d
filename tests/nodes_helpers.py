# Shared pieces of the end-to-end tests on real kernel nodes: a raw pty pair, a manifest that
# exposes its slave and /dev/null, /dev/zero, /dev/full, and bounded waits. Test-only.
from __future__ import annotations

import ctypes
import fcntl
import os
import select
import struct
import termios
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from bridge.testing import ServerProc, start_server

PTY_IOCTLS = '["TCGETS", "TCSETS", "TIOCGWINSZ", "TIOCSWINSZ", "FIONREAD"]'


class Winsize(ctypes.Structure):
    """struct winsize of include/uapi/asm-generic/termios.h."""

    _fields_ = [("ws_row", ctypes.c_ushort), ("ws_col", ctypes.c_ushort),
                ("ws_xpixel", ctypes.c_ushort), ("ws_ypixel", ctypes.c_ushort)]


@dataclass
class Pty:
    """A pty pair in raw mode: the test drives ``master``; the bridge serves ``path``."""

    master: int
    slave: int
    path: str

    def read_master(self, n: int, timeout: float = 5.0) -> bytes:
        """Exactly ``n`` bytes from the master, or AssertionError after ``timeout`` s."""
        out = b""
        end = time.monotonic() + timeout
        while len(out) < n:
            left = end - time.monotonic()
            assert left > 0, f"only {out!r} of {n} bytes arrived on the pty master"
            if select.select([self.master], [], [], left)[0]:
                out += os.read(self.master, n - len(out))
        return out

    def pending_on_slave(self) -> int:
        buf = fcntl.ioctl(self.slave, termios.FIONREAD, b"\0" * 4)
        return int(struct.unpack("i", buf)[0])

    def wait_pending(self, n: int, timeout: float = 5.0) -> None:
        """Wait until the slave has ``n`` bytes queued (the tty layer moves them lazily)."""
        end = time.monotonic() + timeout
        while self.pending_on_slave() < n:
            assert time.monotonic() < end, "bytes written to the master never reached the slave"
            time.sleep(0.005)


@pytest.fixture
def pty_pair() -> Iterator[Pty]:
    """A fresh raw pty pair for one test."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield Pty(master, slave, os.ttyname(slave))
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture(scope="module")
def node_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, Pty]]:
    """One server per test module serving a pty slave (see node_manifest) and kernel nodes."""
    master, slave = os.openpty()
    pty = Pty(master, slave, os.ttyname(slave))
    server = start_server(node_manifest(pty), workdir=tmp_path_factory.mktemp("nodes"))
    try:
        yield server, pty
    finally:
        server.stop()
        os.close(master)
        os.close(slave)


@pytest.fixture
def shared_pty(node_server: tuple[ServerProc, Pty]) -> Pty:
    """The module's pty, reset for this test: raw mode, no pending bytes, 0x0 window."""
    pty = node_server[1]
    tty.setraw(pty.slave)
    fcntl.ioctl(pty.slave, termios.TIOCSWINSZ, bytes(8))
    for fd in (pty.master, pty.slave):
        while select.select([fd], [], [], 0)[0]:
            os.read(fd, 65536)
    return pty


def node_manifest(pty: Pty, extra: str = "") -> str:
    """The pty slave and the kernel's null, zero and full nodes, plus ``extra`` TOML."""
    return f"""
[devices.pty]
kind = "node"
path = "{pty.path}"
ioctls = {PTY_IOCTLS}

[devices.null]
kind = "node"
path = "/dev/null"

[devices.zero]
kind = "node"
path = "/dev/zero"
access = "r"

[devices.full]
kind = "node"
path = "/dev/full"
{extra}
"""


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` until true; AssertionError naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)
