# Serial streaming from host to client: the push path (data arrives as events into the
# client's buffer) against a raw TCP stream floor, and pyserial's rfc2217:// client on the
# same simulated port (the export) for comparison. Same run, ratios only. Also a query of a
# line-based instrument (write a command, readline() its answer) against a raw TCP echo.
#
# The bridged stream and its floor are measured in alternating rounds (best of each), so a
# change in the machine's load hits both alike; the port is closed during the floor's turn,
# so the source does not keep pushing (and the client receiving) while the floor runs.
# pyserial's rfc2217 client queues every received byte on its own (about 0.1 MB/s here), so
# its comparison reads 1 MiB: the rate is the same, in a sixteenth of the time.
from __future__ import annotations

import socket
import subprocess
import sys
import time

import serial

import bridge

from .common import Row, echo_client, echo_once, echo_server, per_op, start_server

TOTAL = 64 << 20
RFC_TOTAL = 1 << 20
ROUNDS = 3
MANIFEST = ('[devices.src]\nkind = "serial"\nsim = "source"\n'
            '[devices.dmm]\nkind = "serial"\nsim = "scpi-dmm"\n')
QUERIES = 2000

_SENDER = r"""
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
block = bytes(range(256)) * 256
while True:
    try: c.sendall(block)
    except OSError: break
"""


def _mbps(n: int, seconds: float) -> float:
    return n / seconds / 1e6


def raw_stream(total: int) -> float:
    """MB/s of a plain TCP stream from another process (the floor)."""
    p = subprocess.Popen([sys.executable, "-c", _SENDER], stdout=subprocess.PIPE)
    assert p.stdout is not None
    try:
        port = int(p.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as s:
            buf = bytearray(256 * 1024)
            got = 0
            t = time.perf_counter()
            while got < total:
                got += s.recv_into(buf)
            return _mbps(got, time.perf_counter() - t)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def drain(port: serial.SerialBase, total: int, size: int = 256 * 1024) -> float:
    port.timeout = 10
    got = 0
    t = time.perf_counter()
    while got < total:
        chunk = port.read(size)
        if not chunk:
            raise RuntimeError("the stream stopped")
        got += len(chunk)
    return _mbps(got, time.perf_counter() - t)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run() -> list[Row]:
    rfc = _free_port()
    rows: list[Row] = []
    with start_server(MANIFEST, "--rfc2217", f"src=127.0.0.1:{rfc}") as srv:
        bridged = floor = 0.0
        with bridge.connect(srv.url) as host:
            for _ in range(ROUNDS):
                with host.open("src") as port:
                    port.write(b"go")
                    drain(port, 4 << 20)  # warm up
                    bridged = max(bridged, drain(port, TOTAL))
                floor = max(floor, raw_stream(TOTAL))
        rows.append(Row("serial stream host->client (push), 64 MiB", bridged, floor, "MB/s",
                        ">= 0.8x", higher_is_better=True))
        ser = serial.serial_for_url(f"rfc2217://127.0.0.1:{rfc}", timeout=10)
        try:
            ser.write(b"go")
            rfc_rate = drain(ser, RFC_TOTAL)
        finally:
            ser.close()
        rows.append(Row("same port via pyserial rfc2217:// (comparison), 1 MiB", rfc_rate,
                        floor, "MB/s", "", higher_is_better=True))
        rows.append(_query(srv.url))
    return rows


def _query(url: str) -> Row:
    """write(b"*IDN?\\n") then readline() on the simulated SCPI meter, vs a TCP echo."""
    with echo_server() as addr, bridge.connect(url) as host, host.open("dmm") as dmm:
        dmm.timeout = 5
        es = echo_client(addr)
        buf = bytearray(64)

        def query() -> None:
            dmm.write(b"*IDN?\n")
            if not dmm.readline().startswith(b"HWBRIDGE,"):
                raise RuntimeError("the meter did not answer")

        q = floor = float("inf")
        for _ in range(ROUNDS):
            floor = min(floor, per_op(lambda: echo_once(es, b"x" * 16, buf), QUERIES, 3))
            q = min(q, per_op(query, QUERIES, 3))
        es.close()
    return Row("serial query: write *IDN?, readline(), sim meter", q * 1e6, floor * 1e6,
               "us/op", "", note="floor: raw TCP echo 16 B")
