# Shared benchmark plumbing: floors (a raw TCP echo server, a raw stream sender) in their
# own processes, timing helpers, and the table of ratios. Every case is measured beside its
# floor in the same run, because these machines are noisy; only ratios are compared.
from __future__ import annotations

import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bridge.testing import ServerProc, start_server

__all__ = ["Row", "ServerProc", "child", "echo_server", "per_op", "print_table",
           "start_server"]

_ECHO = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(1024)
print(s.getsockname()[1], flush=True)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(1 << 16)
    while True:
        n = c.recv_into(buf)
        if not n: break
        c.sendall(buf[:n])
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


@contextlib.contextmanager
def child(code: str, *args: str) -> Iterator[int]:
    """``python -c code args...`` in its own process, which prints the port it serves
    first; that port. The process is killed on exit."""
    p = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
    assert p.stdout is not None
    try:
        yield int(p.stdout.readline())
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


@contextlib.contextmanager
def echo_server() -> Iterator[tuple[str, int]]:
    """A raw TCP echo server (thread per connection, like hwbridge) in its own process."""
    with child(_ECHO) as port:
        yield ("127.0.0.1", port)


def echo_client(addr: tuple[str, int]) -> socket.socket:
    s = socket.create_connection(addr)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def echo_once(s: socket.socket, payload: bytes, buf: bytearray) -> None:
    """One request/response round trip of ``len(payload)`` bytes through the echo server."""
    s.sendall(payload)
    got = 0
    while got < len(payload):
        got += s.recv_into(buf)


def per_op(fn: Callable[[], object], n: int, repeat: int = 5) -> float:
    """Median over ``repeat`` runs of the seconds one call of ``fn`` takes."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times)


@dataclass
class Row:
    """One benchmark case beside its floor."""

    case: str
    value: float
    floor: float
    unit: str  # e.g. "us/op", "MB/s"
    goal: str  # e.g. "<= 1.5x", ">= 0.9x"
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.floor if self.floor else float("inf")

    @property
    def met(self) -> bool | None:
        if not self.goal:
            return None
        op, _, num = self.goal.partition(" ")
        limit = float(num.rstrip("x"))
        return self.ratio <= limit if op == "<=" else self.ratio >= limit


def print_table(rows: list[Row]) -> None:
    print(f"| {'case':<58} | {'value':>12} | {'floor':>12} | ratio  | goal     | met |")
    print(f"|{'-' * 60}|{'-' * 14}|{'-' * 14}|--------|----------|-----|")
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        print(f"| {r.case:<58} | {r.value:>9.1f} {r.unit[:2]:<2} | {r.floor:>9.1f} {r.unit[:2]:<2} "
              f"| {r.ratio:5.2f}x | {r.goal:<8} | {met:<3} |" + (f" {r.note}" if r.note else ""))
