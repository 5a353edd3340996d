# The host side of a remote native library (kind "library"): the device handle with its two
# operations, "functions" (the declarations a client validates against) and "call", and
# the per-connection table of opaque-handle tokens. A client never sees a pointer: an opaque
# pointer becomes a random token valid only on the handle that received it, and every
# pointer still open when the connection goes away is released through its declared close
# function. Must not know how a call is executed (bridge/librunner.py, bridge/libworker.py)
# or about sockets.
from __future__ import annotations

import errno
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .backend import Access, DeviceHandle, op
from .libdecl import (
    DeclarationError,
    LibraryConfig,
    Signature,
    config_from_options,
    parse_declarations,
)
from .librunner import KILL_GRACE, Busy, Flight, InProcess, WorkerProcess, late
from .manifest import DeviceSpec
from .timeout import Deadline

log = logging.getLogger("hwbridge.library")

# A call first waits this long inline (on the host's event loop, bridge/loop.py): most
# library calls take microseconds, and handing them to a thread would cost more than the
# call itself. A slower call goes on in the background and the session's thread collects
# it, so the loop is held up at most this long.
INLINE_WAIT = 0.001
MAX_TOKENS = 4096
PARKED_TTL = 60.0  # a parked call nobody came back for is forgotten after this long

Runner = InProcess | WorkerProcess


@dataclass
class _Shared:
    """What every connection's handle of one library shares: declarations and the runner."""

    config: LibraryConfig
    sigs: dict[str, Signature]
    runner: Runner


_SHARED: dict[str, _Shared] = {}
_SHARED_LOCK = threading.Lock()


def shared_library(spec: DeviceSpec, path: str | None, standin: str | None = None) -> _Shared:
    """The declarations and runner of ``spec``, made on first use (one worker per library)."""
    with _SHARED_LOCK:
        sh = _SHARED.get(spec.name)
        if sh is None:
            options = dict(spec.options)
            if standin is not None:
                options.setdefault("standin", standin)
            try:
                cfg = config_from_options(spec.name, path, options)
                _, sigs = parse_declarations(cfg)
                runner: Runner = InProcess(cfg) if cfg.isolation == "none" else \
                    WorkerProcess(cfg)
            except DeclarationError as e:
                raise OSError(errno.EINVAL, str(e)) from None
            sh = _SHARED[spec.name] = _Shared(cfg, sigs, runner)
        return sh


@dataclass
class _Parked:
    """A call that outlived its inline wait; the session's thread comes back for it."""

    args: list[Any]  # the very request's argument list: the session passes it again
    flight: Flight
    since: float


class LibraryHandle(DeviceHandle):
    """One connection's use of a library: its calls and its opaque-handle tokens."""

    kind = "library"
    INLINE = frozenset({"functions"})
    PROBE_ASK = frozenset({"call"})

    def __init__(self, spec: DeviceSpec, shared: _Shared) -> None:
        super().__init__(spec)
        self.shared = shared
        self.sigs = shared.sigs
        self.runner = shared.runner
        self._tokens: dict[bytes, tuple[int, int, str]] = {}  # token -> (gen, id, type)
        self._parked: list[_Parked] = []
        self._lock = threading.Lock()

    def inline(self, op: str, args: Sequence[Any]) -> bool:
        """May this call's probe run on the host's event loop? A worker's probe waits at
        most INLINE_WAIT, so always; an in-process call cannot be cut short, so only a
        function the manifest declares ``inline = true``."""
        if op != "call":
            return op in self.INLINE
        if not isinstance(self.runner, InProcess):
            return True
        sig = self.sigs.get(args[1]) if len(args) > 1 and type(args[1]) is str else None
        return sig is not None and sig.inline

    @op("functions")
    def functions(self) -> list[dict[str, Any]]:
        """The callable functions with their parameter and result descriptors."""
        return [s.to_wire() for s in self.sigs.values()]

    @op("call", Access.NONE, blocking=True)
    def call(self, fname: str, args: list[Any], deadline: Deadline) -> list[Any]:
        """Call ``fname`` with the caller's inputs; returns the list of its outputs."""
        sig = self.sigs.get(fname) if isinstance(fname, str) else None
        if sig is None:
            raise PermissionError(errno.EACCES, f"{fname!r} is not a function the manifest "
                                                "lets clients call")
        if not isinstance(args, list) or len(args) != len(sig.inputs):
            raise TypeError(f"{fname} takes {len(sig.inputs)} arguments "
                            f"({', '.join(sig.inputs)})")
        if deadline.probe:
            return self._probe(sig, args, deadline)
        limit = _min(sig.timeout, None if deadline.timeout == 0 else deadline.remaining())
        parked = self._unpark(args)
        if parked is None:
            wargs = self._to_worker(sig, args) if sig.handle_inputs else args
            try:
                values = self.runner.call(fname, wargs, limit, late(limit))
            except Busy:
                raise
            except BaseException:
                self._closing(sig, args)
                raise
            self._closing(sig, args)
            return self._outputs(sig, values)
        if not parked.wait(limit):
            parked.kill(late(limit))
            parked.wait(KILL_GRACE)
        return self._outputs(sig, parked.result())

    def _probe(self, sig: Signature, args: list[Any], deadline: Deadline) -> list[Any]:
        """The call inline if it answers within INLINE_WAIT; else WouldBlock, and the call
        runs on, parked, until the session's thread comes back for it with the same
        request (see :meth:`_park`)."""
        if self._parked:
            parked = self._find(args)
            if parked is not None:  # the session probes a request again before it waits
                if not parked.done:
                    deadline.expire(sig.name)
                self._unpark(args)
                return self._outputs(sig, parked.result())
        wargs = self._to_worker(sig, args) if sig.handle_inputs else args
        try:
            out = self.runner.try_call(sig.name, wargs, INLINE_WAIT)
        except BaseException:
            self._closing(sig, args)
            raise
        if out is None:
            deadline.expire(sig.name)  # another call holds the library: wait on a thread
        if sig.closes is not None:
            self._closing(sig, args)
        if isinstance(out, Flight):
            self._park(args, out, sig)
            deadline.expire(sig.name)
        return self._outputs(sig, out) if sig.handle_outputs else out

    # A parked call is matched by the identity of its argument list: the session hands the
    # same request's list to the thread that comes back for it, and no other request can
    # hold that object. (An equal request from the client is a different call.)
    def _park(self, args: list[Any], flight: Flight, sig: Signature) -> None:
        now = time.monotonic()
        with self._lock:
            self._parked = [p for p in self._parked
                            if not (p.flight.done and now - p.since > PARKED_TTL)]
            self._parked.append(_Parked(args, flight, now))
        # The reader finishes the call even if nobody comes back for it.
        threading.Thread(target=flight.run, args=(sig.timeout,),
                         name=f"hwbridge-lib-{sig.name}", daemon=True).start()

    def _find(self, args: list[Any]) -> Flight | None:
        with self._lock:
            for p in self._parked:
                if p.args is args:
                    return p.flight
        return None

    def _unpark(self, args: list[Any]) -> Flight | None:
        if not self._parked:
            return None
        with self._lock:
            for i, p in enumerate(self._parked):
                if p.args is args:
                    del self._parked[i]
                    return p.flight
        return None

    def _to_worker(self, sig: Signature, args: list[Any]) -> list[Any]:
        """The caller's inputs with each token replaced by the worker's handle number."""
        if not sig.handle_inputs:
            return args
        out = list(args)
        for i, name, d in sig.handle_inputs:
            if args[i] is None:
                continue
            entry = self._tokens.get(args[i]) if isinstance(args[i], bytes) else None
            if entry is None or entry[2] != d["type"]:
                raise OSError(errno.EBADF, f"{sig.name}: {name} is not an open {d['type']} "
                                           "handle of this connection")
            if entry[0] != self.runner.generation:
                raise OSError(errno.EBADF, f"{sig.name}: {name} was opened before the "
                                           "library's worker restarted")
            out[i] = entry[1]
        return out

    def _closing(self, sig: Signature, args: list[Any]) -> None:
        """Once a close function was called, its token is no longer a handle."""
        if sig.closes is not None and isinstance(args[0], bytes):
            self._tokens.pop(args[0], None)

    def _outputs(self, sig: Signature, values: list[Any]) -> list[Any]:
        """The call's outputs with each opaque pointer replaced by a token."""
        for i, htype in sig.handle_outputs:  # returned, or through a struct dev ** out-param
            if values[i] is not None:
                values[i] = self._token(values[i], htype)
        return values

    def _token(self, wid: int, htype: str) -> bytes:
        if len(self._tokens) >= MAX_TOKENS:
            self._release(wid, htype)
            raise OSError(errno.EMFILE, f"more than {MAX_TOKENS} open {htype} handles")
        token = secrets.token_bytes(16)
        self._tokens[token] = (self.runner.generation, wid, htype)
        return token

    def _release(self, wid: int, htype: str) -> None:
        closer = self.shared.config.handles[htype]
        sig = self.sigs[closer]
        try:
            self.runner.call(closer, [wid], sig.timeout, late(sig.timeout))
        except Exception as e:
            log.warning("%s: %s: releasing a handle: %s", self.spec.name, closer, e)

    def close(self) -> None:
        """Release every opaque handle this connection still holds, then forget them."""
        if self.closed:
            return
        self.closed = True
        with self._lock:
            tokens, self._tokens = self._tokens, {}
            self._parked = []
        for gen, wid, htype in tokens.values():
            if gen == self.runner.generation:
                self._release(wid, htype)

    def describe(self) -> dict[str, Any]:
        return {"functions": sorted(self.sigs), "isolation": self.shared.config.isolation}


def _min(a: float, b: float | None) -> float:
    return a if b is None else min(a, b)
