# Record and replay end to end: a real server records a real pty session (`serve --record`),
# then a second server replays the trace as a simulated device; the same requests give the
# same results, and the first differing request fails with a divergence error naming it.
from __future__ import annotations

import errno
import json
import os
import select
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import bridge
from bridge.testing import ServerProc, start_server


@pytest.fixture
def pty() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    try:
        yield master, name
    finally:
        os.close(master)
        os.close(slave)


def _read_master(fd: int, want: bytes) -> bytes:
    out = b""
    for _ in range(50):
        if want in out or not select.select([fd], [], [], 5)[0]:
            break
        out += os.read(fd, 1024)
    return out


def _session(url: str, master: int | None) -> list[object]:
    """The same client code against the live pty (master given) or its replay."""
    seen: list[object] = []
    with bridge.connect(url) as host, host.open("tty0") as tty:
        tty.timeout = 5.0
        seen.append(tty.ioctl("TIOCGWINSZ"))
        seen.append(tty.write(b"hello\n"))
        if master is not None:
            seen.append(_read_master(master, b"hello"))
            os.write(master, b"world\n")
        seen.append(tty.read(64))
        tty.timeout = 0.2
        try:
            tty.read(64)
        except TimeoutError as e:
            seen.append(("timeout", e.errno))
    return seen


MANIFEST = """
[devices.tty0]
kind = "node"
{where}
ioctls = ["TIOCGWINSZ"]
"""


def test_record_a_pty_session_and_replay_it(
        pty: tuple[int, str], tmp_path: Path, make_server: Callable[..., ServerProc]) -> None:
    master, slave_path = pty
    trace = tmp_path / "trace.jsonl"
    live = make_server(MANIFEST.format(where=f'path = "{slave_path}"'), "--record", str(trace))
    recorded = _session(live.url, master)
    live.stop()

    assert recorded[1] == 6
    assert b"hello" in recorded[2]  # type: ignore[operator]
    assert recorded[3] == b"world\n"
    assert recorded[4] == ("timeout", errno.ETIMEDOUT)
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert lines[0]["hwbridge_trace"] == 1
    ops = [(r["dev"], r["op"]) for r in lines[1:]]
    assert ops == [("tty0", "open"), ("tty0", "ioctl"), ("tty0", "write"), ("tty0", "read"),
                   ("tty0", "read")]
    assert lines[3]["args"] == [{"$b": b"hello\n".hex()}]
    assert lines[5]["err"]["name"] == "ETIMEDOUT"

    replay = make_server(MANIFEST.format(where=f'sim = "replay"\ntrace = "{trace}"'))
    replayed = _session(replay.url, None)
    assert replayed == [recorded[0], recorded[1], recorded[3], recorded[4]]


def test_a_differing_request_names_the_first_mismatch(
        pty: tuple[int, str], tmp_path: Path, make_server: Callable[..., ServerProc]) -> None:
    master, slave_path = pty
    trace = tmp_path / "trace.jsonl"
    live = make_server(MANIFEST.format(where=f'path = "{slave_path}"'), "--record", str(trace))
    with bridge.connect(live.url) as host, host.open("tty0") as tty:
        tty.write(b"first\n")
        tty.write(b"second\n")
    live.stop()

    replay = make_server(MANIFEST.format(where=f'sim = "replay"\ntrace = "{trace}"'))
    with bridge.connect(replay.url) as host, host.open("tty0") as tty:
        assert tty.write(b"first\n") == 6
        with pytest.raises(OSError) as info:
            tty.write(b"SECOND\n")
        assert info.value.errno == errno.EPROTO
        message = str(info.value)
        assert "tty0" in message and "write" in message
        assert "b'second\\n'" in message and "b'SECOND\\n'" in message
        assert f"{trace}:4" in message  # the trace line of the expected record
        with pytest.raises(OSError) as again:  # the replay stays failed at the first mismatch
            tty.write(b"second\n")
        assert "SECOND" in str(again.value)


def test_replay_reports_requests_past_the_end(
        tmp_path: Path, make_server: Callable[..., ServerProc]) -> None:
    trace = tmp_path / "trace.jsonl"
    rec = make_server('[devices.nul]\nkind = "node"\npath = "/dev/null"\n', "--record",
                      str(trace))
    with bridge.connect(rec.url) as host, host.open("nul") as nul:
        assert nul.write(b"abc") == 3
    rec.stop()
    replay = make_server(f'[devices.nul]\nkind = "node"\nsim = "replay"\ntrace = "{trace}"\n')
    with bridge.connect(replay.url) as host, host.open("nul") as nul:
        assert nul.write(b"abc") == 3
        with pytest.raises(OSError, match="recording of handle 1 ends, got read"):
            nul.read(4)


def test_records_failures_of_every_backend_the_same_way(
        tmp_path: Path, make_server: Callable[..., ServerProc]) -> None:
    trace = tmp_path / "trace.jsonl"
    srv = make_server('[devices.full]\nkind = "node"\npath = "/dev/full"\n'
                      '[devices.zero]\nkind = "node"\nsim = "zero"\n', "--record", str(trace))
    with bridge.connect(srv.url) as host:
        with host.open("full") as full, pytest.raises(OSError) as info:
            full.write(b"x")
        assert info.value.errno == errno.ENOSPC
        with host.open("zero") as zero:
            assert zero.read(3) == bytes(3)
    srv.stop()
    recs = [json.loads(x) for x in trace.read_text().splitlines()[1:]]
    assert [(r["dev"], r["op"]) for r in recs] == [
        ("full", "open"), ("full", "write"), ("zero", "open"), ("zero", "read")]
    assert recs[1]["err"]["errno"] == errno.ENOSPC
    assert recs[3]["ok"] == {"$b": "000000"}


def _gpio_session(url: str) -> list[object]:
    with bridge.connect(url) as host, host.open("gpiochip0") as chip:
        chip.configure(1, "in", edge="both")
        chip.configure(0, "out")
        chip.write(0, True)
        event = chip.wait_event(1, timeout=5.0)
        return [event, chip.read(1)]


def test_record_and_replay_handles_made_by_operations_and_their_events(
        tmp_path: Path, make_server: Callable[..., ServerProc]) -> None:
    trace = tmp_path / "gpio.jsonl"
    live = make_server(None, "--record", str(trace))
    recorded = _gpio_session(live.url)
    live.stop()
    assert recorded[0] is not None and recorded[1] is True
    replay = make_server(f'[devices.gpiochip0]\nkind = "gpio"\nsim = "replay"\n'
                         f'trace = "{trace}"\n')
    assert _gpio_session(replay.url) == recorded


def test_a_trace_that_fills_its_disk_ends_and_the_operations_go_on(tmp_path: Path) -> None:
    """`--record` on a disk that fills (here the host's file size limit): the trace ends
    with its last whole records, the host says so once, and every operation still works;
    a trace that cannot even start is a clear error at start."""
    trace = tmp_path / "trace.jsonl"
    with start_server('[devices.zero]\nkind = "node"\nsim = "zero"\n', "--record", str(trace),
                      workdir=tmp_path, fsize=6000) as srv:
        with bridge.connect(srv.url) as host, host.open("zero") as z:
            for _ in range(200):  # far more records than 6,000 bytes hold
                assert z.read(4) == bytes(4)
        srv.stop()
        out = srv.output()
    assert out.count("recording stopped") == 1, out
    lines = trace.read_text().splitlines()
    whole = []
    for line in lines:
        try:
            whole.append(json.loads(line))
        except json.JSONDecodeError:
            assert line is lines[-1], line  # only the record the limit cut
    assert whole[0]["hwbridge_trace"] and 10 < len(whole) < 200
    assert [r["n"] for r in whole[1:]] == list(range(1, len(whole)))
    with pytest.raises(RuntimeError, match="cannot record into /dev/full: No space left"):
        start_server('[devices.zero]\nkind = "node"\nsim = "zero"\n', "--record", "/dev/full")
