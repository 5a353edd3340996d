# GPIO edge latency on the simulated lab (issue 4): the time from a client calling
# write(0, level) to its on_event callback (and to wait_event returning) for the edge that
# write raises on line 1, median and p99 in microseconds, beside a raw TCP echo round trip
# of 16 bytes measured in the same run as the floor.
from __future__ import annotations

import statistics
import threading
import time

from bridge.drivers.gpio import Direction, Edge, EdgeEvent

import bridge

from .common import Row, echo_client, echo_once, echo_server, start_server

N = 2000


def _p99(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.99) - 1]


def _echo_times() -> list[float]:
    with echo_server() as addr:
        s = echo_client(addr)
        buf = bytearray(64)
        payload = bytes(16)
        for _ in range(200):
            echo_once(s, payload, buf)
        out = []
        for _ in range(N):
            t = time.perf_counter()
            echo_once(s, payload, buf)
            out.append(time.perf_counter() - t)
        s.close()
    return out


def _edge_times(url: str) -> tuple[list[float], list[float]]:
    """(write -> callback, write -> wait_event) times, each measured on its own: wait_event
    with no callback registered, then a callback alone (with one registered, every edge
    also wakes the client's event thread, which the waiting loop would pay for too)."""
    with bridge.connect(url) as host, host.open("gpiochip0") as g:
        g.configure(0, Direction.OUT)
        g.configure(1, Direction.IN, Edge.BOTH)
        level = False
        wait_us: list[float] = []
        for i in range(N + 200):
            level = not level
            t = time.perf_counter()
            g.write(0, level)
            if g.wait_event(1, 5.0) is None:
                raise RuntimeError("an edge event did not arrive")
            if i >= 200:  # warm-up
                wait_us.append(time.perf_counter() - t)

        arrived = threading.Event()
        stamp = [0.0]

        def callback(ev: EdgeEvent) -> None:
            stamp[0] = time.perf_counter()
            arrived.set()

        g.on_event(callback)
        callback_us: list[float] = []
        for i in range(N + 200):
            level = not level
            arrived.clear()
            t = time.perf_counter()
            g.write(0, level)
            if not arrived.wait(5.0):
                raise RuntimeError("an edge event did not arrive")
            if i >= 200:
                callback_us.append(stamp[0] - t)
    return callback_us, wait_us


def run() -> list[Row]:
    srv = start_server()
    try:
        cb, wait = _edge_times(srv.url)
    finally:
        srv.stop()
    echo = _echo_times()
    us = 1e6
    floor_med, floor_p99 = statistics.median(echo) * us, _p99(echo) * us
    return [
        Row("gpio edge: write(0) -> on_event callback, median", statistics.median(cb) * us,
            floor_med, "us", "", note="floor: raw TCP echo 16 B, median"),
        Row("gpio edge: write(0) -> on_event callback, p99", _p99(cb) * us, floor_p99, "us",
            "", note="floor: raw TCP echo 16 B, p99"),
        Row("gpio edge: write(0) -> wait_event returns, median", statistics.median(wait) * us,
            floor_med, "us", "", note="floor: raw TCP echo 16 B, median; no callback"),
    ]


if __name__ == "__main__":
    from .common import print_table

    print_table(run())
