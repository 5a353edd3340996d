# The declarations of a remote native library (kind "library"): the manifest's options
# (cdef or header, callable functions with pointer directions and sizes, opaque handle
# types, isolation, timeouts) checked against the C declarations that cffi parses, and
# turned into plain type descriptors that the engine, the host and the client all share.
# Must not load the library, call anything or know about sockets: it only reads text.
#
# A type descriptor is a dict with "k" (kind) and kind-specific keys:
#   int {min, max} | float | bool | char | enum {values} | str | void
#   struct {name, fields: [[name, desc]]} | array {elem, length, bytes}
#   handle {type}       an opaque pointer the library hands out; the client holds a token
#   buffer {elem, dir, size | size_param | size_ptr, single, bytes}    a pointer parameter
#       (elem may be a handle for an out-param `struct dev **`; size_ptr names a single
#       integer inout parameter holding the capacity in and the count written out)
from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DIRECTIONS = ("in", "out", "inout")
ISOLATIONS = ("process", "none")
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BUFFER = 4 * 1024 * 1024
_FUNC_KEYS = {"args", "errno", "timeout", "inline"}
_ERRNO_MODES = {False: "", True: "report", "report": "report", "raise": "raise"}


class DeclarationError(ValueError):
    """The manifest's library declarations are inconsistent; the message says where."""


@dataclass(frozen=True)
class LibraryConfig:
    """The manifest options of one library device, in a form the worker can receive."""

    name: str
    path: str | None
    cdef: str
    functions: Mapping[str, Mapping[str, Any]]
    handles: Mapping[str, str]  # handle type ("struct dev") -> its close function
    isolation: str = "process"
    timeout: float = DEFAULT_TIMEOUT
    max_buffer: int = DEFAULT_MAX_BUFFER
    standin: str | None = None  # a Python module implementing the functions (sim)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "cdef": self.cdef,
                "functions": {k: dict(v) for k, v in self.functions.items()},
                "handles": dict(self.handles), "isolation": self.isolation,
                "timeout": self.timeout, "max_buffer": self.max_buffer,
                "standin": self.standin}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> LibraryConfig:
        return cls(**d)


def config_from_options(name: str, path: str | None, options: Mapping[str, Any],
                        base: Path | None = None) -> LibraryConfig:
    """Read a device's manifest options (everything but the common keys)."""
    where = f"library {name}"
    known = {"cdef", "header", "functions", "handles", "isolation", "timeout", "max_buffer",
             "standin"}
    unknown = set(options) - known
    if unknown:
        raise DeclarationError(f"{where}: unknown keys: {', '.join(sorted(unknown))}")
    cdef = options.get("cdef")
    header = options.get("header")
    if (cdef is None) == (header is None):
        raise DeclarationError(f"{where}: give exactly one of cdef = \"...\" or header = FILE")
    if header is not None:
        if not isinstance(header, str):
            raise DeclarationError(f"{where}: header must be a file name")
        hp = Path(header)
        if not hp.is_absolute():
            hp = (base or Path(path or ".").parent) / hp
        try:
            cdef = hp.read_text()
        except OSError as e:
            raise DeclarationError(f"{where}: cannot read header {hp}: {e.strerror}") from None
    if not isinstance(cdef, str):
        raise DeclarationError(f"{where}: cdef must be a string of C declarations")
    funcs_raw = options.get("functions")
    if isinstance(funcs_raw, list) and all(isinstance(f, str) for f in funcs_raw):
        funcs_raw = {f: {} for f in funcs_raw}
    if not isinstance(funcs_raw, dict) or not funcs_raw:
        raise DeclarationError(f"{where}: functions must list the callable symbols "
                               "(a list of names, or a table of name = {options})")
    functions: dict[str, dict[str, Any]] = {}
    for fname, fopts in funcs_raw.items():
        if not isinstance(fopts, dict) or set(fopts) - _FUNC_KEYS:
            raise DeclarationError(f"{where}: functions.{fname} takes only "
                                   f"{', '.join(sorted(_FUNC_KEYS))}")
        functions[fname] = fopts
    handles = options.get("handles", {})
    if not isinstance(handles, dict) or not all(isinstance(v, str) for v in handles.values()):
        raise DeclarationError(f"{where}: handles maps a type to its close function, "
                               "e.g. handles = { \"struct dev\" = \"dev_close\" }")
    handles = {_norm(t): c for t, c in handles.items()}
    isolation = options.get("isolation", "process")
    if isolation not in ISOLATIONS:
        raise DeclarationError(f"{where}: isolation must be \"process\" or \"none\"")
    timeout = _seconds(options.get("timeout", DEFAULT_TIMEOUT), f"{where}: timeout")
    max_buffer = options.get("max_buffer", DEFAULT_MAX_BUFFER)
    if type(max_buffer) is not int or max_buffer <= 0:
        raise DeclarationError(f"{where}: max_buffer must be a positive number of bytes")
    standin = options.get("standin")
    if standin is not None and not isinstance(standin, str):
        raise DeclarationError(f"{where}: standin must be a module name")
    return LibraryConfig(name, path, cdef, functions, handles, isolation, timeout,
                         max_buffer, standin)


def _seconds(v: object, where: str) -> float:
    if type(v) not in (int, float) or not 0 < v < 1e6:  # type: ignore[operator]
        raise DeclarationError(f"{where} must be a positive number of seconds")
    return float(v)  # type: ignore[arg-type]


@dataclass
class Signature:
    """One callable function: its C parameters and what a caller sends and gets back."""

    name: str
    params: list[tuple[str, dict[str, Any]]]  # every C parameter, in order
    result: dict[str, Any]
    inputs: list[str]  # the parameters a caller passes, in order
    outputs: list[str]  # "return" (unless void), then out parameters in order
    errno: str = ""  # "", "report" (errno is the last output) or "raise"
    timeout: float = DEFAULT_TIMEOUT
    derived: dict[str, list[str]] = field(default_factory=dict)  # size param -> in buffers
    closes: str | None = None  # the handle type this function releases
    ctype: str = ""  # the C function pointer type, e.g. "int(*)(int, int)"
    handle_inputs: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    handle_outputs: list[tuple[int, str]] = field(default_factory=list)  # (index, type)
    #: Declared to return at once: with isolation = "none" it may run on the host's event
    #: loop (bridge/loop.py); other functions of such a library run on the caller's lane.
    inline: bool = False

    def __post_init__(self) -> None:
        kinds = dict(self.params)
        self.handle_inputs = [(i, n, kinds[n]) for i, n in enumerate(self.inputs)
                              if kinds[n]["k"] == "handle"]
        for i, n in enumerate(self.outputs):
            d = self.result if n == "return" else kinds.get(n, {})
            d = d.get("elem", {}) if d.get("k") == "buffer" else d
            if d.get("k") == "handle":
                self.handle_outputs.append((i, d["type"]))

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "params": [[n, d] for n, d in self.params],
                "result": self.result, "inputs": self.inputs, "outputs": self.outputs,
                "errno": self.errno, "timeout": self.timeout, "closes": self.closes}


def parse_declarations(cfg: LibraryConfig) -> tuple[Any, dict[str, Signature]]:
    """(cffi FFI with the cdef loaded, signature of each callable function)."""
    import cffi
    from cffi import cparser
    from pycparser import c_ast, c_generator

    where = f"library {cfg.name}"
    ffi = cffi.FFI()
    try:
        ffi.cdef(cfg.cdef)
        ast, _, _ = cparser.Parser()._parse(cfg.cdef)  # for the parameter names
    except Exception as e:  # cffi raises CDefError, pycparser ParseError
        raise DeclarationError(f"{where}: cannot parse the C declarations: {e}") from None
    gen = c_generator.CGenerator()
    decls: dict[str, tuple[list[tuple[str, str]], str]] = {}
    for node in ast.ext:
        if isinstance(node, c_ast.Decl) and isinstance(node.type, c_ast.FuncDecl):
            fd = node.type
            params: list[tuple[str, str]] = []
            for i, p in enumerate(fd.args.params if fd.args else []):
                if isinstance(p, c_ast.EllipsisParam) or "__dotdotdot__" in gen.visit(p):
                    raise DeclarationError(f"{where}: {node.name}: variadic functions "
                                           "cannot be called remotely")
                ctext = gen._generate_type(p.type, emit_declname=False)
                if ctext.strip() != "void":
                    params.append((getattr(p, "name", None) or f"arg{i}", ctext))
            decls[node.name] = (params, gen._generate_type(fd.type, emit_declname=False))
    handles = cfg.handles
    for t in handles:
        try:
            ffi.typeof(t)
        except Exception:
            raise DeclarationError(f"{where}: handle type {t!r} is not declared") from None
    sigs: dict[str, Signature] = {}
    for fname, opts in cfg.functions.items():
        if fname not in decls:
            raise DeclarationError(f"{where}: function {fname} is not declared in the cdef")
        sigs[fname] = _signature(ffi, fname, decls[fname], opts, handles, cfg, where)
    for t, closer in handles.items():
        sig = sigs.get(closer)
        if sig is None or len(sig.inputs) != 1 or \
                dict(sig.params)[sig.inputs[0]] != {"k": "handle", "type": t}:
            raise DeclarationError(f"{where}: the close function of {t!r}, {closer}, must be "
                                   f"a listed function taking only a {t} *")
        sig.closes = t
    return ffi, sigs


def _norm(ctype: str) -> str:
    return " ".join(ctype.replace("*", "").split())


def _signature(ffi: Any, fname: str, decl: tuple[list[tuple[str, str]], str],
               opts: Mapping[str, Any], handles: Mapping[str, str], cfg: LibraryConfig,
               where: str) -> Signature:
    where = f"{where}: {fname}"
    cparams, cresult = decl
    args = opts.get("args", {})
    if not isinstance(args, dict) or set(args) - {n for n, _ in cparams}:
        raise DeclarationError(f"{where}: args names unknown parameters: "
                               f"{sorted(set(args) - {n for n, _ in cparams})}")
    params = [(n, _param(ffi, ctext, args.get(n), handles, f"{where}: parameter {n}"))
              for n, ctext in cparams]
    kinds = dict(params)
    derived: dict[str, list[str]] = {}
    for n, d in params:
        ptr = d.get("size_ptr")
        if ptr is not None:
            pd = kinds.get(ptr, {})
            if d["dir"] != "out" or not (pd.get("k") == "buffer" and pd.get("single") and
                                         pd["dir"] == "inout" and pd["elem"]["k"] == "int"):
                raise DeclarationError(f"{where}: size = \"*{ptr}\" needs an out buffer and "
                                       f"{ptr} an integer pointer declared {ptr} = \"inout\" "
                                       "(capacity in, count written out)")
        sp = d.get("size_param")
        if sp is None:
            continue
        if sp not in kinds or kinds[sp]["k"] != "int":
            raise DeclarationError(f"{where}: the size of {n} comes from {sp!r}, "
                                   "which must be an integer parameter")
        if d["dir"] != "out":
            derived.setdefault(sp, []).append(n)
    inputs = [n for n, d in params
              if n not in derived and not (d["k"] == "buffer" and d["dir"] == "out")]
    result = _value_type(ffi, ffi.typeof(cresult) if cresult != "void" else None, handles,
                         f"{where}: return type", returning=True)
    outputs = (["return"] if result["k"] != "void" else []) + \
        [n for n, d in params if d["k"] == "buffer" and d["dir"] != "in"]
    raw = opts.get("errno", False)
    mode = _ERRNO_MODES.get(raw) if isinstance(raw, bool | str) else None
    if mode is None:
        raise DeclarationError(f"{where}: errno must be true, \"report\" or \"raise\"")
    if mode == "report":
        outputs.append("errno")
    if mode == "raise" and result["k"] not in ("int", "handle", "str"):
        raise DeclarationError(f"{where}: errno = \"raise\" needs an int or pointer result")
    timeout = _seconds(opts.get("timeout", cfg.timeout), f"{where}: timeout")
    inline = opts.get("inline", False)
    if not isinstance(inline, bool):
        raise DeclarationError(f"{where}: inline must be true or false")
    ctype = f"{cresult}(*)({', '.join(c for _, c in cparams) or 'void'})"
    return Signature(fname, params, result, inputs, outputs, mode, timeout, derived, None,
                     ctype, inline=inline)


def _param(ffi: Any, ctext: str, opts: Any, handles: Mapping[str, str],
           where: str) -> dict[str, Any]:
    ct = ffi.typeof(ctext)
    if ct.kind == "array":  # a parameter declared as an array is a pointer to its items
        ct, fixed = ffi.typeof(ffi.getctype(ct.item, "*")), ct.length
    else:
        fixed = None
    if ct.kind != "pointer":
        if opts is not None:
            raise DeclarationError(f"{where}: only pointer parameters take a direction")
        return _value_type(ffi, ct, handles, where)
    item = ct.item
    if item.kind != "pointer" and _norm(item.cname) in handles and opts is None:
        return {"k": "handle", "type": _norm(item.cname)}
    if item.kind == "pointer" and item.item.kind != "pointer" and \
            _norm(item.item.cname) in handles:  # struct dev **: a handle out-parameter
        if opts not in ("out", {"dir": "out"}) or fixed is not None:
            raise DeclarationError(f"{where}: a {item.cname}* parameter returns one handle: "
                                   "declare it args.NAME = \"out\"")
        return {"k": "buffer", "dir": "out", "single": True, "size": 1, "bytes": False,
                "ctype": item.cname, "elem": {"k": "handle", "type": _norm(item.item.cname)}}
    if opts is None and item.cname in ("char", "const char"):
        return {"k": "str"}
    if opts is None and fixed is None:
        raise DeclarationError(f"{where}: a pointer needs args.NAME = {{dir = \"in\"|\"out\"|"
                               "\"inout\", size = N or \"other parameter\"}")
    opts = {} if opts is None else opts
    if isinstance(opts, str):
        opts = {"dir": opts}
    d = opts.get("dir", "in")
    if d not in DIRECTIONS or set(opts) - {"dir", "size"}:
        raise DeclarationError(f"{where}: give dir = \"in\", \"out\" or \"inout\" and "
                               "optionally size")
    size = opts.get("size", fixed)
    elem = ({"k": "int", "min": 0, "max": 255} if item.kind == "void"
            else _value_type(ffi, item, handles, where))
    if elem["k"] in ("handle", "void", "str"):
        raise DeclarationError(f"{where}: pointers to {item.cname} cannot be marshalled")
    desc: dict[str, Any] = {"k": "buffer", "dir": d, "elem": elem,
                            "ctype": "uint8_t" if item.kind == "void" else item.cname,
                            "bytes": item.kind == "void" or _is_byte(ffi, item)}
    if isinstance(size, str) and size.startswith("*"):
        desc["size_ptr"] = size[1:].strip()
    elif isinstance(size, str):
        desc["size_param"] = size
    elif size is None:
        desc.update(size=1, single=True)
    elif type(size) is int and size >= 0:
        desc["size"] = size
    else:
        raise DeclarationError(f"{where}: size must be a count or a parameter name")
    return desc


def _is_byte(ffi: Any, ct: Any) -> bool:
    return bool(ct.kind == "primitive" and ffi.sizeof(ct) == 1 and
                ct.cname not in ("_Bool", "bool"))


def _value_type(ffi: Any, ct: Any, handles: Mapping[str, str], where: str,
                returning: bool = False) -> dict[str, Any]:
    if ct is None:
        return {"k": "void"}
    if ct.kind == "primitive":
        name = ct.cname
        if name in ("float", "double", "long double"):
            return {"k": "float"}
        if name in ("_Bool", "bool"):
            return {"k": "bool"}
        if name == "char":
            return {"k": "char"}
        bits = 8 * ffi.sizeof(ct)
        if int(ffi.cast(ct, -1)) < 0:
            return {"k": "int", "min": -(1 << (bits - 1)), "max": (1 << (bits - 1)) - 1}
        return {"k": "int", "min": 0, "max": (1 << bits) - 1}
    if ct.kind == "enum":
        return {"k": "enum", "name": ct.cname, "values": {v: k for k, v in ct.elements.items()}}
    if ct.kind in ("struct", "union"):
        if ct.fields is None:
            raise DeclarationError(f"{where}: {ct.cname} is opaque; declare it as a handle")
        return {"k": "struct", "name": ct.cname,
                "fields": [[n, _value_type(ffi, f.type, handles, f"{where}.{n}")]
                           for n, f in ct.fields]}
    if ct.kind == "array" and ct.length is not None:
        elem = _value_type(ffi, ct.item, handles, where)
        return {"k": "array", "elem": elem, "length": ct.length, "bytes": _is_byte(ffi, ct.item)}
    if ct.kind == "pointer" and returning:
        if ct.item.kind != "pointer" and _norm(ct.item.cname) in handles:
            return {"k": "handle", "type": _norm(ct.item.cname)}
        if ct.item.cname in ("char", "const char"):
            return {"k": "str"}
    raise DeclarationError(f"{where}: {ct.cname} cannot be marshalled"
                           + ("; declare opaque pointers under handles" if returning else ""))


def bad_config(e: Exception) -> OSError:
    """A declaration problem found when a device is opened, as the error a client sees."""
    return OSError(errno.EINVAL, str(e))
