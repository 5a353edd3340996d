# Remote native libraries end to end: a C library built here with the system compiler,
# served by a real `hwbridge serve` process on loopback, called through bridge.connect.
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bridge.drivers.library import Opaque

import bridge
from bridge.testing import ServerProc

CLIB = Path(__file__).parent / "clib"

FUNCTIONS = """
[devices.{name}.functions]
add = {{}}
scale = {{}}
mode_value = {{}}
fill = {{ args = {{ buf = {{ dir = "out", size = "len" }} }} }}
checksum = {{ args = {{ buf = {{ dir = "in", size = "len" }} }} }}
bump = {{ args = {{ buf = {{ dir = "inout", size = "len" }} }} }}
squares = {{ args = {{ out = {{ dir = "out", size = "n" }} }} }}
get_point = {{ args = {{ out = "out" }} }}
point_sum = {{}}
shift = {{ args = {{ p = "inout" }} }}
name_length = {{}}
version = {{}}
dev_open = {{}}
dev_set = {{}}
dev_get = {{}}
dev_close = {{}}
open_count = {{}}
dev_open2 = {{ args = {{ out = "out" }} }}
dev_read2 = {{ args = {{ buf = {{ dir = "out", size = "*len" }}, len = "inout" }} }}
dev_read_lie = {{ args = {{ buf = {{ dir = "out", size = "*len" }}, len = "inout" }} }}
fail_with = {{ errno = "raise" }}
fail_code = {{ errno = true }}
{unsafe}
"""
UNSAFE = """crash = {}
hang = { timeout = 1.0 }
"""


@pytest.fixture(scope="session")
def testlib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/clib/testlib.c compiled into a shared object with `cc`."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) on this machine")
    out = tmp_path_factory.mktemp("clib") / "libtestlib.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(CLIB / "testlib.c")],
                   check=True)
    return out


def manifest(so: Path) -> str:
    """Two devices on the same .so: isolated (with the crashing and hanging functions) and
    in-process (safe functions only), plus /dev/null to show other devices carry on."""
    head = f"""
[devices.null]
kind = "node"
path = "/dev/null"

[devices.testlib]
kind = "library"
path = "{so}"
header = "{CLIB / 'testlib.h'}"
timeout = 5.0
handles = {{ "struct dev" = "dev_close" }}

[devices.fastlib]
kind = "library"
path = "{so}"
header = "{CLIB / 'testlib.h'}"
isolation = "none"
handles = {{ "struct dev" = "dev_close" }}
"""
    return (head + FUNCTIONS.format(name="testlib", unsafe=UNSAFE)
            + FUNCTIONS.format(name="fastlib", unsafe=""))


@pytest.fixture
def server(make_server: Callable[..., ServerProc], testlib: Path) -> ServerProc:
    return make_server(manifest(testlib))


@pytest.fixture(params=["testlib", "fastlib"])
def lib(request: pytest.FixtureRequest, server: ServerProc) -> Iterator[Any]:
    with bridge.connect(server.url) as host, host.open(request.param) as lib:
        yield lib


def test_scalars_enums_and_strings(lib: Any) -> None:
    assert lib.add(2, 40) == 42
    assert lib.add(-5, 3) == -2
    assert lib.scale(1.5, 4) == 6.0
    assert lib.mode_value("MODE_BURST") == 70
    assert lib.mode_value(1) == 10
    assert lib.name_length("hello, world") == len("hello, world")
    assert lib.version() == "testlib 1.2"


def test_buffers_in_out_inout(lib: Any) -> None:
    assert lib.fill(16, 0xAB) == (16, b"\xab" * 16)
    assert lib.fill(0, 1) == (0, b"")
    data = bytes(range(256)) * 3
    assert lib.checksum(data) == sum(data) % 65536
    assert lib.checksum(bytearray(b"\x01\x02")) == 3
    assert lib.bump(b"\x00\x01\xfe") == b"\x01\x02\xff"
    assert lib.squares(5) == [0, 1, 4, 9, 16]


def test_structs_by_value_and_by_pointer(lib: Any) -> None:
    ret, pt = lib.get_point(3, 4)
    assert ret == 7
    assert (pt["x"], pt["y"], pt["label"][:3]) == (3, 4, b"pt\0")
    assert lib.point_sum({"x": 10, "y": -4}) == 6
    moved = lib.shift({"x": 1, "y": 2, "label": b"ab"}, 5)
    assert (moved["x"], moved["y"], moved["label"][:2]) == (6, 7, b"ab")


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int32), ("y", ctypes.c_int32), ("label", ctypes.c_char * 8)]


def test_ctypes_style_calls(lib: Any) -> None:
    pt = Point()
    assert lib.get_point.ctypes(3, 9, ctypes.byref(pt)) == 12
    assert (pt.x, pt.y, pt.label) == (3, 9, b"pt")
    buf = (ctypes.c_uint8 * 8)()
    assert lib.fill.ctypes(buf, 8, 0x5A) == 8
    assert bytes(buf) == b"\x5a" * 8
    assert lib.checksum.ctypes(b"\x01\x02\x03\x04", 2) == 3  # only len bytes are read
    assert lib.point_sum.ctypes(Point(4, 5)) == 9
    p = Point(1, 1)
    assert lib.shift.ctypes(ctypes.pointer(p), 2) is None
    assert (p.x, p.y) == (3, 3)


def test_bad_arguments_fail_on_the_client_before_sending(server: ServerProc) -> None:
    host = bridge.connect(server.url)
    lib = host.open("testlib")
    host.close()  # anything sent now would fail with a connection error instead
    with pytest.raises(TypeError):
        lib.add(1)
    with pytest.raises(TypeError):
        lib.add("1", 2)
    with pytest.raises(ValueError):
        lib.add(2**31, 0)
    with pytest.raises(TypeError):
        lib.checksum("not bytes")
    with pytest.raises(ValueError):
        lib.mode_value("MODE_NONE")
    with pytest.raises(TypeError):
        lib.point_sum({"z": 1})
    with pytest.raises(TypeError):
        lib.dev_get(Opaque("struct other", b"x" * 16))
    with pytest.raises(TypeError):
        lib.fill.ctypes(1, 2)
    with pytest.raises(ConnectionError):
        lib.add(1, 2)


def test_the_host_checks_arguments_too(server: ServerProc) -> None:
    with bridge.connect(server.url) as host, host.open("testlib") as lib:
        with pytest.raises(OSError) as e:
            host.call("call", [lib.handle, "add", ["x", 1], None])
        assert e.value.errno == errno.EINVAL and "add" in str(e.value)
        with pytest.raises(PermissionError):
            host.call("call", [lib.handle, "system", [b"true"], None])
        with pytest.raises(OSError) as e:
            host.call("call", [lib.handle, "fill", [1 << 40, 0], None])
        assert e.value.errno == errno.EINVAL
        assert lib.add(1, 1) == 2


def test_errno_raised_or_reported(lib: Any) -> None:
    with pytest.raises(OSError) as e:
        lib.fail_with(errno.ENOSPC)
    assert e.value.errno == errno.ENOSPC
    assert "fail_with" in str(e.value) and lib.name in str(e.value)
    assert lib.fail_code(errno.EPERM) == (-1, errno.EPERM)


def test_opaque_handles(lib: Any) -> None:
    base = lib.open_count()
    d = lib.dev_open(7)
    assert isinstance(d, Opaque) and d.type == "struct dev"
    assert lib.open_count() == base + 1
    assert lib.dev_set(d, 99) == 7
    assert lib.dev_get(d) == 99
    assert lib.dev_close(d) is None
    assert lib.open_count() == base
    with pytest.raises(OSError) as e:
        lib.dev_get(d)  # closed: the token is gone
    assert e.value.errno == errno.EBADF
    with pytest.raises(OSError) as e:
        lib.dev_get(Opaque("struct dev", bytes(16)))  # forged
    assert e.value.errno == errno.EBADF


def _count(url: str, device: str) -> int:
    with bridge.connect(url) as host, host.open(device) as lib:
        n: int = lib.open_count()
        return n


@pytest.mark.parametrize("device", ["testlib", "fastlib"])
def test_handles_are_per_connection_and_closed_on_disconnect(server: ServerProc,
                                                             device: str) -> None:
    base = _count(server.url, device)
    a = bridge.connect(server.url)
    lib_a = a.open(device)
    handles = [lib_a.dev_open(i) for i in range(3)]
    with bridge.connect(server.url) as b, b.open(device) as lib_b:
        assert lib_b.open_count() == base + 3
        with pytest.raises(OSError) as e:
            lib_b.dev_get(handles[0])  # another connection's token is worthless here
        assert e.value.errno == errno.EBADF
    a.close()  # no dev_close: the host must release them
    for _ in range(100):
        if _count(server.url, device) == base:
            break
        time.sleep(0.05)
    assert _count(server.url, device) == base


@pytest.mark.parametrize(("how", "signal_name"),
                         [(1, "SIGSEGV"), (2, "SIGABRT"), (3, "status 3")])
def test_a_crash_is_reported_and_the_worker_restarts(server: ServerProc, how: int,
                                                      signal_name: str) -> None:
    with bridge.connect(server.url) as host, host.open("testlib") as lib, \
            bridge.connect(server.url) as other, other.open("testlib") as lib2, \
            other.open("null") as null:
        d = lib.dev_open(1)
        with pytest.raises(OSError) as e:
            lib.crash(how)
        assert e.value.errno == errno.EIO
        assert signal_name in str(e.value) and "testlib" in str(e.value) \
            and "crash" in str(e.value)
        assert lib.add(1, 2) == 3  # a new worker
        assert lib2.add(3, 4) == 7  # the other client carries on
        assert null.write(b"abc") == 3  # and so do other devices
        with pytest.raises(OSError) as e:
            lib.dev_get(d)  # its pointer died with the old worker
        assert e.value.errno == errno.EBADF and "restarted" in str(e.value)


def test_a_hang_times_out_and_the_worker_restarts(server: ServerProc) -> None:
    with bridge.connect(server.url) as host, host.open("testlib") as lib, \
            host.open("fastlib") as fast:
        with pytest.raises(TimeoutError):
            lib.hang(30)  # the manifest allows 1 s
        assert lib.add(2, 2) == 4
        lib.timeout = 0.3
        with pytest.raises(TimeoutError):
            lib.hang(1)
        assert lib.add(2, 3) == 5
        # while the isolated library hangs on another thread, other devices carry on
        result: list[Any] = []
        t = threading.Thread(target=lambda: result.append(_try(lib.hang, 30)))
        lib.timeout = None
        t.start()
        assert fast.add(5, 5) == 10
        t.join(10)
        assert not t.is_alive() and isinstance(result[0], TimeoutError)
    with pytest.raises(ValueError):
        lib.timeout = 0


def _try(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:
        return e


def test_batch_of_library_calls(server: ServerProc) -> None:
    with bridge.connect(server.url) as host, host.open("testlib") as lib:
        with host.batch():
            a = lib.add(1, 2)
            b = lib.checksum(b"\x05\x06")
            c = lib.fill(2, 9)
        assert (a.result(), b.result(), c.result()) == (3, 11, (2, b"\x09\x09"))


def _loaded(name: str) -> str:
    """The absolute path of a shared library this process has loaded."""
    found = ctypes.util.find_library(name)
    if found is None:
        pytest.skip(f"no lib{name} here")
    ctypes.CDLL(found)
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if path.startswith("/") and Path(path).name.startswith(f"lib{name}."):
                return path
    pytest.skip(f"lib{name} not found in /proc/self/maps")


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_system_libraries(make_server: Callable[..., ServerProc], isolation: str) -> None:
    libc, libm = _loaded("c"), _loaded("m")
    s = make_server(f"""
[devices.libc]
kind = "library"
path = "{libc}"
isolation = "{isolation}"
cdef = "size_t strlen(const char *s);"
functions = ["strlen"]

[devices.libm]
kind = "library"
path = "{libm}"
isolation = "{isolation}"
cdef = "double cos(double x);"
functions = ["cos"]
""")
    import math

    with bridge.connect(s.url) as host, host.open("libc") as c, host.open("libm") as m:
        assert c.strlen("hwbridge") == 8
        assert m.cos(0.5) == math.cos(0.5)
        assert [d.kind for d in host.devices()] == ["library", "library"]


def test_lab_vendorlib(lab: ServerProc) -> None:
    data = bytes(range(200)) * 700
    with bridge.connect(lab.url) as host, host.open("vendorlib") as lib:
        assert lib.dev_add(2, 3) == 5
        assert lib.dev_add(2**31 - 1, 1) == -(2**31)  # C int arithmetic
        assert lib.dev_checksum(data) == sum(data) % 65536
        assert lib.dev_checksum(b"") == 0
        assert sorted(lib.functions) == ["dev_add", "dev_checksum"]
        with pytest.raises(TypeError):
            lib.dev_checksum(b"", 0)  # the length comes from the buffer


def test_bad_declarations_are_refused_at_open(make_server: Callable[..., ServerProc],
                                              testlib: Path) -> None:
    s = make_server(f"""
[devices.broken]
kind = "library"
path = "{testlib}"
cdef = "int fill(uint8_t *buf, size_t len, uint8_t value);"
functions = ["fill"]
""")
    with bridge.connect(s.url) as host:
        with pytest.raises(OSError) as e:
            host.open("broken")
        assert e.value.errno == errno.EINVAL and "buf" in str(e.value)


STANDIN = '''
from bridge.sim.library import ffi

def dev_fill(buf, n, value):
    ffi.memmove(buf, bytes([value]) * n, n)
    return n

def dev_fail(code):
    ffi.errno = code
    return -1
'''


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_a_user_stand_in_behind_the_same_declarations(make_server: Callable[..., ServerProc],
                                                      tmp_path: Path, isolation: str) -> None:
    (tmp_path / "mystandin.py").write_text(STANDIN)
    s = make_server(f"""
[devices.mylib]
kind = "library"
sim = "library"
standin = "mystandin"
isolation = "{isolation}"
cdef = "int dev_fill(uint8_t *buf, size_t n, uint8_t value); int dev_fail(int code);"

[devices.mylib.functions]
dev_fill = {{ args = {{ buf = {{ dir = "out", size = "n" }} }} }}
dev_fail = {{ errno = "raise" }}
""", env={"PYTHONPATH": str(tmp_path)})
    with bridge.connect(s.url) as host, host.open("mylib") as lib:
        assert lib.dev_fill(4, 0x41) == (4, b"AAAA")
        with pytest.raises(OSError) as e:
            lib.dev_fail(errno.EROFS)
        assert e.value.errno == errno.EROFS
