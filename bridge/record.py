# Recording a device host's traffic: a Tap that writes every open, every handle operation
# with its arguments and outcome, and every event, to a JSON Lines file, on any backend
# (posix included). Also owns the trace format, which sim/replay.py reads back. Must not
# know about the wire or about any device kind.
#
# One line per record, after a header line {"hwbridge_trace": 1}:
#   {"n": 3, "t": 0.012, "dev": "tty0", "h": 1, "op": "write", "args": [{"$b": "6869"}], "ok": 2}
#   {"n": 4, ..., "op": "read", "args": [16], "err": {"errno": 110, "name": "ETIMEDOUT", ...}}
#   {"n": 1, ..., "op": "open", "args": ["rw"], "ok": {"$h": 1}, "kind": "node", "ops": {...}}
#   {"n": 5, ..., "op": "event", "topic": "edge", "payload": {...}}
# Bytes are {"$b": HEX}; a handle created by an operation is {"$h": N}. "h" numbers handles
# in the trace (not the wire's handle numbers); "ops" gives the operation table of the
# handle's class ({name: [access, blocking]}) so a replay can offer the same operations.
from __future__ import annotations

import contextlib
import errno
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .backend import Access, DeviceHandle, Opened, OpInfo
from .tap import Run, Tap
from .timeout import WouldBlock

if TYPE_CHECKING:
    from .manifest import DeviceSpec
    from .timeout import Deadline

TRACE_VERSION = 1


def encode(v: Any) -> Any:
    """A JSON-ready form of an operation's argument or result (bytes as {"$b": hex})."""
    if isinstance(v, bytes | bytearray | memoryview):
        return {"$b": bytes(v).hex()}
    if isinstance(v, list | tuple):
        return [encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): encode(x) for k, x in v.items()}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return {"$repr": repr(v)}


def decode(v: Any) -> Any:
    """The inverse of :func:`encode` (a {"$h": N} marker is left for the caller)."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if isinstance(v, dict):
        if len(v) == 1 and "$b" in v:
            return bytes.fromhex(v["$b"])
        return {k: decode(x) for k, x in v.items()}
    return v


def encode_error(e: BaseException) -> dict[str, Any]:
    """How an operation failed: errno, its name, the message, the exception type."""
    if isinstance(e, OSError) and e.errno:
        code, msg = e.errno, e.strerror or str(e)
    elif isinstance(e, ValueError | TypeError):
        code, msg = errno.EINVAL, str(e)
    else:
        code, msg = errno.EIO, f"{type(e).__name__}: {e}"
    return {"errno": code, "name": errno.errorcode.get(code, str(code)), "msg": msg,
            "type": type(e).__name__}


def decode_error(d: Mapping[str, Any]) -> Exception:
    """The exception a recorded error stands for (same type and errno)."""
    kind, msg = d.get("type"), str(d.get("msg", ""))
    if kind == "ValueError":
        return ValueError(msg)
    if kind == "TypeError":
        return TypeError(msg)
    return OSError(int(d["errno"]), msg)


def op_table(handle: DeviceHandle) -> dict[str, list[Any]]:
    """The operations a handle offers, as [access, blocking] per name (for the trace)."""
    return {name: [info.access.text(), info.blocking] for name, info in type(handle).OPS.items()}


log = logging.getLogger("hwbridge.record")


class Recorder(Tap):
    """A Tap writing a JSON Lines trace of everything that passes through it."""

    def __init__(self, out: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()
        self._n = 0
        self._h = 0
        self.stopped: OSError | None = None  # the trace could not be written: it ends there
        self._out.write(json.dumps({"hwbridge_trace": TRACE_VERSION, "started": time.time()})
                        + "\n")  # (a disk that cannot take this fails the start)

    @classmethod
    def to_file(cls, path: str | Path) -> Recorder:
        """Record into ``path`` (created or truncated; each line is flushed)."""
        out = open(path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
        try:
            return cls(out)
        except OSError as e:
            with contextlib.suppress(OSError):  # what it could not write fails again here
                out.close()
            raise OSError(e.errno, f"cannot record into {path}: {e.strerror}") from None

    def close(self) -> None:
        with self._lock:
            self._out.close()

    # -- the tap --------------------------------------------------------------------------

    def open(self, spec: DeviceSpec, access: Access, run: Callable[[], DeviceHandle]
             ) -> DeviceHandle:
        rec: dict[str, Any] = {"dev": spec.name, "op": "open", "args": [access.text()]}
        try:
            handle = run()
        except Exception as e:
            self._record({**rec, "h": None, "err": encode_error(e)})
            raise
        h = self._adopt(handle)
        self._record({**rec, "h": h, "ok": {"$h": h}, "kind": handle.kind,
                      "ops": op_table(handle)})
        return handle

    def call(self, handle: DeviceHandle, info: OpInfo, args: Sequence[Any],
             deadline: Deadline | None, run: Run) -> Any:
        rec: dict[str, Any] = {"dev": handle.spec.name, "h": getattr(handle, "_trace_h", None),
                               "op": info.name, "args": encode(list(args))}
        try:
            result = run(args, deadline)
        except WouldBlock:
            raise  # not finished: the session retries it on a thread
        except Exception as e:
            self._record({**rec, "err": encode_error(e)})
            raise
        if isinstance(result, Opened):
            h = self._adopt(result.handle)
            self._record({**rec, "ok": {"$h": h}, "access": result.access.text(),
                          "kind": result.handle.kind, "ops": op_table(result.handle)})
        else:
            self._record({**rec, "ok": encode(result)})
        return result

    # -- internals ------------------------------------------------------------------------

    def _adopt(self, handle: DeviceHandle) -> int:
        """Number a new handle and record the events it emits."""
        with self._lock:
            self._h += 1
            h = self._h
        handle._trace_h = h  # type: ignore[attr-defined]
        emit = handle.emit

        def recording_emit(topic: str, payload: Any) -> None:
            if not handle.closed:
                self._record({"dev": handle.spec.name, "h": h, "op": "event", "topic": topic,
                              "payload": encode(payload)})
            emit(topic, payload)

        handle.emit = recording_emit  # type: ignore[method-assign]
        return h

    def _record(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self._n += 1
            self._write({"n": self._n, "t": round(self._clock() - self._t0, 6), **rec})

    def _write(self, rec: dict[str, Any]) -> None:
        """One record; once one cannot be written (disk full), the trace ends there: the
        operations go on unrecorded, and the host says so once."""
        if self._out.closed or self.stopped is not None:
            return
        try:
            self._out.write(json.dumps(rec, separators=(",", ":")) + "\n")
        except OSError as e:
            self.stopped = e
            log.error("recording stopped at record %d: %s; the operations go on unrecorded",
                      rec.get("n", 0), e.strerror or e)


def read_trace(path: str | Path) -> list[dict[str, Any]]:
    """The records of a trace file, header checked; each gets "line" (1-based)."""
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON line: {e}") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{i}: a trace line is a JSON object")
            if i == 1:
                if rec.get("hwbridge_trace") != TRACE_VERSION:
                    raise ValueError(f"{path}: not an hwbridge trace (version "
                                     f"{TRACE_VERSION}); first line: {line.strip()[:80]}")
                continue
            rec["line"] = i
            records.append(rec)
    return records
