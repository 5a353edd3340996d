# Calling a native library: the Engine (marshal plain values into cffi cdata, call, read the
# results back, keep the library's opaque pointers in a table) and the worker process's main
# loop. The runners that host an Engine, in this process or in that worker, are
# bridge/librunner.py. The worker speaks length-prefixed msgpack over a socketpair: no
# pickle, and no pointer ever leaves it.
# Must not know about the wire protocol, sessions or client tokens (bridge/library.py).
from __future__ import annotations

import errno
import importlib
import os
import signal
import socket
import struct
import sys
from collections.abc import Sequence
from typing import Any

import msgpack

from .libdecl import DeclarationError, LibraryConfig, parse_declarations

_LEN = struct.Struct(">I")


class Engine:
    """One loaded library (or its Python stand-in) and the pointers it handed out."""

    def __init__(self, cfg: LibraryConfig) -> None:
        self.cfg = cfg
        self.ffi, self.sigs = parse_declarations(cfg)
        self._fns: dict[str, Any] = {}
        self._handles: dict[int, tuple[str, Any]] = {}
        self._next = 1
        self._callback_error: BaseException | None = None
        self._where = {f: {n: f"{f}: {n}" for n, _ in sig.params} for f, sig in self.sigs.items()}
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

    def _onerror(self, et: type[BaseException], ev: BaseException, tb: object) -> None:
        self._callback_error = ev

    def call(self, fname: str, args: Sequence[Any]) -> list[Any]:
        """Call ``fname`` with the caller's inputs; [return value, out values..., errno]."""
        sig = self.sigs.get(fname)
        if sig is None:
            raise PermissionError(errno.EACCES, f"{fname} is not a function the manifest "
                                                "lets clients call")
        if not isinstance(args, list | tuple) or len(args) != len(sig.inputs):
            raise TypeError(f"{fname} takes {len(sig.inputs)} arguments "
                            f"({', '.join(sig.inputs)})")
        given = dict(zip(sig.inputs, args, strict=True))
        wheres = self._where[fname]
        for sp, bufs in sig.derived.items():
            lens = {_length(given[b], f"{fname}: {b}") for b in bufs}
            if len(lens) != 1:
                raise ValueError(f"{fname}: {', '.join(bufs)} must have the same length")
            given[sp] = lens.pop()
        cargs: list[Any] = []
        outs: list[tuple[dict[str, Any], Any, int]] = []
        cds: dict[str, Any] = {}
        for name, d in sig.params:
            where = wheres[name]
            if d["k"] == "buffer":
                cd, count = self._buffer(d, given, name, where)
                if d["dir"] != "in":
                    outs.append((d, cd, count))
                cargs.append(cd)
                cds[name] = cd
            elif d["k"] == "handle":
                cargs.append(self._pointer(d["type"], given[name], where))
            elif d["k"] == "str":
                cargs.append(self.ffi.new("char[]", _cstring(given[name], where)))
            else:
                cargs.append(self._cvalue(d, given[name], where))
        ffi = self.ffi
        self._callback_error = None
        ffi.errno = 0
        ret = self._fns[fname](*cargs)
        err = ffi.errno
        if self._callback_error is not None:
            e, self._callback_error = self._callback_error, None
            raise e
        result: list[Any] = []
        if sig.result["k"] != "void":
            failed = (ret == ffi.NULL) if sig.result["k"] in ("handle", "str") else \
                (sig.result["k"] == "int" and ret < 0)
            if sig.errno == "raise" and failed:
                raise OSError(err or errno.EIO, f"{fname}: {os.strerror(err or errno.EIO)}")
            result.append(self._out(sig.result, ret))
        for d, cd, count in outs:
            if "size_ptr" in d:  # the library says how much it wrote: never past count
                count = max(0, min(int(cds[d["size_ptr"]][0]), count))
            result.append(self._read_buffer(d, cd, count))
        if sig.errno == "report":
            result.append(err)
        if sig.closes is not None:
            self._handles.pop(given[sig.inputs[0]], None)
        return result

    # -- marshalling ----------------------------------------------------------------------

    def _buffer(self, d: dict[str, Any], given: dict[str, Any], name: str,
                where: str) -> tuple[Any, int]:
        ffi, ctype = self.ffi, d["ctype"]
        if d.get("single"):
            init = None if d["dir"] == "out" else self._init(d["elem"], given[name], where)
            return ffi.new(f"{ctype} *", init), 1
        if d["dir"] == "out":
            sp = d.get("size_param", d.get("size_ptr"))
            count = d["size"] if sp is None else given[sp]
            if type(count) is not int or count < 0:
                raise ValueError(f"{where}: the size must be a non-negative integer")
            if count * ffi.sizeof(ctype) > self.cfg.max_buffer:
                raise ValueError(f"{where}: {count} items exceed max_buffer "
                                 f"({self.cfg.max_buffer} bytes)")
            return ffi.new(f"{ctype}[]", count), count
        value = given[name]
        count = _length(value, where)
        if "size" in d and count != d["size"]:
            raise ValueError(f"{where}: needs exactly {d['size']} items, got {count}")
        if d["bytes"]:
            cd = ffi.new(f"{ctype}[]", count)
            ffi.memmove(cd, value, count)
            return cd, count
        return ffi.new(f"{ctype}[]", [self._init(d["elem"], v, where) for v in value]), count

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

    def _read_buffer(self, d: dict[str, Any], cd: Any, count: int) -> Any:
        if d.get("single"):
            return self._out(d["elem"], cd[0])
        if d["bytes"]:
            return bytes(self.ffi.buffer(cd, count * self.ffi.sizeof(d["ctype"])))
        return [self._out(d["elem"], cd[i]) for i in range(count)]


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


# -- the worker process ----------------------------------------------------------------------

def send_msg(sock: socket.socket, obj: Any) -> None:
    body = msgpack.packb(obj, use_bin_type=True)
    sock.sendall(_LEN.pack(len(body)) + body)


def recv_msg(sock: socket.socket) -> Any:
    """One frame; None at end of stream. Honours the socket's timeout (socket.timeout).

    Calls strictly alternate with replies, so a frame never shares a read with the next.
    """
    data = b""
    need = 4
    while len(data) < need:
        chunk = sock.recv(max(65536, need - len(data)))
        if not chunk:
            return None
        data += chunk
        if need == 4 and len(data) >= 4:
            need = 4 + _LEN.unpack_from(data)[0]
    return msgpack.unpackb(data[4:need], raw=False, strict_map_key=False)


def main(argv: list[str]) -> int:
    """Worker entry point: ``python -m bridge.libworker FD`` (started by WorkerProcess)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when we stop
    sock = socket.socket(fileno=int(argv[1]))
    cfg = recv_msg(sock)
    if cfg is None:
        return 0
    try:
        engine = Engine(LibraryConfig.from_wire(cfg))
    except Exception as e:
        send_msg(sock, [1, errno.EINVAL, str(e)])
        return 1
    send_msg(sock, [0, os.getpid()])
    while True:
        req = recv_msg(sock)
        if req is None:
            return 0
        send_msg(sock, run_guarded(engine, req[0], req[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
