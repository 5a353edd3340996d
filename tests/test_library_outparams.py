# Remote native libraries, out-parameters beyond buffers: opaque handles returned through a
# `struct dev **` and in/out size pointers (`size_t *len`: capacity in, count written out),
# end to end through a real server in both isolation modes, on tests/clib/testlib.c.
from __future__ import annotations

import ctypes
import errno
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bridge.drivers.library import Opaque

import bridge
from bridge.libdecl import DeclarationError, config_from_options, parse_declarations
from bridge.testing import ServerProc

from .test_library import manifest
from .test_library import testlib as testlib  # the compiled library, a session fixture

DEVICES = ["testlib", "fastlib"]  # isolation "process" and "none"


@pytest.fixture
def srv(make_server: Callable[..., ServerProc], testlib: Path) -> ServerProc:
    return make_server(manifest(testlib))


@pytest.fixture(params=DEVICES)
def clib(request: pytest.FixtureRequest, srv: ServerProc) -> Iterator[Any]:
    with bridge.connect(srv.url) as host, host.open(request.param) as lib:
        yield lib


def test_a_handle_through_an_out_parameter(clib: Any) -> None:
    base = clib.open_count()
    ret, d = clib.dev_open2(5)
    assert ret == 0 and isinstance(d, Opaque) and d.type == "struct dev"
    assert clib.open_count() == base + 1
    assert clib.dev_set(d, 11) == 5  # the same kind of token as dev_open's
    assert clib.dev_get(d) == 11
    clib.dev_close(d)
    assert clib.open_count() == base
    with pytest.raises(OSError) as e:
        clib.dev_get(d)
    assert e.value.errno == errno.EBADF
    assert clib.dev_open2(-1) == (-errno.EINVAL, None)  # the slot stayed NULL
    assert clib.open_count() == base
    assert clib.dev_open2.__doc__.startswith("dev_open2(id) -> return, out")
    with pytest.raises(TypeError):
        clib.dev_open2.ctypes(1, None)  # no ctypes object holds a token


def _count(url: str, device: str) -> int:
    with bridge.connect(url) as host, host.open(device) as lib:
        n: int = lib.open_count()
        return n


@pytest.mark.parametrize("device", DEVICES)
def test_out_parameter_handles_are_released_on_disconnect(srv: ServerProc,
                                                          device: str) -> None:
    base = _count(srv.url, device)
    a = bridge.connect(srv.url)
    lib_a = a.open(device)
    handles = [lib_a.dev_open2(i)[1] for i in range(4)]
    with bridge.connect(srv.url) as b, b.open(device) as lib_b:
        assert lib_b.open_count() == base + 4
        with pytest.raises(OSError) as e:
            lib_b.dev_get(handles[0])  # bound to the connection that received it
        assert e.value.errno == errno.EBADF
    a.close()  # no dev_close: the host releases them through it
    for _ in range(100):
        if _count(srv.url, device) == base:
            break
        time.sleep(0.05)
    assert _count(srv.url, device) == base


def test_a_size_pointer_is_capacity_in_and_count_out(clib: Any) -> None:
    assert clib.dev_read2(4) == (4, b"0123", 4)
    assert clib.dev_read2(64) == (10, b"0123456789", 10)  # truncated to what was written
    assert clib.dev_read2(0) == (0, b"", 0)
    assert clib.dev_read2.__doc__ == "dev_read2(len) -> return, buf, len"
    with pytest.raises(TypeError):
        clib.dev_read2(b"x")
    with pytest.raises(ValueError):
        clib.dev_read2(-1)  # size_t


def test_a_capacity_past_max_buffer_is_refused_by_the_host(clib: Any) -> None:
    with pytest.raises(OSError) as e:
        clib.dev_read2(1 << 40)
    assert e.value.errno == errno.EINVAL and "max_buffer" in str(e.value)
    assert clib.dev_read2(3) == (3, b"012", 3)


@pytest.mark.parametrize("how", [0, 1])
def test_a_length_past_the_buffer_is_clipped_to_it(clib: Any, how: int) -> None:
    ret, data, n = clib.dev_read_lie(8, how)
    assert ret == 0
    assert data == b"\x77" * 8  # never more than the host allocated
    assert n == (8 + 4096 if how == 0 else 2**64 - 1)  # what the library claimed
    assert clib.add(1, 2) == 3  # and the library carries on


def test_a_size_pointer_ctypes_style(clib: Any) -> None:
    buf, n = (ctypes.c_uint8 * 16)(), ctypes.c_size_t(16)
    assert clib.dev_read2.ctypes(buf, ctypes.byref(n)) == 10
    assert (bytes(buf), n.value) == (b"0123456789" + bytes(6), 10)
    buf, n = (ctypes.c_uint8 * 8)(), ctypes.c_size_t(8)
    assert clib.dev_read_lie.ctypes(buf, ctypes.pointer(n), 0) == 0
    assert (bytes(buf), n.value) == (b"\x77" * 8, 8 + 4096)
    with pytest.raises(ValueError):  # a capacity past the caller's own buffer
        clib.dev_read2.ctypes((ctypes.c_uint8 * 4)(), ctypes.byref(ctypes.c_size_t(5)))


@pytest.mark.parametrize(("cdef", "args", "complaint"), [
    ("struct dev; int f(struct dev **out);", {}, "\"out\""),
    ("struct dev; int f(struct dev **out);", {"out": "inout"}, "\"out\""),
    ("int f(uint8_t *buf, size_t *len);", {"buf": {"dir": "out", "size": "*len"}},
     "inout"),
    ("int f(uint8_t *buf, size_t *len);", {"buf": {"dir": "in", "size": "*len"},
                                           "len": "inout"}, "inout"),
    ("int f(uint8_t *buf, size_t len);", {"buf": {"dir": "out", "size": "*len"}}, "inout"),
    ("int f(uint8_t *buf, size_t *len);", {"buf": {"dir": "out", "size": "*n"},
                                           "len": "inout"}, "inout"),
])
def test_inconsistent_out_parameters_are_refused(cdef: str, args: Any,
                                                 complaint: str) -> None:
    cfg = config_from_options("t", "/x/libt.so", {
        "cdef": "struct dev; void c(struct dev *d);" + cdef,
        "functions": {"f": {"args": args}, "c": {}}, "handles": {"struct dev": "c"}})
    with pytest.raises(DeclarationError) as e:
        parse_declarations(cfg)
    assert complaint in str(e.value)
