# Fault injection: a Tap (bridge/tap.py) that makes a device misbehave the way real
# hardware does — latency, an errno (an I2C NAK is ENXIO) on the nth operation, short
# reads, unplugging (ENODEV) and coming back, a stuck bus (ETIMEDOUT) — on any backend.
# Rules come from the manifest (`faults = [...]` in a device's table) or at run time from
# the `simctl` control device (model "simctl") or the Python API (Faults). Must not know
# about the wire or any device kind: it sees operation names and arguments only.
from __future__ import annotations

import errno as _errno
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.backend import Access, DeviceHandle, NodeHandle, OpInfo
from bridge.tap import Run, Tap
from bridge.timeout import WouldBlock

from .clock import clock

if TYPE_CHECKING:
    from bridge.manifest import DeviceSpec, Manifest
    from bridge.timeout import Deadline

_KEYS = {"op", "nth", "count", "errno", "nak", "latency", "short", "stuck", "unplug"}


@dataclass(frozen=True)
class Rule:
    """One fault: what it does to which operations of a device.

    ``op`` is an operation name ("read", "transfer", "open", ...) or "*" for all. Matching
    operations are counted per device from 1, starting when the rule is added (so at run time
    ``nth = 1`` is the next one); the rule applies to the ``nth`` one and the
    ``count - 1`` after it (``count`` None: every one from ``nth`` on; the default is 1 when
    ``nth`` is given, else every operation).
    """

    op: str = "*"
    nth: int = 1
    count: int | None = None
    errno: int | None = None       # fail with this errno (nak = ENXIO)
    latency: float = 0.0           # seconds added to the operation (sim clock)
    short: int | None = None       # a read returns at most this many bytes
    stuck: bool = False            # the bus hangs: ETIMEDOUT
    unplug: float | bool = False   # unplug here; True: until plugged, a number: seconds

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> Rule:
        """A rule from its manifest table, e.g. {op = "read", nth = 3, errno = "EIO"}."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a fault is a table, not {d!r}")
        unknown = set(d) - _KEYS
        if unknown:
            raise ValueError(f"unknown fault keys: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(_KEYS))})")
        op, nth, count = d.get("op", "*"), d.get("nth", 1), d.get("count")
        if not isinstance(op, str) or not op:
            raise ValueError("fault op must be an operation name or \"*\"")
        if type(nth) is not int or nth < 1 or (count is not None and
                                               (type(count) is not int or count < 1)):
            raise ValueError("fault nth and count must be integers >= 1")
        if count is None and "nth" in d:
            count = 1
        code = _errno_of(d["errno"]) if "errno" in d else None
        if d.get("nak"):
            code = _errno.ENXIO
        latency, short, unplug = d.get("latency", 0.0), d.get("short"), d.get("unplug", False)
        if type(latency) not in (int, float) or latency < 0:
            raise ValueError("fault latency must be >= 0 seconds")
        if short is not None and (type(short) is not int or short < 0):
            raise ValueError("fault short must be a byte count >= 0")
        if not isinstance(unplug, bool) and (type(unplug) not in (int, float) or unplug <= 0):
            raise ValueError("fault unplug must be true or a number of seconds > 0")
        return cls(op, nth, count, code, float(latency), short, bool(d.get("stuck")), unplug)

    def applies(self, k: int) -> bool:
        return k >= self.nth and (self.count is None or k < self.nth + self.count)


def _errno_of(v: object) -> int:
    if isinstance(v, str) and v.isupper() and isinstance(getattr(_errno, v, None), int):
        code: int = getattr(_errno, v)
        return code
    if type(v) is int and v > 0:
        return v
    raise ValueError(f"fault errno must be a name like \"EIO\" or a positive number, not {v!r}")


def _fail(code: int) -> OSError:
    return OSError(code, os.strerror(code))  # what the kernel would say, nothing more


@dataclass
class _State:
    rules: list[tuple[Rule, int]] = field(default_factory=list)  # with the count at adding
    counts: dict[str, int] = field(default_factory=dict)
    unplugged: bool = False
    replug_at: float | None = None
    generation: int = 0  # bumped by each unplug: handles from before stay dead

    def plugged(self) -> bool:
        if self.unplugged and self.replug_at is not None and clock.now() >= self.replug_at:
            self.unplugged, self.replug_at = False, None
        return not self.unplugged


class Faults(Tap):
    """The fault rules and unplug state of a host's devices; install as ``host.tap``."""

    def __init__(self, devices: Iterable[str] = ()) -> None:
        self.devices = set(devices)  # what rules may name (the manifest's devices)
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    # -- Python API -----------------------------------------------------------------------

    def inject(self, device: str, rule: Rule | Mapping[str, Any]) -> None:
        """Add a fault to ``device`` (a Rule or its table form)."""
        r = rule if isinstance(rule, Rule) else Rule.parse(rule)
        with self._lock:
            st = self._state(device)
            st.rules.append((r, st.counts.get(r.op, 0)))

    def clear(self, device: str | None = None) -> None:
        """Remove the rules and counts of ``device`` (all devices: None) and plug it back."""
        with self._lock:
            for name in [device] if device is not None else list(self._states):
                self._check(name)
                st = self._states.get(name)
                if st is not None:
                    st.rules.clear()
                    st.counts.clear()
                    st.unplugged, st.replug_at = False, None

    def unplug(self, device: str, seconds: float | None = None) -> None:
        """Unplug ``device``: ENODEV on every operation and open; back after ``seconds``."""
        with self._lock:
            self._unplug(self._state(device), seconds)

    def plug(self, device: str) -> None:
        """Plug ``device`` back in; handles opened before the unplug stay dead (ENODEV)."""
        with self._lock:
            st = self._state(device)
            st.unplugged, st.replug_at = False, None

    def status(self, device: str) -> dict[str, Any]:
        """Counts of finished operations by name, and whether the device is plugged."""
        with self._lock:
            st = self._state(device)
            return {"counts": dict(st.counts), "plugged": st.plugged(),
                    "rules": len(st.rules)}

    # -- the tap --------------------------------------------------------------------------

    def open(self, spec: DeviceSpec, access: Access, run: Callable[[], DeviceHandle]
             ) -> DeviceHandle:
        st = self._states.get(spec.name)
        if st is None:
            return run()
        handle: DeviceHandle = self._run(st, "open", run)
        handle._fault_gen = st.generation  # type: ignore[attr-defined]
        return handle

    def may_wait(self, handle: DeviceHandle) -> bool:
        """A device with fault rules (from the manifest or added at run time) may get
        latency: its operations leave the host's event loop."""
        return handle.spec.name in self._states

    def call(self, handle: DeviceHandle, info: OpInfo, args: Sequence[Any],
             deadline: Deadline | None, run: Run) -> Any:
        st = self._states.get(handle.spec.name)
        if st is None:
            return run(args, deadline)
        if getattr(handle, "_fault_gen", 0) != st.generation:
            self._count(st, info.name)
            raise _fail(_errno.ENODEV)  # opened before an unplug: gone for good
        return self._run(st, info.name, lambda: run(self._shorten(st, info.name, args), deadline))

    # -- internals ------------------------------------------------------------------------

    def _run(self, st: _State, op: str, run: Callable[[], Any]) -> Any:
        with self._lock:
            active = self._active(st, op)
            delay = sum(r.latency for r in active)
            fault: OSError | None = None
            if not st.plugged():
                fault = _fail(_errno.ENODEV)
            for r in active:
                if fault is not None:
                    break
                if r.unplug:
                    self._unplug(st, None if r.unplug is True else float(r.unplug))
                    fault = _fail(_errno.ENODEV)
                elif r.stuck:
                    fault = TimeoutError(_errno.ETIMEDOUT, os.strerror(_errno.ETIMEDOUT))
                elif r.errno is not None:
                    fault = _fail(r.errno)
            if fault is not None:
                self._count(st, op)
        try:
            if fault is not None:
                raise fault
            try:
                result = run()
            except WouldBlock:
                delay = 0.0
                raise
            except Exception:
                with self._lock:
                    self._count(st, op)
                raise
            with self._lock:
                self._count(st, op)
            return result
        finally:
            if delay:
                clock.sleep_until(clock.now() + delay)

    def _shorten(self, st: _State, op: str, args: Sequence[Any]) -> Sequence[Any]:
        if not op.startswith("read") or not args or type(args[0]) is not int:
            return args
        with self._lock:
            caps = [r.short for r in self._active(st, op) if r.short is not None]
        return [min([args[0], *caps]), *args[1:]] if caps else args

    @staticmethod
    def _active(st: _State, op: str) -> list[Rule]:
        """The rules that apply to the operation ``op`` about to run."""
        return [r for r, base in st.rules if r.op in (op, "*")
                and r.applies(st.counts.get(r.op, 0) + 1 - base)]

    @staticmethod
    def _count(st: _State, op: str) -> None:
        st.counts[op] = st.counts.get(op, 0) + 1
        st.counts["*"] = st.counts.get("*", 0) + 1

    @staticmethod
    def _unplug(st: _State, seconds: float | None) -> None:
        st.unplugged = True
        st.generation += 1
        st.replug_at = None if seconds is None else clock.now() + seconds

    def _check(self, device: str) -> None:
        if device not in self.devices:
            raise ValueError(f"no device {device!r} on this host")

    def _state(self, device: str) -> _State:
        self._check(device)
        return self._states.setdefault(device, _State())


#: The fault state of this process's host (set by :func:`install`; simctl drives it).
current: Faults | None = None


def install(manifest: Manifest) -> Faults | None:
    """Faults for ``manifest``: its devices' ``faults`` rules; None when nothing uses faults."""
    global current
    wanted = any("faults" in s.options or s.sim == "simctl" for s in manifest.devices.values())
    if not wanted:
        return None
    f = Faults(name for name, s in manifest.devices.items() if s.sim != "simctl")
    for name, spec in manifest.devices.items():
        rules = spec.options.get("faults", [])
        if not isinstance(rules, list):
            raise ValueError(f"device {name}: faults must be a list of tables")
        for i, d in enumerate(rules):
            try:
                f.inject(name, Rule.parse(d))
            except ValueError as e:
                raise ValueError(f"device {name}: fault {i + 1}: {e}") from None
    current = f
    return f


class ControlNode(NodeHandle):
    """The `simctl` node: write one JSON command per line, read one JSON reply per command.

    Commands: {"cmd": "inject", "device": D, "rule": {...}}, {"cmd": "clear"[, "device": D]},
    {"cmd": "unplug", "device": D[, "seconds": S]}, {"cmd": "plug", "device": D},
    {"cmd": "status", "device": D}, {"cmd": "advance", "seconds": S}, {"cmd": "now"}.
    Only devices of the manifest can be named, and only those in its ``targets`` option
    when given. A bad command fails the write with EINVAL.
    """
    INLINE_ALL = True  # an in-process model: nothing here waits

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec)
        if current is None:
            raise OSError(_errno.ENODEV, "fault injection is not installed on this host")
        self.faults = current
        targets = spec.options.get("targets")
        self.targets = None if targets is None else set(map(str, targets))
        self._replies = bytearray()
        self._buf = bytearray()

    def read_nowait(self, n: int) -> bytes | None:
        if not self._replies:
            return None
        out = bytes(self._replies[:n])
        del self._replies[:n]
        return out

    def write_nowait(self, data: bytes) -> int | None:
        self._buf += data
        while b"\n" in self._buf:
            line, _, rest = bytes(self._buf).partition(b"\n")
            self._buf = bytearray(rest)
            if line.strip():
                result = self._command(line)
                self._replies += json.dumps({"ok": result}).encode() + b"\n"
        return len(data)

    def wait(self, write: bool, timeout: float | None) -> bool:
        return write or bool(self._replies)

    def do_ioctl(self, request: int, arg: int | bytearray) -> int:
        raise OSError(_errno.ENOTTY, os.strerror(_errno.ENOTTY))

    def _command(self, line: bytes) -> Any:
        try:
            c = json.loads(line)
        except ValueError:
            raise ValueError(f"not a JSON command: {line[:60]!r}") from None
        if not isinstance(c, dict):
            raise ValueError("a command is a JSON object")
        cmd, dev = c.get("cmd"), c.get("device")
        if dev is not None and (not isinstance(dev, str) or
                                (self.targets is not None and dev not in self.targets)):
            raise PermissionError(_errno.EACCES, f"simctl may not control {dev!r}")
        f = self.faults
        if cmd == "inject" and isinstance(dev, str):
            f.inject(dev, Rule.parse(c.get("rule", {})))
        elif cmd == "clear":
            if dev is None and self.targets is not None:
                for t in self.targets:
                    f.clear(t)
            else:
                f.clear(dev)
        elif cmd == "unplug" and isinstance(dev, str):
            f.unplug(dev, c.get("seconds"))
        elif cmd == "plug" and isinstance(dev, str):
            f.plug(dev)
        elif cmd == "status" and isinstance(dev, str):
            return f.status(dev)
        elif cmd == "advance":
            if not clock.manual:
                raise ValueError("the sim clock is real time: start the server with "
                                 "HWBRIDGE_SIM_CLOCK=manual to drive it")
            clock.advance(float(c.get("seconds", 0)))
        elif cmd == "now":
            return clock.now()
        else:
            raise ValueError(f"unknown simctl command {c!r}")
        return None


class SimControl:
    """Client side of a `simctl` device: ``SimControl(host).inject("i2c1", nth=1, nak=True)``.

    Every method is one write and one read of the control node.
    """

    def __init__(self, host: Any, name: str = "simctl") -> None:
        self.node = host.open(name)
        self.node.timeout = 10.0

    def command(self, cmd: str, **fields: Any) -> Any:
        """Send one command; its result (None for commands that return nothing)."""
        self.node.write(json.dumps({"cmd": cmd, **fields}).encode() + b"\n")
        line = b""
        for _ in range(1000):
            line += self.node.read(65536)
            if line.endswith(b"\n"):
                break
        return json.loads(line)["ok"]

    def inject(self, device: str, **rule: Any) -> None:
        """Add a fault rule (the keys of a manifest fault table) to ``device``."""
        self.command("inject", device=device, rule=rule)

    def clear(self, device: str | None = None) -> None:
        """Remove faults (of one device, or all) and plug devices back in."""
        self.command("clear", **({} if device is None else {"device": device}))

    def unplug(self, device: str, seconds: float | None = None) -> None:
        """Unplug ``device`` (until plug(), or for ``seconds`` of sim time)."""
        self.command("unplug", device=device, **({} if seconds is None else {"seconds": seconds}))

    def plug(self, device: str) -> None:
        """Plug ``device`` back in (reopen it: old handles stay dead)."""
        self.command("plug", device=device)

    def status(self, device: str) -> dict[str, Any]:
        """{"counts": {op: n, "*": total}, "plugged": bool, "rules": n}."""
        result: dict[str, Any] = self.command("status", device=device)
        return result

    def advance(self, seconds: float) -> None:
        """Move the server's manual sim clock forward (HWBRIDGE_SIM_CLOCK=manual)."""
        self.command("advance", seconds=seconds)

    def now(self) -> float:
        """The server's sim clock."""
        return float(self.command("now"))

    def close(self) -> None:
        self.node.close()


MODELS = {"simctl": ControlNode}
LAB: dict[str, dict[str, Any]] = {}
