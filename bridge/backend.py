# The one backend interface of the device host. A backend turns a manifest entry into an
# open DeviceHandle; a handle exposes its operations through an explicit table built from
# methods marked with @op. The server dispatches only through that table, so what a kind can
# do is written down in one place per kind, and the server never knows which backend (posix,
# sim, replay, ...) it is talking to. Must not know about sockets or the wire format.
from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from .ioctl import Direction, IoctlSpec
from .timeout import Deadline

if TYPE_CHECKING:
    from .manifest import DeviceSpec


class Access(enum.Flag):
    """Rights on a device; the manifest's "r", "w", "rw"."""

    NONE = 0
    READ = enum.auto()
    WRITE = enum.auto()
    RW = READ | WRITE

    @classmethod
    def parse(cls, text: str) -> Access:
        table = {"r": cls.READ, "w": cls.WRITE, "rw": cls.RW, "wr": cls.RW, "": cls.NONE}
        if text not in table:
            raise ValueError(f'access must be "r", "w" or "rw", not {text!r}')
        return table[text]

    def text(self) -> str:
        return ("r" if self & Access.READ else "") + ("w" if self & Access.WRITE else "")


@dataclass(frozen=True, slots=True)
class OpInfo:
    """How the server may call one operation of a handle."""

    name: str
    method: str
    access: Access  # rights the connection needs on the device
    blocking: bool  # the method's last parameter is a Deadline


F = TypeVar("F", bound=Callable[..., Any])


def op(name: str, access: Access = Access.NONE, *, blocking: bool = False) -> Callable[[F], F]:
    """Mark a DeviceHandle method as the remote operation ``name``.

    A blocking operation takes a :class:`Deadline` as its last parameter. The server first
    calls it with a probing deadline inline; the method raises ``WouldBlock`` (through
    ``deadline.expire``) if it would have to wait, and the server retries it on a thread.
    """

    def mark(fn: F) -> F:
        fn.__hwbridge_op__ = OpInfo(name, fn.__name__, access, blocking)  # type: ignore[attr-defined]
        return fn

    return mark


class DeviceHandle(abc.ABC):
    """One open device on the host, owned by exactly one connection."""

    kind: ClassVar[str] = ""
    OPS: ClassVar[Mapping[str, OpInfo]] = {}
    closed: bool = False
    #: Non-blocking ops of this handle that always return at once (no sleep in the kernel,
    #: no waiting on a device), so the host may run them on its shared event loop
    #: (bridge/loop.py); every other non-blocking op runs on the connection's own thread.
    INLINE: ClassVar[frozenset[str]] = frozenset()
    #: Every non-blocking op returns at once: in-process models (the sim) set this.
    INLINE_ALL: ClassVar[bool] = False
    #: Blocking ops whose probe may itself take time (a library call in-process): the
    #: handle's inline() says per call whether the probe may run on the event loop. Every
    #: other blocking op's probe never waits, so it always may.
    PROBE_ASK: ClassVar[frozenset[str]] = frozenset()
    #: The host's tap (record, faults) when one is installed; see bridge/tap.py.
    _tap: Any = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        ops: dict[str, OpInfo] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                info = getattr(attr, "__hwbridge_op__", None)
                if isinstance(info, OpInfo):
                    ops[info.name] = info
        cls.OPS = ops

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec
        self.closed = False
        #: The rights the owning connection holds (set by the session when it registers
        #: the handle; at most what the manifest grants).
        self.access: Access = spec.access
        self._emit: EventSink | None = None

    def attach(self, emit: EventSink) -> None:
        """Give the handle a way to push events to its connection (GPIO edges, serial data)."""
        self._emit = emit

    def emit(self, topic: str, payload: Any) -> None:
        if self._emit is not None and not self.closed:
            self._emit(topic, payload)

    def inline(self, op: str, args: Sequence[Any]) -> bool:
        """May non-blocking ``op`` with these arguments run on the host's event loop?"""
        return self.INLINE_ALL or op in self.INLINE

    def close(self) -> None:
        """Release the device. Idempotent; called by the server when the connection ends."""
        self.closed = True

    def describe(self) -> dict[str, Any]:
        """Extra, kind-specific facts for `hwbridge info` (never secrets)."""
        return {}


@dataclass(frozen=True, slots=True)
class Opened:
    """Returned by an operation that creates a new handle (e.g. a GPIO line request).

    The session registers ``handle`` in the connection's table, with ``access``, and the
    client receives the new handle's number in its place.
    """

    handle: DeviceHandle
    access: Access = Access.RW


class EventSink(Protocol):
    def __call__(self, topic: str, payload: Any) -> None: ...


class Backend(abc.ABC):
    """Opens the devices of one implementation (posix hardware, the simulator, ...)."""

    name: ClassVar[str]

    @abc.abstractmethod
    def open(self, spec: DeviceSpec, access: Access) -> DeviceHandle:
        """Open ``spec`` with ``access`` (already checked against the manifest)."""

    def prepare(self, spec: DeviceSpec) -> None:
        """Called once per device when the server starts (pin paths, check models)."""

    def describe(self, spec: DeviceSpec) -> dict[str, Any]:
        """Facts about a device that can be given without opening it."""
        return {}

    def close(self) -> None:
        """Release backend-wide resources at server shutdown."""


__all__ = ["Access", "Backend", "Deadline", "DeviceHandle", "EventSink", "NodeHandle", "OpInfo",
           "Opened", "op"]


class NodeHandle(DeviceHandle):
    """A byte-stream device node: read, write, poll and allowlisted ioctls.

    Backends implement four primitives; the blocking, deadline and ioctl-allowlist logic lives
    here once, so posix and sim nodes behave the same to the last errno.
    """

    kind = "node"
    max_io: int = 4 * 1024 * 1024

    @abc.abstractmethod
    def read_nowait(self, n: int) -> bytes | None:
        """Up to ``n`` bytes, b"" at end of file, or None if reading would block."""

    @abc.abstractmethod
    def write_nowait(self, data: bytes) -> int | None:
        """Write what fits without blocking; None if nothing could be written."""

    @abc.abstractmethod
    def wait(self, write: bool, timeout: float | None) -> bool:
        """Wait until readable (or writable), at most ``timeout`` s; False on timeout."""

    @abc.abstractmethod
    def do_ioctl(self, request: int, arg: int | bytearray) -> int:
        """Issue an allowlisted ioctl; a bytearray argument is updated in place."""

    def _wait_or_expire(self, write: bool, deadline: Deadline, what: str) -> None:
        if deadline.probe:
            deadline.expire(what)
        if not self.wait(write, deadline.remaining()):
            deadline.expire(what)

    @op("read", Access.READ, blocking=True)
    def read(self, n: int, deadline: Deadline) -> bytes:
        if type(n) is not int or n < 0:
            raise ValueError(f"read size must be a non-negative integer, not {n!r}")
        if n > self.max_io:
            n = self.max_io
        while True:
            data = self.read_nowait(n)
            if data is not None:
                return data
            self._wait_or_expire(False, deadline, "read")

    @op("write", Access.WRITE, blocking=True)
    def write(self, data: bytes, deadline: Deadline) -> int:
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"write takes bytes, not {type(data).__name__}")
        while True:
            done = self.write_nowait(bytes(data))
            if done is not None:
                return done
            self._wait_or_expire(True, deadline, "write")

    @op("poll", blocking=True)
    def poll(self, deadline: Deadline) -> bool:
        """True once the node is readable; False when the deadline passes first."""
        if self.wait(False, 0):
            return True
        if deadline.probe:
            deadline.expire("poll")
        return self.wait(False, deadline.remaining())

    @op("ioctl")
    def ioctl(self, request: str | int, arg: int | bytes | None) -> list[Any]:
        """Run an ioctl the manifest allows; returns [return value, out bytes or None]."""
        spec = self.spec.ioctls.get(request) if type(request) is str else None
        if spec is None:  # by number, or not allowed (find_ioctl says which)
            spec = self.spec.find_ioctl(request)
        direction = spec.direction
        if spec.by_value or direction is _NONE:
            return [self.do_ioctl(spec.request, _ioctl_value(spec, arg)), None]
        buf = _ioctl_buffer(spec, arg)
        ret = self.do_ioctl(spec.request, buf)
        return [ret, bytes(buf) if direction is _OUT or direction is _INOUT else None]


# Enum members as module constants: `x is Direction.OUT` looks the member up through the enum
# class on every call, which costs more than the rest of a small ioctl's checks.
_NONE, _OUT, _INOUT = Direction.NONE, Direction.OUT, Direction.INOUT


def _ioctl_value(spec: IoctlSpec, arg: object) -> int:
    """The integer an argument-less or by-value ioctl passes; ValueError/TypeError else."""
    if spec.direction is _NONE and not spec.by_value and arg not in (None, 0):
        raise ValueError(f"ioctl {spec.name} takes no argument")
    value = 0 if arg is None else arg
    if type(value) is not int:
        raise TypeError(f"ioctl {spec.name} takes an integer argument, not {type(arg).__name__}")
    return value


def _ioctl_buffer(spec: IoctlSpec, arg: object) -> bytearray:
    """A buffer of exactly the declared size for a pointer ioctl, holding ``arg``; a wrong
    type or size is a clear error, never a short buffer handed to the kernel."""
    if type(arg) is bytes and len(arg) == spec.size:  # the common case with an argument
        return bytearray(arg)
    if arg is None:
        if spec.direction is not _OUT:
            raise ValueError(f"ioctl {spec.name} needs a {spec.size}-byte argument")
        return bytearray(spec.size)
    if not isinstance(arg, bytes | bytearray):
        raise TypeError(f"ioctl {spec.name} takes a {spec.size}-byte buffer, "
                        f"not {type(arg).__name__}")
    if len(arg) != spec.size:
        raise ValueError(f"ioctl {spec.name} takes a {spec.size}-byte argument, "
                         f"got {len(arg)} bytes")
    return bytearray(arg)
