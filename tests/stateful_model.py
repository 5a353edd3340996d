"""The model side of tests/test_stateful_server.py: the devices the host serves, what the
kernel does for an operation on a local fd of the same node (the oracle), the expected
outcomes and the per-connection state the state machine keeps, and waiting (bounded) for
the host's fd count to settle."""
from __future__ import annotations

import fcntl
import os
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge.client import Client
from bridge.protocol import Connection, Role
from bridge.testing import ServerProc

SETTLE = 10.0  # seconds the host gets to close what a gone connection held

# name -> (backend, access the manifest grants, allowed ioctls)
DEVICES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "null": ("posix", "rw", ("FIONREAD",)),
    "zero": ("posix", "r", ()),
    "full": ("posix", "rw", ()),
    "pty": ("posix", "rw", ("TCGETS", "TIOCGWINSZ", "FIONREAD")),
    "simzero": ("sim", "rw", ("FIONREAD",)),
    "simnull": ("sim", "rw", ()),
}
PATHS = {"null": "/dev/null", "zero": "/dev/zero", "full": "/dev/full"}
SIZES = {"TCGETS": 36, "TIOCGWINSZ": 8, "FIONREAD": 4}
CODES = {"TCGETS": termios.TCGETS, "TIOCGWINSZ": termios.TIOCGWINSZ,
         "FIONREAD": termios.FIONREAD}


def manifest(pty_path: str) -> str:
    out = []
    for name, (backend, access, ioctls) in DEVICES.items():
        where = (f'sim = "{name[3:]}"' if backend == "sim" else
                 f'path = "{PATHS.get(name, pty_path)}"')
        out.append(f'[devices.{name}]\nkind = "node"\n{where}\naccess = "{access}"\n'
                   f"ioctls = {list(ioctls)!r}\n".replace("'", '"'))
    return "\n".join(out)


@dataclass
class Pty:
    master: int
    slave: int
    path: str


@dataclass
class Bench:
    """The server and the kernel objects one test run shares across examples."""

    server: ServerProc
    pty: Pty
    baseline: int


def settle(server: ServerProc, check: Callable[[], None], want: int | None) -> int:
    """Wait (bounded) until the host's fd count is ``want`` (or stops changing)."""
    end = time.monotonic() + SETTLE
    last, stable = -1, 0
    while time.monotonic() < end:
        n = server.fd_count()
        if want is not None and n == want:
            return n
        stable = stable + 1 if n == last else 0
        if want is None and stable >= 5:
            return n
        last = n
        time.sleep(0.02)
    check()
    return server.fd_count()


# -- expectations ---------------------------------------------------------------------------


@dataclass
class Ok:
    """Success; ``check`` asserts the value and applies its effect to the model."""

    check: Callable[[Any], None]


@dataclass
class Err:
    errno: int


@dataclass
class Conn:
    client: Client
    handles: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (device, access)
    closed: set[int] = field(default_factory=set)  # numbers this connection closed


def kernel(name: str, access: str, fn: Callable[[int], Any]) -> Ok | Err:
    """What the kernel does for ``fn`` on a fresh local fd of the same node."""
    flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}[access]
    fd = os.open(PATHS[name], flags | os.O_NONBLOCK)
    try:
        value = fn(fd)
    except OSError as e:
        return Err(e.errno or 0)
    finally:
        os.close(fd)
    return Ok(lambda got: eq(got, value))


def eq(got: Any, want: Any) -> None:
    assert got == want, f"got {got!r}, the model says {want!r}"


def is_handle(got: Any) -> None:
    assert type(got) is int, got


def fionread(fd: int) -> int:
    n: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, bytes(4)))[0]
    return n


def frames(*msgs: Any) -> bytes:
    c = Connection(Role.CLIENT)
    return b"".join(bytes(b) for m in msgs for b in c.send(m))
