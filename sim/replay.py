# Replaying a recorded trace (bridge/record.py) as a simulated device: model "replay".
# Each open of the device takes the next recorded open of it; each operation on the handle
# must match the next recorded operation of that handle (name and arguments) and gets the
# recorded result or error; recorded events are emitted again after the operation they
# followed. The first request that differs raises ReplayDivergence naming it. Must not know
# about the wire; knows only the trace format.
#
#   [devices.tty0]
#   kind = "node"
#   sim = "replay"
#   trace = "trace.jsonl"    # relative to the manifest's folder
#   device = "tty0"          # which recorded device to replay (default: this device's name)
from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.backend import Access, DeviceHandle, Opened, op
from bridge.manifest import DeviceSpec
from bridge.record import decode, decode_error, encode, read_trace


class ReplayDivergence(OSError):
    """A request differs from the recording; the message names the first mismatch."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


@dataclass
class _Device:
    """The recorded history of one device: its opens and each handle's records in order."""

    name: str
    source: str
    opens: list[dict[str, Any]] = field(default_factory=list)
    by_handle: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    events_after: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    created: dict[int, dict[str, Any]] = field(default_factory=dict)  # h -> record making it
    next_open: int = 0
    live: dict[int, ReplayHandle] = field(default_factory=dict)
    diverged: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_TRACES: dict[tuple[str, str], _Device] = {}
_TRACES_LOCK = threading.Lock()


def _load(path: str, device: str) -> _Device:
    key = (str(Path(path).resolve()), device)
    with _TRACES_LOCK:
        if key not in _TRACES:
            _TRACES[key] = _index(read_trace(path), device, path)
        return _TRACES[key]


def _index(records: list[dict[str, Any]], device: str, source: str) -> _Device:
    d = _Device(device, source)
    last_op = 0
    for rec in records:
        if rec.get("dev") != device:
            continue
        if rec.get("op") == "event":
            d.events_after.setdefault(last_op, []).append(rec)
            continue
        last_op = int(rec["line"])
        ok = rec.get("ok")
        if isinstance(ok, dict) and "$h" in ok:
            d.created[int(ok["$h"])] = rec
        h = rec.get("h")
        if rec.get("op") == "open" and (h is None or ok == {"$h": h}):  # a session open
            d.opens.append(rec)
        elif h is not None:
            d.by_handle.setdefault(int(h), []).append(rec)
    return d


def _show(op: str, args: Any) -> str:
    def one(a: Any) -> str:
        if isinstance(a, dict) and set(a) == {"$b"}:
            return repr(bytes.fromhex(a["$b"]))
        return repr(a)

    return f"{op}({', '.join(one(a) for a in args)})"


class ReplayHandle(DeviceHandle):
    """One replayed handle; subclasses made per recorded operation table carry the ops."""

    def __init__(self, spec: DeviceSpec, dev: _Device, h: int) -> None:
        super().__init__(spec)
        self._dev = dev
        self._h = h
        self._records = dev.by_handle.get(h, [])
        self._next = 0
        dev.live[h] = self

    def _replay(self, name: str, args: tuple[Any, ...]) -> Any:
        dev = self._dev
        with dev.lock:
            if dev.diverged is not None:
                raise ReplayDivergence(dev.diverged)
            got = encode(list(args))
            if self._next >= len(self._records):
                self._diverge(f"the recording of handle {self._h} ends, got {_show(name, got)}")
            rec = self._records[self._next]
            if rec["op"] != name or rec.get("args") != got:
                self._diverge(f"at {dev.source}:{rec['line']} expected "
                              f"{_show(rec['op'], rec.get('args', []))}, got {_show(name, got)}")
            self._next += 1
        self._emit_later(int(rec["line"]))
        if "err" in rec:
            raise decode_error(rec["err"])
        ok = rec.get("ok")
        if isinstance(ok, dict) and "$h" in ok:
            return Opened(_make(self.spec, dev, int(ok["$h"])),
                          Access.parse(rec.get("access", "rw")))
        return decode(ok)

    def _diverge(self, what: str) -> None:
        self._dev.diverged = f"replay of {self._dev.name} diverged: {what}"
        raise ReplayDivergence(self._dev.diverged)

    def _emit_later(self, line: int) -> None:
        events = self._dev.events_after.get(line)
        if not events:
            return

        def deliver() -> None:
            # A handle made by this very operation is attached only after it returns.
            for rec in events:
                target = self._dev.live.get(int(rec["h"]))
                if target is not None:
                    for _ in range(200):
                        if target._emit is not None or target.closed:
                            break
                        threading.Event().wait(0.005)
                    target.emit(str(rec["topic"]), decode(rec.get("payload")))

        threading.Thread(target=deliver, name="hwbridge-replay-events", daemon=True).start()

    def close(self) -> None:
        super().close()
        self._dev.live.pop(self._h, None)


_CLASSES: dict[tuple[str, tuple[tuple[str, str, bool], ...]], type[ReplayHandle]] = {}


def _method(name: str, blocking: bool) -> Callable[..., Any]:
    if blocking:
        def run_blocking(self: ReplayHandle, *args: Any) -> Any:
            return self._replay(name, args[:-1])  # the last one is the Deadline
        return run_blocking

    def run(self: ReplayHandle, *args: Any) -> Any:
        return self._replay(name, args)
    return run


def _class_for(kind: str, ops: dict[str, list[Any]]) -> type[ReplayHandle]:
    key = (kind, tuple(sorted((n, str(a), bool(b)) for n, (a, b) in ops.items())))
    cls = _CLASSES.get(key)
    if cls is None:
        body: dict[str, Any] = {"kind": kind}
        for n, access, blocking in key[1]:
            fn = _method(n, blocking)
            fn.__name__ = f"op_{n}"  # the session calls the method named in the op table
            body[fn.__name__] = op(n, Access.parse(access), blocking=blocking)(fn)
        cls = _CLASSES[key] = type(f"Replay_{kind}", (ReplayHandle,), body)
    return cls


def _make(spec: DeviceSpec, dev: _Device, h: int) -> ReplayHandle:
    rec = dev.created.get(h, {})
    return _class_for(str(rec.get("kind", spec.kind)), rec.get("ops", {}))(spec, dev, h)


def open_replay(spec: DeviceSpec) -> DeviceHandle:
    """Model factory: the next recorded open of the device named by ``spec``."""
    trace = spec.options.get("trace")
    if not isinstance(trace, str):
        raise ValueError(f"device {spec.name}: sim = \"replay\" needs trace = \"FILE\"")
    dev = _load(str(Path(spec.base) / trace), str(spec.options.get("device", spec.name)))
    with dev.lock:
        if dev.diverged is not None:
            raise ReplayDivergence(dev.diverged)
        if dev.next_open >= len(dev.opens):
            dev.diverged = (f"replay of {dev.name} diverged: the recording has "
                            f"{len(dev.opens)} opens of it, got one more")
            raise ReplayDivergence(dev.diverged)
        rec = dev.opens[dev.next_open]
        dev.next_open += 1
    if "err" in rec:
        raise decode_error(rec["err"])
    return _make(spec, dev, int(rec["ok"]["$h"]))


MODELS = {"replay": open_replay}
LAB: dict[str, dict[str, Any]] = {}
