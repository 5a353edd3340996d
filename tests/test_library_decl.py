# The library declaration layer with no process and no network: manifest options checked
# against cffi-parsed C declarations, and the engine's marshalling on the lab's stand-in.
from __future__ import annotations

from typing import Any

import pytest

from bridge.libdecl import DeclarationError, config_from_options, parse_declarations
from bridge.libworker import Engine


def decl(cdef: str, functions: Any, **more: Any) -> Any:
    cfg = config_from_options("t", "/x/libt.so", {"cdef": cdef, "functions": functions,
                                                  **more})
    return parse_declarations(cfg)[1]


def test_inputs_and_outputs_follow_the_directions() -> None:
    sigs = decl("int xfer(const uint8_t *tx, uint8_t *rx, size_t len, int flags);",
                {"xfer": {"args": {"tx": {"dir": "in", "size": "len"},
                                   "rx": {"dir": "out", "size": "len"}}}})
    s = sigs["xfer"]
    assert s.inputs == ["tx", "flags"]  # len comes from tx, rx is allocated by the host
    assert s.outputs == ["return", "rx"]
    assert s.derived == {"len": ["tx"]}
    assert dict(s.params)["flags"] == {"k": "int", "min": -2**31, "max": 2**31 - 1}


def test_array_parameter_is_a_fixed_size_buffer_and_errno_is_an_output() -> None:
    sigs = decl("unsigned char id(uint8_t out[6]);",
                {"id": {"args": {"out": "out"}, "errno": True}})
    d = dict(sigs["id"].params)["out"]
    assert (d["k"], d["dir"], d["size"], d["bytes"]) == ("buffer", "out", 6, True)
    assert sigs["id"].outputs == ["return", "out", "errno"]
    assert sigs["id"].result == {"k": "int", "min": 0, "max": 255}


@pytest.mark.parametrize(("cdef", "functions", "more", "complaint"), [
    ("int f(int *p);", ["f"], {}, "needs args"),
    ("int f(int a);", ["g"], {}, "not declared"),
    ("int f(int a);", {"f": {"args": {"a": "in"}}}, {}, "only pointer"),
    ("int f(int *p, int n);", {"f": {"args": {"p": {"dir": "in", "size": "m"}}}}, {}, "'m'"),
    ("int f(int *p);", {"f": {"args": {"p": {"dir": "sideways"}}}}, {}, "dir"),
    ("struct dev; struct dev *f(void);", ["f"], {}, "handles"),
    ("struct dev; struct dev *f(void); int c(struct dev *d, int x);", ["f", "c"],
     {"handles": {"struct dev": "c"}}, "close function"),
    ("int f(int a, ...);", ["f"], {}, "variadic"),
    ("int f(int a;", ["f"], {}, "cannot parse"),
    ("int f(int a);", ["f"], {"isolation": "thread"}, "isolation"),
    ("int f(int a);", {"f": {"errno": "loud"}}, {}, "errno"),
    ("int f(int a);", {"f": {"inline": "yes"}}, {}, "inline must be true or false"),
])
def test_inconsistent_declarations_are_refused(cdef: str, functions: Any, more: Any,
                                               complaint: str) -> None:
    with pytest.raises(DeclarationError) as e:
        decl(cdef, functions, **more)
    assert complaint in str(e.value)


def test_exactly_one_of_cdef_and_header() -> None:
    with pytest.raises(DeclarationError):
        config_from_options("t", "/x/libt.so", {"functions": ["f"]})
    with pytest.raises(DeclarationError):
        config_from_options("t", "/x/libt.so", {"cdef": "", "header": "t.h",
                                                "functions": ["f"]})


def vendorlib() -> Engine:
    from bridge.sim.library import LAB

    opts = {k: v for k, v in LAB["vendorlib"].items() if k not in ("kind", "sim",
                                                                    "description")}
    return Engine(config_from_options("vendorlib", None,
                                      {**opts, "standin": "bridge.sim.library"}))


def test_engine_marshals_through_the_stand_in() -> None:
    e = vendorlib()
    data = bytes(range(256)) * 2
    assert e.call("dev_checksum", [data]) == [sum(data) % 65536]
    assert e.call("dev_add", [-7, 3]) == [-4]


@pytest.mark.parametrize(("fname", "args", "error"), [
    ("dev_add", [1], TypeError),
    ("dev_add", [1, 2**31], ValueError),
    ("dev_add", [1.5, 2], TypeError),
    ("dev_checksum", [42], TypeError),
    ("dev_remove", [], PermissionError),
])
def test_engine_refuses_bad_arguments(fname: str, args: list[Any],
                                      error: type[Exception]) -> None:
    with pytest.raises(error):
        vendorlib().call(fname, args)
