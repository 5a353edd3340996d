# Simulator benchmarks (issue 3), each beside its floor in the same run and server:
#   read 16 B from the sim `zero` node            vs the posix /dev/zero node
#   the same with the fault tap installed (simctl) vs posix /dev/zero on that server
#   the same with --record writing a trace        vs posix /dev/zero on that server (both
#                                                     recorded: the recorder's own cost)
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bridge

from .common import Row, per_op, start_server

MANIFEST = """
[devices.simzero]
kind = "node"
sim = "zero"
[devices.devzero]
kind = "node"
path = "/dev/zero"
access = "r"
"""

SIMCTL = """
[devices.simctl]
kind = "node"
sim = "simctl"
"""

N = 2000


def _reader(node: Any) -> Callable[[], object]:
    return lambda: node.read(16)


def _pair(url: str) -> tuple[float, float]:
    """Seconds per read(16) of the sim zero and of the posix /dev/zero, interleaved."""
    with bridge.connect(url) as host, host.open("simzero") as sim, \
            host.open("devzero") as posix:
        sims: list[float] = []
        posixes: list[float] = []
        for i in range(6):  # alternate which goes first: drift on a noisy host hits both
            order = [(sims, sim), (posixes, posix)]
            for times, node in order if i % 2 else order[::-1]:
                times.append(per_op(_reader(node), N, repeat=3))
        return min(sims), min(posixes)


def run() -> list[Row]:
    rows = []
    with start_server(MANIFEST) as srv:
        s, p = _pair(srv.url)
    rows.append(Row("sim zero read 16 B vs posix /dev/zero, same server", s * 1e6, p * 1e6,
                    "us/op", "<= 1.2x"))
    with start_server(MANIFEST + SIMCTL) as srv:
        s, p = _pair(srv.url)
    rows.append(Row("  same, fault tap installed (no rule on either)", s * 1e6, p * 1e6,
                    "us/op", "<= 1.2x"))
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "trace.jsonl"
        with start_server(MANIFEST, "--record", str(trace)) as srv:
            s, p = _pair(srv.url)
        with start_server(MANIFEST) as srv:
            _, bare = _pair(srv.url)
    rows.append(Row("  same, --record (sim recorded) vs posix unrecorded", s * 1e6, bare * 1e6,
                    "us/op", "", note="recording cost, informational"))
    return rows
