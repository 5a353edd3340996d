# Core benchmarks of issue 2, each beside its floor in the same run:
#   small op round trip (read 16 B of a posix /dev/zero node; an ioctl)  vs raw TCP echo 16 B
#     with, for scale, a minimal Python host and client of the same frames (bench/minimal.py)
#   bulk read 1 MiB x 256                                              vs raw socket stream
#   100 dependent ops in one batch through a 10 ms-RTT delaying proxy  vs one RTT
#   8 client threads x 2,000 small ops                                 vs raw echo, 8 threads
#   server RSS idle, and with 1,000 idle connections
# Each timed case alternates with its floor ROUNDS times and the best of each counts, so a
# change in the machine's load hits both alike (as bench_serial, bench_i2c, bench_library do).
from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Callable

import bridge

from .common import Row, child, echo_client, echo_once, echo_server, per_op, start_server
from .minimal import minimal_client, minimal_host

MANIFEST = """
[devices.zero]
kind = "node"
path = "/dev/zero"
access = "r"
[devices.tty]
kind = "node"
path = "{pty}"
ioctls = ["TIOCGWINSZ", "FIONREAD"]
"""

_STREAM = r"""
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
chunk = b"\0" * (1 << 20)
n = int(sys.argv[1])
if sys.argv[2] == "zero":  # each MiB read from /dev/zero first, as a host serving it must
    import os
    z = os.open("/dev/zero", os.O_RDONLY)
    for _ in range(n):
        c.sendall(os.read(z, 1 << 20))
else:
    for _ in range(n):
        c.sendall(chunk)
c.close()
"""

_DELAY = r"""
import socket, sys, threading, time, heapq
delay = float(sys.argv[2]) / 2
target = ("127.0.0.1", int(sys.argv[1]))
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(16)
print(ls.getsockname()[1], flush=True)
def pump(a, b):
    # forward a -> b, each chunk released `delay` seconds after it arrived
    q, cv = [], threading.Condition()
    def writer():
        while True:
            with cv:
                while not q: cv.wait()
                t, data = q[0]
                now = time.monotonic()
                if now < t:
                    cv.wait(t - now); continue
                q.pop(0)
            if data is None:
                b.close(); return
            b.sendall(data)
    threading.Thread(target=writer, daemon=True).start()
    while True:
        try: data = a.recv(1 << 16)
        except OSError: data = b""
        with cv:
            q.append((time.monotonic() + delay, data or None)); cv.notify()
        if not data: return
while True:
    c, _ = ls.accept()
    u = socket.create_connection(target)
    for s in (c, u): s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=pump, args=(c, u), daemon=True).start()
    threading.Thread(target=pump, args=(u, c), daemon=True).start()
"""


def _raw_stream(mib: int, source: str = "memory") -> float:
    """Seconds to receive ``mib`` MiB from a raw socket stream (recv_into, no framing) of
    one buffer sent again and again (``source`` "memory") or of /dev/zero read ("zero")."""
    with child(_STREAM, str(mib), source) as port:
        s = socket.create_connection(("127.0.0.1", port))
        buf = bytearray(1 << 20)
        total, want = 0, mib << 20
        t = time.perf_counter()
        while total < want:
            n = s.recv_into(buf)
            if not n:
                break
            total += n
        dt = time.perf_counter() - t
        s.close()
        return dt


ROUNDS = 3  # each case and its floor alternate this many times; the best of each counts


def _bulk(host: bridge.Client, handle: int, mib: int) -> float:
    """Seconds for ``mib`` reads of 1 MiB, pipelined 4 deep."""
    t = time.perf_counter()
    inflight = [host.submit("read", [handle, 1 << 20, None], bulk=True) for _ in range(4)]
    got = 0
    for i in range(mib):
        got += len(host.result(inflight.pop(0)))
        if i + 4 < mib:
            inflight.append(host.submit("read", [handle, 1 << 20, None], bulk=True))
    dt = time.perf_counter() - t
    assert got == mib << 20
    return dt


def run() -> list[Row]:
    rows: list[Row] = []
    master, slave = os.openpty()
    srv = start_server(MANIFEST.format(pty=os.ttyname(slave)))
    try:
        with echo_server() as addr, bridge.connect(srv.url) as host, \
                bridge.connect(srv.url) as listening, \
                minimal_host("epoll") as min_port, minimal_client(min_port) as min_epoll, \
                minimal_host("threads") as min_tport, minimal_client(min_tport) as min_block:
            zero = host.open("zero")
            # a client that also listens for pushed events (as a serial port's does)
            listening.on_event(lambda ev: None, "none")
            zero_l = listening.open("zero")
            tty = host.open("tty")
            es = echo_client(addr)
            buf = bytearray(1 << 16)
            payload = b"x" * 16
            n = 3000
            floor = rd = rd_l = io = ref_epoll = ref_block = float("inf")
            for _ in range(ROUNDS):  # alternating, so a change in load hits both alike
                floor = min(floor, per_op(lambda: echo_once(es, payload, buf), n, repeat=3))
                rd = min(rd, per_op(lambda: zero.read(16), n, repeat=3))
                io = min(io, per_op(lambda: tty.ioctl("TIOCGWINSZ"), n, repeat=3))
                rd_l = min(rd_l, per_op(lambda: zero_l.read(16), n, repeat=3))
                ref_epoll = min(ref_epoll, per_op(min_epoll, n, repeat=3))
                ref_block = min(ref_block, per_op(min_block, n, repeat=3))
            rows.append(Row("small op: read 16 B from /dev/zero node", rd * 1e6, floor * 1e6,
                            "us/op", "<= 1.5x"))
            rows.append(Row("small op: ioctl TIOCGWINSZ on a pty", io * 1e6, floor * 1e6,
                            "us/op", "<= 1.5x"))
            rows.append(Row("small op: read 16 B, client with an event handler", rd_l * 1e6,
                            floor * 1e6, "us/op", "", note="its background reader waits too"))
            # bench/minimal.py: the same read with no features at all, for scale
            rows.append(Row("  reference: minimal Python pair, epoll host", ref_epoll * 1e6,
                            floor * 1e6, "us/op", "", note="bench/minimal.py"))
            rows.append(Row("  reference: minimal Python pair, thread per conn.",
                            ref_block * 1e6, floor * 1e6, "us/op", "",
                            note="bench/minimal.py"))

            # bulk: 256 reads of 1 MiB, pipelined 4 deep, vs a raw stream of 256 MiB
            mib = 256
            bulk = bulk_seq = raw = raw_zero = float("inf")
            for _ in range(ROUNDS):
                raw = min(raw, _raw_stream(mib))
                raw_zero = min(raw_zero, _raw_stream(mib, "zero"))
                bulk = min(bulk, _bulk(host, zero.handle, mib))
                t = time.perf_counter()
                for _ in range(64):
                    zero.read(1 << 20)
                bulk_seq = min(bulk_seq, (time.perf_counter() - t) * mib / 64)
            rows.append(Row("bulk read 1 MiB x 256 (4 in flight)", mib / bulk, mib / raw,
                            "MiB/s", ">= 0.9x", higher_is_better=True))
            rows.append(Row("bulk read 1 MiB x 256 (one at a time)", mib / bulk_seq, mib / raw,
                            "MiB/s", "", higher_is_better=True))
            rows.append(Row("  reference: raw stream of /dev/zero read + send", mib / raw_zero,
                            mib / raw, "MiB/s", "", higher_is_better=True,
                            note="no framing: the copy a host of this node cannot skip"))
            es.close()
            rows.extend(_threads(srv.url, addr, min_port, min_tport))
        rows.append(_batch_over_delay(srv.url))
        rows.extend(_rss(srv.url))
    finally:
        srv.stop()
        os.close(master)
        os.close(slave)
    return rows


def _threads(url: str, addr: tuple[str, int], min_port: int, min_tport: int) -> list[Row]:
    threads, ops = 8, 2000

    def minimal(port: int) -> Callable[[], None]:
        def run() -> None:
            with minimal_client(port) as call:
                for _ in range(ops):
                    call()
        return run

    def bridged() -> None:
        with bridge.connect(url) as h:
            z = h.open("zero")
            for _ in range(ops):
                z.read(16)

    def raw() -> None:
        s = echo_client(addr)
        buf = bytearray(64)
        for _ in range(ops):
            echo_once(s, b"x" * 16, buf)
        s.close()

    def rate(fn: object) -> float:
        ts = [threading.Thread(target=fn) for _ in range(threads)]  # type: ignore[arg-type]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        return threads * ops / (time.perf_counter() - t)

    r_raw = r_br = r_min = r_tmin = 0.0
    for _ in range(ROUNDS):
        r_raw = max(r_raw, rate(raw))
        r_br = max(r_br, rate(bridged))
        r_min = max(r_min, rate(minimal(min_port)))
        r_tmin = max(r_tmin, rate(minimal(min_tport)))
    return [Row("8 threads x 2,000 small ops (own connections)", r_br / 1000, r_raw / 1000,
                "kcalls/s", ">= 0.8x", higher_is_better=True),
            Row("  reference: minimal Python pair, epoll host", r_min / 1000, r_raw / 1000,
                "kcalls/s", "", higher_is_better=True, note="bench/minimal.py"),
            Row("  reference: minimal Python pair, thread per conn.", r_tmin / 1000,
                r_raw / 1000, "kcalls/s", "", higher_is_better=True, note="bench/minimal.py")]


def _batch_over_delay(url: str) -> Row:
    port = int(url.rsplit(":", 1)[1])
    with child(_DELAY, str(port), "0.010") as pport:
        s = socket.create_connection(("127.0.0.1", pport))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.close()
        with bridge.connect(f"hwbridge://127.0.0.1:{pport}") as host:
            host.devices()
            rtts = []
            for _ in range(5):
                t = time.perf_counter()
                host.devices()
                rtts.append(time.perf_counter() - t)
            rtt = min(rtts)
            times = []
            for _ in range(5):
                t = time.perf_counter()
                with host.batch():
                    z = host.open("zero")
                    for _ in range(49):
                        z.read(16)
                    for _ in range(49):
                        z.poll(0)
                    z.close()
                times.append(time.perf_counter() - t)
            best = min(times)
    return Row("100 dependent ops, one batch, 10 ms RTT proxy", best * 1e3, rtt * 1e3, "ms",
               "", note=f"goal <= RTT + 5 ms: {'yes' if best <= rtt + 0.005 else 'NO'}")


IDLE_MANIFEST = """
[limits]
max_connections_per_principal = 2000
[devices.zero]
kind = "node"
sim = "zero"
"""


def _rss(url: str) -> list[Row]:
    srv = start_server(IDLE_MANIFEST)
    try:
        time.sleep(0.3)
        idle = srv.rss_kib() / 1024
        socks = []
        port = int(srv.url.rsplit(":", 1)[1])
        for _ in range(1000):
            c = bridge.connect(f"hwbridge://127.0.0.1:{port}")
            socks.append(c)
        time.sleep(0.5)
        loaded = srv.rss_kib() / 1024
        for c in socks:
            c.close()
        select.select([], [], [], 0)
    finally:
        srv.stop()
    return [Row("server RSS idle", idle, 40, "MB", "<= 1.0x", note="floor = 40 MB budget"),
            Row("server RSS growth, 1,000 idle connections", loaded - idle, 100, "MB",
                "<= 1.0x", note="floor = 100 MB budget")]
