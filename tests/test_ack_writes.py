"""Acknowledged writes are neither lost nor repeated across disconnects: through a real
server, a client writes numbered records to a real pty slave (the test reads the master)
and is cut off at random points, 240 times: a clean close, a TCP reset (SO_LINGER 0), or in
the middle of a write's frame, each with writes still in flight. Every write the client saw
acknowledged appears on the master exactly once and in order; an unacknowledged one may be
missing but never appears twice; a write whose frame was cut never appears at all; and the
host holds no more file descriptors afterwards than before."""
from __future__ import annotations

import os
import random
import re
import select
import socket
import struct
import time
import tty
from collections.abc import Iterator

import pytest

import bridge
from bridge.protocol import Call, Connection, Role
from bridge.testing import ServerProc, start_server

ROUNDS = 80  # of each of the three ways to go: 240 disconnects
KINDS = ("close", "reset", "mid-frame")
RECORD = re.compile(rb"<(\d{6})>")


def _record(seq: int) -> bytes:
    return b"<%06d>" % seq


@pytest.fixture(scope="module")
def pty() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no output processing: the master sees exactly the bytes
    os.set_blocking(master, False)
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


@pytest.fixture(scope="module")
def server(pty: tuple[int, str], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ServerProc]:
    manifest = f'[devices.tty]\nkind = "node"\npath = "{pty[1]}"\naccess = "w"\n'
    with start_server(manifest, workdir=tmp_path_factory.mktemp("ack")) as s:
        yield s


def _drain(master: int) -> bytes:
    out = b""
    while select.select([master], [], [], 0)[0]:
        try:
            out += os.read(master, 65536)
        except BlockingIOError:
            break
    return out


def _wait_fds(server: ServerProc, want: int) -> int:
    end = time.monotonic() + 10
    while server.fd_count() != want and time.monotonic() < end:
        time.sleep(0.002)
    return server.fd_count()


def test_acknowledged_writes_survive_disconnects(server: ServerProc,
                                                 pty: tuple[int, str]) -> None:
    master = pty[0]
    rng = random.Random(6)
    with bridge.connect(server.url) as warm:
        warm.call("close", [warm.call("open", ["tty"])])
    _drain(master)
    time.sleep(0.1)
    base = server.fd_count()
    seq = 0
    acked: list[int] = []  # every record the client saw acknowledged, in order
    cut: set[int] = set()  # records whose frame was cut in the middle
    sent: set[int] = set()  # every record whose frame was sent whole
    stream = b""
    counts = dict.fromkeys(KINDS, 0)
    for i in range(ROUNDS * len(KINDS)):
        kind = KINDS[i % len(KINDS)]
        c = bridge.connect(server.url)
        h = c.call("open", ["tty"])
        for _ in range(rng.randrange(0, 6)):  # acknowledged, one at a time
            assert c.call("write", [h, _record(seq), 5.0]) == 8
            sent.add(seq)
            acked.append(seq)
            seq += 1
        pending = []
        for _ in range(rng.randrange(0, 6)):  # in flight when the connection goes
            pending.append((seq, c.submit("write", [h, _record(seq), 5.0])))
            sent.add(seq)
            seq += 1
        if pending and rng.random() < 0.5:  # collect some of them: acknowledged too
            k = rng.randrange(len(pending) + 1)
            for n, p in pending[:k]:
                assert c.result(p) == 8
                acked.append(n)
        sock = c._sock
        if kind == "mid-frame":
            frame = b"".join(bytes(b) for b in Connection(Role.CLIENT).send(
                Call(999_999, "write", [h, _record(seq), 5.0])))
            sock.sendall(frame[: rng.randrange(1, len(frame))])
            cut.add(seq)
            seq += 1
        if kind == "reset" or (kind == "mid-frame" and rng.random() < 0.5):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        counts[kind] += 1
        # Once the host has closed the connection's handle, nothing more can be written.
        assert _wait_fds(server, base) == base, "file descriptors leaked"
        stream += _drain(master)
    end = time.monotonic() + 5  # the pty hands output over asynchronously: wait for quiet
    while select.select([master], [], [], 0.3)[0] and time.monotonic() < end:
        stream += _drain(master)

    got = [int(m) for m in RECORD.findall(stream)]
    assert RECORD.sub(b"", stream) == b"", "bytes outside whole records reached the master"
    assert len(got) == len(set(got)), "a write was repeated"
    assert got == sorted(got), "writes arrived out of order"
    assert not set(got) & cut, "a write whose frame was cut reached the device"
    assert set(got) <= sent
    missing = [s for s in acked if s not in set(got)]
    assert not missing, f"acknowledged writes lost: {missing[:10]}"
    assert sum(counts.values()) >= 200
    assert server.fd_count() == base
    print(f"\nack writes: {sum(counts.values())} disconnects {counts}, {seq} records, "
          f"{len(acked)} acknowledged, {len(got)} arrived, "
          f"{len(sent) - len(got)} unacknowledged lost, {len(cut)} cut mid-frame; "
          f"fds {server.fd_count()} (baseline {base})")
