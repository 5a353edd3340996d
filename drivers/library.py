# The proxy for remote native libraries (kind "library"). Opening one asks the host once for
# the declared functions; each becomes an explicit callable attribute, `lib.FUNC(...)`,
# that checks its arguments against the declarations and then costs exactly one round trip
# (or one entry of a batch). Client side, pure Python, importable on Windows: no cffi here,
# ctypes only for users who bring ctypes Structures. Must not know about sockets.
from __future__ import annotations

import ctypes
import errno
import keyword
import operator
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .base import Proxy

if TYPE_CHECKING:
    from bridge.client import Client

_BYTES = (bytes, bytearray, memoryview)


class Opaque:
    """An opaque pointer the library returned (``struct dev *``): a token the host issued.

    It is valid only in later calls on the library handle that received it; the host
    releases it through the declared close function when the connection ends.
    """

    __slots__ = ("type", "token")

    def __init__(self, type: str, token: bytes) -> None:
        self.type = type
        self.token = token

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)

    def __repr__(self) -> str:
        return f"<{self.type} * {self.token[:4].hex()}>"


class Function:
    """One declared function of a remote library; call it like the C function.

    Pass the inputs only: out buffers are allocated by the host and returned, and a size
    parameter that an in buffer's length determines is filled in by the host. The result is
    the C return value followed by the out values (and errno when declared ``errno = true``);
    a single value comes back bare, none as None.
    """

    def __init__(self, lib: Library, sig: dict[str, Any]) -> None:
        self.lib = lib
        self.name: str = sig["name"]
        self.params: dict[str, dict[str, Any]] = dict(sig["params"])
        self.order: list[str] = [n for n, _ in sig["params"]]
        self.inputs: list[str] = sig["inputs"]
        self.outputs: list[str] = sig["outputs"]
        self.result: dict[str, Any] = sig["result"]
        self.derived = {n: [b for b in self.order if self.params[b].get("size_param") == n and
                            self.params[b]["dir"] != "out"] for n in self.order
                        if n not in self.inputs and self.params[n]["k"] != "buffer"}
        self.__doc__ = (f"{self.name}({', '.join(self.inputs)}) -> "
                        f"{', '.join(self.outputs) or 'None'}")
        # Planned once: a checker per input, and how the reply becomes the result.
        self._checks = [_checker(self.params[n], f"{self.name}: {n}") for n in self.inputs]
        index = {n: i for i, n in enumerate(self.inputs)}
        self._shared = [(size, [index[b] for b in bufs]) for size, bufs in self.derived.items()
                        if len(bufs) > 1]
        self._result = self._plan_result()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Check the arguments against the declaration, then call on the host."""
        if kwargs or len(args) != len(self._checks):
            return self._send(self._bind(args, kwargs), self._result)
        wire = [check(v) for check, v in zip(self._checks, args, strict=True)]
        if self._shared:
            self._same_lengths(args)
        lib = self.lib
        if lib.closed:
            raise OSError(errno.EBADF, f"{lib.name}: the library handle is closed")
        h = lib._handle
        if type(h) is not int:
            h = lib.handle
        return lib.client.call("call", [h, self.name, wire, lib._timeout], self._result)

    def ctypes(self, *cargs: Any) -> Any:
        """Call with every C parameter, ctypes-style: out and inout parameters are ctypes
        objects (Structure, array, scalar, or ``byref``/``pointer`` of one) that are filled
        in place, as a local ctypes call would. Returns the C return value (with errno when
        declared ``errno = true``)."""
        if len(cargs) != len(self.order):
            raise TypeError(f"{self.name} takes {len(self.order)} C arguments "
                            f"({', '.join(self.order)}), got {len(cargs)}")
        given = {n: _deref(v) for n, v in zip(self.order, cargs, strict=True)}
        sizes = {n: given[n] for n in self.derived}
        plain: dict[str, Any] = {}
        for n in self.inputs:
            d, v = self.params[n], given[n]
            if d["k"] == "buffer" and "size_param" in d:
                count = sizes.get(d["size_param"], given.get(d["size_param"]))
                plain[n] = _from_ctypes(v, _int(count, f"{self.name}: {d['size_param']}"))
            else:
                plain[n] = _from_ctypes(v)
        targets = [(n, given[n]) for n in self.order
                   if self.params[n]["k"] == "buffer" and self.params[n]["dir"] != "in"]
        for n, obj in targets:
            d = self.params[n]
            if d["elem"]["k"] == "handle":
                raise TypeError(f"{self.name}: {n} returns a handle, which no ctypes object "
                                f"can hold; call lib.{self.name}(...) instead")
            sp = d.get("size_param", d.get("size_ptr"))
            if sp is not None and isinstance(obj, ctypes.Array) and \
                    _int(_from_ctypes(given[sp]), f"{self.name}: {sp}") > len(obj):
                raise ValueError(f"{self.name}: {sp} is larger than the {len(obj)} items "
                                 f"of the ctypes object given for {n}")

        def fill(values: list[Any]) -> Any:
            outs = dict(zip(self.outputs, values, strict=True))
            for n, obj in targets:
                _into_ctypes(obj, outs[n], f"{self.name}: {n}")
            rest = [self._wrap(k, outs[k]) for k in self.outputs
                    if k == "return" or k == "errno"]
            return None if not rest else rest[0] if len(rest) == 1 else tuple(rest)

        return self._send([check(plain[n]) for check, n in
                           zip(self._checks, self.inputs, strict=True)], fill)

    # -- plumbing -------------------------------------------------------------------------

    def _send(self, wire: list[Any], shape: Any) -> Any:
        lib = self.lib
        if lib.closed:
            raise OSError(errno.EBADF, f"{lib.name}: the library handle is closed")
        return lib.client.call("call", [lib.handle, self.name, wire, lib.timeout], shape)

    def _bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
        if len(args) > len(self.inputs):
            raise TypeError(f"{self.__doc__}: takes {len(self.inputs)} arguments, "
                            f"got {len(args)}")
        bound = dict(zip(self.inputs, args, strict=False))
        for k, v in kwargs.items():
            if k not in self.inputs or k in bound:
                raise TypeError(f"{self.name}: unexpected or repeated argument {k!r}")
            bound[k] = v
        missing = [n for n in self.inputs if n not in bound]
        if missing:
            raise TypeError(f"{self.__doc__}: missing {', '.join(missing)}")
        values = [bound[n] for n in self.inputs]
        wire = [check(v) for check, v in zip(self._checks, values, strict=True)]
        self._same_lengths(values)
        return wire

    def _same_lengths(self, values: Sequence[Any]) -> None:
        """In buffers that share a size parameter must have the same length."""
        for size, idx in self._shared:
            if len({len(values[i]) for i in idx}) > 1:
                raise ValueError(f"{self.name}: {', '.join(self.inputs[i] for i in idx)} "
                                 f"share {size} and must have the same length")

    def _plan_result(self) -> Callable[[list[Any]], Any]:
        """The reply's values as the caller gets them: one bare, several as a tuple, none as
        None; opaque pointers wrapped."""
        n = len(self.outputs)
        if any(self._is_handle(k) for k in self.outputs):
            return self._shape
        if n == 0:
            return _none
        return operator.itemgetter(0) if n == 1 else tuple

    def _is_handle(self, name: str) -> bool:
        d = self.result if name == "return" else self.params.get(name, {})
        if d.get("k") == "buffer":
            d = d["elem"]
        return d.get("k") == "handle"

    def _wrap(self, name: str, v: Any) -> Any:
        d = self.result if name == "return" else self.params.get(name, {})
        if d.get("k") == "buffer":  # an out-param struct dev ** carries a handle too
            d = d["elem"]
        if d.get("k") == "handle" and v is not None:
            return Opaque(d["type"], v)
        return v

    def _shape(self, values: list[Any]) -> Any:
        out = [self._wrap(n, v) for n, v in zip(self.outputs, values, strict=True)]
        return None if not out else out[0] if len(out) == 1 else tuple(out)

    def __repr__(self) -> str:
        return f"<remote function {self.lib.name}.{self.__doc__}>"


def _none(values: list[Any]) -> None:
    return None


def _checker(d: dict[str, Any], where: str) -> Callable[[Any], Any]:
    """The check of one input of type ``d``: its wire form, or TypeError/ValueError."""
    k = d["k"]
    if k == "buffer" and d.get("single"):
        d, k = d["elem"], d["elem"]["k"]
    if k == "int":
        lo, hi = d["min"], d["max"]

        def integer(v: Any) -> Any:
            if type(v) is int and lo <= v <= hi:
                return v
            return _value(d, v, where)

        return integer
    if k == "buffer":
        return lambda v: _buffer(d, v, where)
    return lambda v: _value(d, v, where)


def _buffer(d: dict[str, Any], v: Any, where: str) -> Any:
    """An in or inout buffer in its wire form: bytes, or a list of checked items."""
    if d["dir"] == "out":
        raise AssertionError(where)  # out buffers are never inputs
    if d["bytes"] and isinstance(v, _BYTES):
        v = bytes(v)
    elif isinstance(v, list | tuple):
        v = [_value(d["elem"], x, where) for x in v]
    else:
        raise TypeError(f"{where}: expects {'bytes' if d['bytes'] else 'a list'}, "
                        f"not {type(v).__name__}")
    if "size" in d and len(v) != d["size"]:
        raise ValueError(f"{where}: needs exactly {d['size']} items, got {len(v)}")
    return v


def _value(d: dict[str, Any], v: Any, where: str) -> Any:
    """``v`` checked against type descriptor ``d``, in its wire form."""
    k = d["k"]
    if k == "int" or (k == "enum" and not isinstance(v, str)):
        if not isinstance(v, int):
            raise TypeError(f"{where}: expects an integer, not {type(v).__name__}")
        lo, hi = (d["min"], d["max"]) if k == "int" else (-2**31, 2**32 - 1)
        if not lo <= v <= hi:
            raise ValueError(f"{where}: {v} is out of range {lo}..{hi}")
        return int(v)
    if k == "enum":
        if v not in d["values"]:
            raise ValueError(f"{where}: {d['name']} has no value {v!r}")
        return v
    if k == "float":
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"{where}: expects a number, not {type(v).__name__}")
        return float(v)
    if k == "bool":
        if v not in (0, 1) or not isinstance(v, int):
            raise TypeError(f"{where}: expects a bool, not {v!r}")
        return bool(v)
    if k == "char":
        if isinstance(v, _BYTES) and len(v) == 1:
            return bytes(v)
        raise TypeError(f"{where}: expects one byte, not {v!r}")
    if k == "str":
        b = v.encode() if isinstance(v, str) else bytes(v) if isinstance(v, _BYTES) else None
        if b is None:
            raise TypeError(f"{where}: expects a string, not {type(v).__name__}")
        if b"\0" in b:
            raise ValueError(f"{where}: a C string cannot contain NUL")
        return b
    if k == "handle":
        if v is None:
            return None
        if not isinstance(v, Opaque) or v.type != d["type"]:
            raise TypeError(f"{where}: expects a {d['type']} handle, not {v!r}")
        return v.token
    if k == "struct":
        if isinstance(v, ctypes.Structure | ctypes.Union):
            v = _from_ctypes(v)
        if not isinstance(v, dict):
            raise TypeError(f"{where}: {d['name']} is given as a dict, not {type(v).__name__}")
        fields = dict(d["fields"])
        unknown = set(v) - set(fields)
        if unknown:
            raise TypeError(f"{where}: {d['name']} has no field {sorted(unknown)[0]!r}")
        return {n: _value(fields[n], x, f"{where}.{n}") for n, x in v.items()}
    if k == "array":
        if d["bytes"] and isinstance(v, _BYTES):
            v = bytes(v)
        elif isinstance(v, list | tuple):
            v = [_value(d["elem"], x, where) for x in v]
        else:
            raise TypeError(f"{where}: expects a sequence, not {type(v).__name__}")
        if len(v) > d["length"]:
            raise ValueError(f"{where}: at most {d['length']} items, got {len(v)}")
        return v
    raise TypeError(f"{where}: cannot pass a {k}")


def _int(v: Any, where: str) -> int:
    if not isinstance(v, int) or v < 0:
        raise TypeError(f"{where}: expects a non-negative integer size, not {v!r}")
    return v


def _deref(v: Any) -> Any:
    """The object behind ``ctypes.byref(x)`` or ``ctypes.pointer(x)``."""
    if type(v).__name__ == "CArgObject":
        return v._obj
    if isinstance(v, ctypes._Pointer):
        return v.contents
    return v


def _from_ctypes(v: Any, count: int | None = None) -> Any:
    """A ctypes object as plain values (dicts, lists, bytes); first ``count`` items only."""
    if isinstance(v, ctypes.Structure | ctypes.Union):
        return {f[0]: _from_ctypes(getattr(v, f[0])) for f in v._fields_}
    if isinstance(v, ctypes.Array):
        if ctypes.sizeof(v._type_) == 1 and v._type_ is not ctypes.c_bool:
            data = bytes(memoryview(v).cast("B"))
            return data if count is None else data[:count]
        items = [_from_ctypes(x) for x in v]
        return items if count is None else items[:count]
    if isinstance(v, ctypes._SimpleCData):
        return v.value
    if count is not None and isinstance(v, _BYTES):
        return bytes(v)[:count]
    return v


def _into_ctypes(obj: Any, value: Any, where: str) -> None:
    """Write a returned plain value into the caller's ctypes object, in place."""
    if isinstance(obj, ctypes.Structure | ctypes.Union) and isinstance(value, dict):
        for name, v in value.items():
            cur = getattr(obj, name)
            if isinstance(cur, ctypes.Structure | ctypes.Union | ctypes.Array):
                _into_ctypes(cur, v, where)
            else:
                setattr(obj, name, v)
    elif isinstance(obj, ctypes.Array):
        if isinstance(value, bytes):
            if len(value) > ctypes.sizeof(obj):
                raise ValueError(f"{where}: {len(value)} bytes do not fit the ctypes buffer")
            ctypes.memmove(obj, value, len(value))
        else:
            for i, v in enumerate(value):
                obj[i] = v
    elif isinstance(obj, ctypes._SimpleCData):
        obj.value = value
    elif isinstance(obj, bytearray) and isinstance(value, bytes):
        obj[:len(value)] = value
    else:
        raise TypeError(f"{where}: cannot store a result in {type(obj).__name__}")


class Library(Proxy):
    """A native library on a remote host: ``lib.FUNC(args...)`` as declared in its manifest.

    ``timeout`` (seconds, None for the manifest's own bound) limits each call; a call past it
    kills the library's worker on the host and raises TimeoutError.
    """

    def __init__(self, client: Client, name: str, handle: Any,
                 description: dict[str, Any] | None = None) -> None:
        super().__init__(client, name, handle, description)
        self._timeout: float | None = None
        self.functions: dict[str, Function] = {}
        client.call("functions", [handle], self._install)  # in a batch: when it has run

    def _install(self, sigs: list[dict[str, Any]]) -> None:
        for s in sigs:
            f = self.functions[s["name"]] = Function(self, s)
            if (s["name"].isidentifier() and not keyword.iskeyword(s["name"]) and
                    not s["name"].startswith("_") and not hasattr(type(self), s["name"])):
                setattr(self, s["name"], f)


    @property
    def timeout(self) -> float | None:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not value > 0):
            raise ValueError(f"a library call timeout is None or > 0 seconds, not {value!r}")
        self._timeout = value

    def call(self, fname: str, *args: Any, **kwargs: Any) -> Any:
        """``lib.call("FUNC", ...)``: the same as ``lib.FUNC(...)``, for any declared name."""
        f = self.functions.get(fname)
        if f is None:
            raise PermissionError(errno.EACCES, f"{self.name}: {fname!r} is not a function "
                                                "the host lets clients call")
        return f(*args, **kwargs)

    def close(self) -> None:
        """Release the handle; the host closes the opaque handles it still holds."""
        if not self.closed:
            self.closed = True
            self.client.call("close", [self.handle])


    def __repr__(self) -> str:
        return f"<Library {self.name} on {self.client.url}: {', '.join(self.functions)}>"
