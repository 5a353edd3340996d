# Per-call cost of a remote native library call, beside a raw TCP echo round trip measured
# in the same run: a local cffi call; a bridged call isolated in a worker process; a bridged
# call with isolation = "none"; RPyC classic mode calling the same function through
# conn.modules.ctypes (when rpyc is installed: pip install -e '.[bench]').
#
# The echo, the bridged calls and a core small op (read 16 B of a /dev/zero node, the
# request path every operation pays, for reference) are measured in alternating rounds and
# the best round of each is kept, so a change in the machine's load hits all alike.
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cffi

import bridge

from .common import Row, child, echo_client, echo_once, echo_server, per_op, start_server

N = 2000
ROUNDS = 3

_RPYC_SERVER = r"""
from rpyc.utils.server import ThreadedServer
from rpyc.core.service import ClassicService
s = ThreadedServer(ClassicService, hostname="127.0.0.1", port=0,
                   protocol_config={"allow_all_attrs": True})
print(s.port, flush=True)
s.start()
"""


def libc_path() -> str:
    """The absolute path of the C library this process runs on (from /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if path.startswith("/") and Path(path).name.startswith("libc.so"):
                return path
            if path.startswith("/") and Path(path).name.startswith("libc-"):
                return path
    raise RuntimeError("no libc in /proc/self/maps")


def manifest(libc: str) -> str:
    return "".join(f"""
[devices.{name}]
kind = "library"
path = "{libc}"
isolation = "{isolation}"
cdef = "int abs(int j);"
functions = {{abs = {{inline = true}}}}
""" for name, isolation in (("isolated", "process"), ("inproc", "none"))) + """
[devices.zero]
kind = "node"
path = "/dev/zero"
access = "r"
"""


def _rpyc_row(libc: str, echo: float) -> Row:
    try:
        import rpyc
    except ImportError:
        return Row("library call via RPyC classic conn.modules.ctypes", float("nan"), echo,
                   "us/op", "", note="skipped: rpyc missing (pip install -e '.[bench]')")
    with child(_RPYC_SERVER) as port:
        for _ in range(100):  # the port is printed before the server listens
            try:
                conn = rpyc.classic.connect("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        else:
            raise RuntimeError("the RPyC server did not start")
        try:
            fn = conn.modules.ctypes.CDLL(libc).abs
            assert fn(-5) == 5
            t = per_op(lambda: fn(-5), N)
        finally:
            conn.close()
    return Row("library call via RPyC classic conn.modules.ctypes", t * 1e6, echo, "us/op",
               "", note="comparison")


def run() -> list[Row]:
    libc = libc_path()
    ffi = cffi.FFI()
    ffi.cdef("int abs(int j);")
    local: Any = ffi.dlopen(libc)
    rows: list[Row] = []
    with echo_server() as addr, start_server(manifest(libc)) as srv:
        s = echo_client(addr)
        buf = bytearray(4096)
        payload = b"x" * 48  # about the size of a call frame
        with bridge.connect(srv.url) as host, host.open("isolated") as iso, \
                host.open("inproc") as inproc, host.open("zero") as zero:
            assert iso.abs(-5) == 5 and inproc.abs(-5) == 5
            cases: dict[str, Callable[[], object]] = {
                "echo": lambda: echo_once(s, payload, buf),
                "isolated": lambda: iso.abs(-5),
                "none": lambda: inproc.abs(-5),
                "small op": lambda: zero.read(16),
            }
            best = {k: float("inf") for k in cases}
            for _ in range(ROUNDS):
                for k, fn in cases.items():
                    best[k] = min(best[k], per_op(fn, N, repeat=3) * 1e6)
        echo = best["echo"]
        t = per_op(lambda: local.abs(-5), N * 50) * 1e6
        rows.append(Row("library call, local cffi (no network)", t, echo, "us/op", "",
                        note="floor: raw TCP echo"))
        rows.append(Row("library call, bridged, isolated worker", best["isolated"], echo,
                        "us/op", "<= 2.5x"))
        rows.append(Row("library call, bridged, isolation = none", best["none"], echo,
                        "us/op", "<= 1.5x"))
        rows.append(Row("core small op, read 16 B of /dev/zero (reference)",
                        best["small op"], echo, "us/op", "",
                        note="the request path every op pays"))
        s.close()
        rows.append(_rpyc_row(libc, echo))
    return rows
