# Simulated native libraries: Python stand-ins behind the very declarations a real library
# has. The lab's `vendorlib` is one; the generic model "library" serves any user stand-in.
# A stand-in is a module with one Python function per declared C function. The engine wraps
# each in a cffi callback of the declared C type, so it receives exactly what the C function
# would (ints as ints, pointers as cffi cdata) and everything around it (marshalling,
# directions, sizes, errno, handles, isolation) is the same code that calls the real .so.
#
# Writing a stand-in for your own library (`mystandin.py` importable by the server):
#
#     from bridge.sim.library import ffi        # any cffi FFI works for buffers and errno
#
#     def dev_fill(buf, n, value):              # int dev_fill(uint8_t *buf, size_t n, ...)
#         ffi.memmove(buf, bytes([value]) * n, n)
#         return n
#
#     def dev_fail(code):                       # int dev_fail(int code), errno = "raise"
#         ffi.errno = code
#         return -1
#
# and serve it from the manifest, same declarations as for the real library:
#
#     [devices.mylib]
#     kind = "library"
#     sim = "library"
#     standin = "mystandin"
#     cdef = "int dev_fill(uint8_t *buf, size_t n, uint8_t value); int dev_fail(int code);"
#
#     [devices.mylib.functions]
#     dev_fill = { args = { buf = { dir = "out", size = "n" } } }
#     dev_fail = { errno = "raise" }
#
# Opaque handles: return `ffi.cast("struct dev *", key)` for a key of your own (or use
# ffi.new_handle / ffi.from_handle) and accept the same pointer back.
# Must not know about sockets or the wire.
from __future__ import annotations

from typing import Any

import cffi

from bridge.backend import DeviceHandle
from bridge.library import LibraryHandle, shared_library
from bridge.manifest import DeviceSpec

ffi = cffi.FFI()

VENDORLIB_CDEF = """
int dev_add(int a, int b);
int dev_checksum(const uint8_t *buf, size_t len);
"""


def dev_add(a: int, b: int) -> int:
    """int dev_add(int a, int b): the sum, wrapping like 32-bit two's complement."""
    return (a + b + 2**31) % 2**32 - 2**31


def dev_checksum(buf: Any, length: int) -> int:
    """int dev_checksum(const uint8_t *buf, size_t len): sum of the bytes modulo 65536."""
    total: int = sum(ffi.buffer(buf, length)[:])
    return total % 65536


def _vendorlib(spec: DeviceSpec) -> DeviceHandle:
    return LibraryHandle(spec, shared_library(spec, None, standin=__name__))


def _standin(spec: DeviceSpec) -> DeviceHandle:
    if not isinstance(spec.options.get("standin"), str):
        raise OSError(22, f"{spec.name}: sim = \"library\" needs standin = \"module\"")
    return LibraryHandle(spec, shared_library(spec, None))


MODELS = {"vendorlib": _vendorlib, "library": _standin}

LAB: dict[str, dict[str, Any]] = {
    "vendorlib": {
        "kind": "library", "sim": "vendorlib",
        "description": "a simulated vendor library (dev_add, dev_checksum)",
        "cdef": VENDORLIB_CDEF,
        "functions": {"dev_add": {},
                      "dev_checksum": {"args": {"buf": {"dir": "in", "size": "len"}}}},
        "isolation": "none",
    },
}
