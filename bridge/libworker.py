# Calling a native library: the Engine (marshal plain values into cffi cdata, call, read the
# results back, keep the library's opaque pointers in a table) and the worker process's main
# loop. The runners that host an Engine, in this process or in that worker, are
# bridge/librunner.py; the worker speaks length-prefixed msgpack over two pipes
# (bridge/libchannel.py): no pickle, and no pointer ever leaves it.
#
# Each function's marshalling is planned once, when the library is loaded: the plan holds
# the function's converters, readers and positions, so a call runs no declaration lookups.
# Must not know about the wire protocol, sessions or client tokens (bridge/library.py).
from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .libchannel import Channel
from .libdecl import DeclarationError, LibraryConfig, Signature, parse_declarations

_SEQUENCES = (list, tuple)

Plan = Callable[[Sequence[Any]], list[Any]]  # the caller's inputs -> the function's outputs
Convert = Callable[[Any], Any]  # a caller's value -> a checked C value
Make = Callable[[list[Any]], tuple[Any, int]]  # values by parameter -> (C argument, count)
Read = Callable[[Any, int], Any]  # (cdata, item count) -> a plain value


class Engine:
    """One loaded library (or its Python stand-in) and the pointers it handed out."""

    def __init__(self, cfg: LibraryConfig) -> None:
        self.cfg = cfg
        self.ffi, self.sigs = parse_declarations(cfg)
        self._fns: dict[str, Any] = {}
        self._handles: dict[int, tuple[str, Any]] = {}
        self._next = 1
        self._callback_error: BaseException | None = None
        if cfg.standin is not None:
            module = importlib.import_module(cfg.standin)
            for name, sig in self.sigs.items():
                fn = getattr(module, name, None)
                if not callable(fn):
                    raise DeclarationError(f"library {cfg.name}: stand-in {cfg.standin} "
                                           f"has no function {name}")
                self._fns[name] = self.ffi.callback(sig.ctype, fn, onerror=self._onerror)
        else:
            try:
                lib = self.ffi.dlopen(cfg.path)
            except OSError as e:
                raise DeclarationError(f"library {cfg.name}: cannot load {cfg.path}: {e}"
                                       ) from None
            for name in self.sigs:
                try:
                    self._fns[name] = getattr(lib, name)
                except AttributeError:
                    raise DeclarationError(f"library {cfg.name}: {cfg.path} has no symbol "
                                           f"{name}") from None
        self.plans: dict[str, Plan] = {n: self._plan(s) for n, s in self.sigs.items()}

    def _onerror(self, et: type[BaseException], ev: BaseException, tb: object) -> None:
        self._callback_error = ev

    def call(self, fname: str, args: Sequence[Any]) -> list[Any]:
        """Call ``fname`` with the caller's inputs; [return value, out values..., errno]."""
        plan = self.plans.get(fname) if isinstance(fname, str) else None
        if plan is None:
            raise PermissionError(errno.EACCES, f"{fname} is not a function the manifest "
                                                "lets clients call")
        return plan(args)

    # -- planning ---------------------------------------------------------------------------

    def _plan(self, sig: Signature) -> Plan:
        """The function that calls ``sig`` with a caller's inputs, built once."""
        ffi, fn, fname = self.ffi, self._fns[sig.name], sig.name
        n_inputs = len(sig.inputs)
        usage = f"{fname} takes {n_inputs} arguments ({', '.join(sig.inputs)})"
        pos = {n: i for i, (n, _) in enumerate(sig.params)}
        converts = [self._convert(d, f"{fname}: {n}") for n, d in sig.params]
        # Only ints: cffi itself refuses a non-int or an out-of-range value exactly as the
        # converters would, before anything is called, so the inputs go to the function as
        # they are and the converters run only to say which argument was wrong.
        direct = all(d["k"] == "int" for _, d in sig.params)
        makers = [self._maker(d, i, pos, converts[i], f"{fname}: {n}")
                  for i, (n, d) in enumerate(sig.params)]
        n_params = len(sig.params)
        input_pos = [pos[n] for n in sig.inputs]
        derived = [(pos[sp], [(pos[b], f"{fname}: {b}") for b in bufs],
                    f"{fname}: {', '.join(bufs)} must have the same length")
                   for sp, bufs in sig.derived.items()]
        outs = [(pos[n], self._buffer_reader(d), pos.get(d.get("size_ptr", ""), -1))
                for n, d in sig.params if d["k"] == "buffer" and d["dir"] != "in"]
        rk = sig.result["k"]
        has_result = rk != "void"
        read_result = self._reader(sig.result)
        raising, reporting = sig.errno == "raise", sig.errno == "report"
        track_errno = raising or reporting
        null_fails = rk in ("handle", "str")
        standin = self.cfg.standin is not None
        closes = sig.closes is not None
        handles = self._handles

        def plan(args: Sequence[Any]) -> list[Any]:
            if type(args) not in _SEQUENCES or len(args) != n_inputs:
                raise TypeError(usage)
            made: list[tuple[Any, int]] = []
            if direct:
                cargs: Sequence[Any] = args
            else:
                vals: list[Any] = [None] * n_params
                for p, v in zip(input_pos, args, strict=True):
                    vals[p] = v
                for p, bufs, mismatch in derived:
                    lens = {_length(vals[b], where) for b, where in bufs}
                    if len(lens) != 1:
                        raise ValueError(mismatch)
                    vals[p] = lens.pop()
                made = [make(vals) for make in makers]
                cargs = [cd for cd, _ in made]
            if track_errno:
                ffi.errno = 0
            if standin:
                self._callback_error = None
            try:
                ret = fn(*cargs)
            except (TypeError, OverflowError):
                if direct:  # say which argument cffi refused
                    for convert, v in zip(converts, args, strict=True):
                        convert(v)
                raise
            err = ffi.errno if track_errno else 0
            if standin and self._callback_error is not None:
                e, self._callback_error = self._callback_error, None
                raise e
            result: list[Any] = []
            if has_result:
                if raising and ((ret == ffi.NULL) if null_fails else ret < 0):
                    code = err or errno.EIO
                    raise OSError(code, f"{fname}: {os.strerror(code)}")
                result.append(ret if read_result is None else read_result(ret))
            for p, read, size_ptr in outs:
                cd, count = made[p]
                if size_ptr >= 0:  # the library says how much it wrote: never past count
                    count = max(0, min(int(made[size_ptr][0][0]), count))
                result.append(read(cd, count))
            if reporting:
                result.append(err)
            if closes:
                handles.pop(args[0], None)
            return result

        return plan

    def _maker(self, d: dict[str, Any], p: int, pos: dict[str, int], convert: Convert,
               where: str) -> Make:
        """How parameter ``p``'s C argument is made from the values by parameter position."""
        ffi, k = self.ffi, d["k"]
        if k == "handle":
            htype = d["type"]
            return lambda vals: (self._pointer(htype, vals[p], where), 0)
        if k == "str":
            return lambda vals: (ffi.new("char[]", _cstring(vals[p], where)), 0)
        if k != "buffer":
            return lambda vals: (convert(vals[p]), 0)
        ctype, direction = d["ctype"], d["dir"]
        if d.get("single"):
            ptr_t = ffi.typeof(f"{ctype} *")
            if direction == "out":
                return lambda vals: (ffi.new(ptr_t), 1)
            init = self._convert(d["elem"], where)
            return lambda vals: (ffi.new(ptr_t, init(vals[p])), 1)
        array_t, itemsize = ffi.typeof(f"{ctype}[]"), ffi.sizeof(ctype)
        if direction == "out":
            sp = d.get("size_param", d.get("size_ptr"))
            fixed, sp_pos = d.get("size", 0), pos.get(sp or "", -1)
            limit = self.cfg.max_buffer

            def out_buffer(vals: list[Any]) -> tuple[Any, int]:
                count = fixed if sp_pos < 0 else vals[sp_pos]
                if type(count) is not int or count < 0:
                    raise ValueError(f"{where}: the size must be a non-negative integer")
                if count * itemsize > limit:
                    raise ValueError(f"{where}: {count} items exceed max_buffer "
                                     f"({limit} bytes)")
                return ffi.new(array_t, count), count

            return out_buffer
        exact, is_bytes = d.get("size"), d["bytes"]
        elem = self._convert(d["elem"], where)

        def in_buffer(vals: list[Any]) -> tuple[Any, int]:
            value = vals[p]
            count = _length(value, where)
            if exact is not None and count != exact:
                raise ValueError(f"{where}: needs exactly {exact} items, got {count}")
            if is_bytes:
                cd = ffi.new(array_t, count)
                ffi.memmove(cd, value, count)
                return cd, count
            return ffi.new(array_t, [elem(v) for v in value]), count

        return in_buffer

    def _convert(self, d: dict[str, Any], where: str) -> Convert:
        """A checked cffi initializer for values of type ``d``."""
        k = d["k"]
        if k == "int":
            lo, hi = d["min"], d["max"]

            def integer(v: Any) -> Any:
                if type(v) is int and lo <= v <= hi:
                    return v
                return self._cvalue(d, v, where)

            return integer
        if k in ("struct", "array"):
            return lambda v: self._init(d, v, where)
        if k in ("float", "bool", "char", "enum"):
            return lambda v: self._cvalue(d, v, where)
        return lambda v: v  # handles and strings have makers of their own

    def _reader(self, d: dict[str, Any]) -> Callable[[Any], Any] | None:
        """How a returned C value of type ``d`` becomes a plain value; None: as it is."""
        if d["k"] in ("int", "float", "char", "enum", "void"):
            return None
        return lambda cd: self._out(d, cd)

    def _buffer_reader(self, d: dict[str, Any]) -> Read:
        ffi, elem = self.ffi, d["elem"]
        read = self._reader(elem) or (lambda x: x)
        if d.get("single"):
            return lambda cd, count: read(cd[0])
        if d["bytes"]:
            itemsize = ffi.sizeof(d["ctype"])
            return lambda cd, count: bytes(ffi.buffer(cd, count * itemsize))
        return lambda cd, count: [read(cd[i]) for i in range(count)]

    # -- values ---------------------------------------------------------------------------

    def _init(self, d: dict[str, Any], v: Any, where: str) -> Any:
        """A checked cffi initializer for a value of type ``d``."""
        k = d["k"]
        if k == "struct":
            if not isinstance(v, dict):
                raise TypeError(f"{where}: {d['name']} is given as a dict, not "
                                f"{type(v).__name__}")
            fields = dict(d["fields"])
            unknown = set(v) - set(fields)
            if unknown:
                raise TypeError(f"{where}: {d['name']} has no field {sorted(unknown)[0]!r}")
            return {n: self._init(fields[n], x, f"{where}.{n}") for n, x in v.items()}
        if k == "array":
            n = _length(v, where)
            if n > d["length"]:
                raise ValueError(f"{where}: at most {d['length']} items, got {n}")
            if d["bytes"]:
                return bytes(v) if d["elem"]["k"] == "char" else list(bytes(v))
            return [self._init(d["elem"], x, where) for x in v]
        return self._cvalue(d, v, where)

    def _cvalue(self, d: dict[str, Any], v: Any, where: str) -> Any:
        k = d["k"]
        if k == "int":
            if not isinstance(v, int):
                raise TypeError(f"{where}: expects an integer, not {type(v).__name__}")
            if not d["min"] <= v <= d["max"]:
                raise ValueError(f"{where}: {v} is out of range {d['min']}..{d['max']}")
            return int(v)
        if k == "float":
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise TypeError(f"{where}: expects a number, not {type(v).__name__}")
            return float(v)
        if k == "bool":
            if not isinstance(v, bool | int) or v not in (0, 1):
                raise TypeError(f"{where}: expects a bool, not {v!r}")
            return bool(v)
        if k == "char":
            if isinstance(v, int) and 0 <= v <= 255:
                return bytes([v])
            if isinstance(v, bytes) and len(v) == 1:
                return v
            raise TypeError(f"{where}: expects one byte, not {v!r}")
        if k == "enum":
            if isinstance(v, str):
                if v not in d["values"]:
                    raise ValueError(f"{where}: {d['name']} has no value {v!r}")
                return d["values"][v]
            if isinstance(v, bool) or not isinstance(v, int) or not -2**31 <= v < 2**32:
                raise TypeError(f"{where}: expects a {d['name']} name or integer")
            return v
        if k in ("struct", "array"):
            return self._init(d, v, where)
        raise TypeError(f"{where}: cannot pass a {k}")

    def _pointer(self, htype: str, wid: Any, where: str) -> Any:
        if wid is None:
            return self.ffi.NULL
        entry = self._handles.get(wid) if type(wid) is int else None
        if entry is None or entry[0] != htype:
            raise OSError(errno.EBADF, f"{where}: not an open {htype} handle")
        return entry[1]

    def _out(self, d: dict[str, Any], cd: Any) -> Any:
        k = d["k"]
        if k == "handle":
            if cd == self.ffi.NULL:
                return None
            wid = self._next
            self._next += 1
            self._handles[wid] = (d["type"], cd)
            return wid
        if k == "str":
            return None if cd == self.ffi.NULL else \
                self.ffi.string(cd).decode("utf-8", "replace")
        if k == "struct":
            return {n: self._out(fd, getattr(cd, n)) for n, fd in d["fields"]}
        if k == "array":
            if d["bytes"]:
                return bytes(self.ffi.buffer(cd))
            return [self._out(d["elem"], x) for x in cd]
        if k == "bool":
            return bool(cd)
        return cd


def _length(v: Any, where: str) -> int:
    if isinstance(v, bytes | bytearray | list | tuple | str):
        return len(v)
    raise TypeError(f"{where}: expects bytes or a list, not {type(v).__name__}")


def _cstring(v: Any, where: str) -> bytes:
    b = v.encode() if isinstance(v, str) else v
    if not isinstance(b, bytes):
        raise TypeError(f"{where}: expects a string, not {type(v).__name__}")
    if b"\0" in b:
        raise ValueError(f"{where}: a C string cannot contain NUL")
    return b


def run_guarded(engine: Engine, fname: str, args: Any) -> list[Any]:
    """A reply frame for one call: [0, values] or [1, errno, message] or [2, type, message]."""
    try:
        return [0, engine.call(fname, args)]
    except OSError as e:
        return [1, e.errno or errno.EIO, e.strerror or str(e)]
    except (TypeError, ValueError, OverflowError) as e:
        return [2, "TypeError" if isinstance(e, TypeError) else "ValueError", str(e)]
    except Exception as e:  # the library or the stand-in failed: report, keep serving
        return [1, errno.EIO, f"{fname}: {type(e).__name__}: {e}"]


def reply_value(reply: list[Any]) -> list[Any]:
    """The values of a reply frame, or the error it carries raised."""
    if reply[0] == 0:
        values: list[Any] = reply[1]
        return values
    if reply[0] == 1:
        raise OSError(reply[1], reply[2])
    raise (TypeError if reply[1] == "TypeError" else ValueError)(reply[2])


def main(argv: list[str]) -> int:
    """Worker entry point: ``python -m bridge.libworker RFD WFD`` (started by WorkerProcess):
    calls come in on pipe RFD, replies go out on pipe WFD."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when we stop
    chan = Channel(int(argv[1]), int(argv[2]))
    cfg = chan.recv()
    if cfg is None:
        return 0
    try:
        engine = Engine(LibraryConfig.from_wire(cfg))
    except Exception as e:
        chan.send([1, errno.EINVAL, str(e)])
        return 1
    chan.send([0, os.getpid()])
    while True:
        req = chan.recv()
        if req is None:
            return 0
        chan.send(run_guarded(engine, req[0], req[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
