# The host side of library calls below the wire: the host-worker Channel (framing over two
# pipes, timeouts, end of stream), the Engine's per-function plans, and the hand-off of a
# call that outlives its inline wait to the session's thread (matched by the very request,
# answered inline when the session probes again after it finished). LibraryHandle is driven
# the way bridge/session.py drives it (PROBE first, then a Deadline), with a real worker
# process running tests/clib/testlib.c; the last test runs slow calls through a server.
from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bridge
from bridge.libchannel import Channel
from bridge.library import LibraryHandle, shared_library
from bridge.librunner import WorkerProcess
from bridge.libworker import Engine
from bridge.manifest import DeviceSpec
from bridge.testing import ServerProc
from bridge.timeout import PROBE, Deadline, WouldBlock

from .test_library import CLIB
from .test_library import testlib as testlib  # the compiled library, a session fixture

# -- the channel --------------------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    """Two channel ends joined by two pipes, as the host and the worker hold them."""
    a_r, b_w = os.pipe()
    b_r, a_w = os.pipe()
    a, b = Channel(a_r, a_w), Channel(b_r, b_w)
    yield a, b
    for c in (a, b):
        for fd in (c.rfd, c.wfd):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_channel_carries_frames_both_ways(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    a.send(["abs", [-5]])
    assert b.recv() == ["abs", [-5]]
    b.send([0, [5]])
    assert a.recv(1.0) == [0, [5]]


def test_channel_frames_larger_than_the_pipe_and_its_buffer(pair: tuple[Channel, Channel]
                                                            ) -> None:
    a, b = pair
    big = bytes(range(256)) * 8192  # 2 MiB: many pipe-fulls, past the 64 KiB read buffer
    t = threading.Thread(target=a.send, args=([0, [big]],))
    t.start()
    assert b.recv(5.0) == [0, [big]]
    t.join()
    a.send([0, [b"small"]])  # the buffer is back to its usual size and still in step
    assert b.recv(1.0) == [0, [b"small"]]


def test_channel_timeout_keeps_a_partial_frame(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    with pytest.raises(TimeoutError):
        a.recv(0.01)  # nothing sent
    frame = b"\x00\x00\x00\x04" + b"\x92\x00\x91\x00"  # length 4, msgpack [0, [0]]
    os.write(b.wfd, frame[:5])  # the length and one byte of the body
    with pytest.raises(TimeoutError):
        a.recv(0.01)
    os.write(b.wfd, frame[5:])
    assert a.recv(1.0) == [0, [0]]


def test_channel_end_of_stream() -> None:
    r, w = os.pipe()
    w2, r2 = os.pipe()
    a = Channel(r, r2)
    os.close(w)  # the other end is gone (a worker that died)
    try:
        assert a.recv(1.0) is None
        assert a.recv() is None
    finally:
        a.close()
        os.close(w2)


# -- the engine's plans ---------------------------------------------------------------------


def _engine(testlib: Path, functions: dict[str, Any]) -> Engine:
    from bridge.libdecl import config_from_options

    return Engine(config_from_options("t", str(testlib), {
        "header": str(CLIB / "testlib.h"), "functions": functions,
        "handles": {"struct dev": "dev_close"}}))


def test_int_only_plans_pass_values_through_and_explain_refusals(testlib: Path) -> None:
    e = _engine(testlib, {"add": {}, "dev_close": {}})
    assert e.call("add", [2, 40]) == [42]
    assert e.call("add", (True, 1)) == [2]  # a bool is an int, as before
    with pytest.raises(ValueError, match=r"add: b: 2147483648 is out of range"):
        e.call("add", [1, 2**31])
    with pytest.raises(TypeError, match=r"add: a: expects an integer, not float"):
        e.call("add", [1.5, 2])
    with pytest.raises(TypeError, match="add takes 2 arguments"):
        e.call("add", [1])
    with pytest.raises(TypeError, match="add takes 2 arguments"):
        e.call("add", "ab")


def test_planned_buffers_structs_handles_and_errno(testlib: Path) -> None:
    e = _engine(testlib, {
        "fill": {"args": {"buf": {"dir": "out", "size": "len"}}},
        "checksum": {"args": {"buf": {"dir": "in", "size": "len"}}},
        "shift": {"args": {"p": "inout"}}, "dev_open": {}, "dev_set": {}, "dev_get": {},
        "dev_close": {},
        "dev_read2": {"args": {"buf": {"dir": "out", "size": "*len"}, "len": "inout"}},
        "fail_code": {"errno": True}, "fail_with": {"errno": "raise"}})
    assert e.call("fill", [3, 7]) == [3, b"\x07\x07\x07"]
    assert e.call("checksum", [b"\x01\x02\x03"]) == [6]
    moved = e.call("shift", [{"x": 1, "y": 2}, 3])[0]
    assert (moved["x"], moved["y"]) == (4, 5)
    (wid,) = e.call("dev_open", [9])
    assert isinstance(wid, int) and e.call("dev_set", [wid, 5]) == [9]
    assert e.call("dev_get", [wid]) == [5]
    assert e.call("dev_close", [wid]) == []
    with pytest.raises(OSError) as err:
        e.call("dev_get", [wid])
    assert err.value.errno == errno.EBADF
    ret, data, count = e.call("dev_read2", [8])
    assert count == len(data) <= 8
    assert e.call("fail_code", [errno.EPERM]) == [-1, errno.EPERM]
    with pytest.raises(OSError) as err:
        e.call("fail_with", [errno.ENOSPC])
    assert err.value.errno == errno.ENOSPC


# -- the hand-off of a slow call -------------------------------------------------------------


@pytest.fixture
def handle(testlib: Path) -> Iterator[LibraryHandle]:
    spec = DeviceSpec(f"slow{time.monotonic_ns()}", "library", "posix", path=str(testlib),
                      options={"header": str(CLIB / "testlib.h"), "timeout": 5.0,
                               "handles": {"struct dev": "dev_close"},
                               "functions": {
                                   "hang": {}, "add": {}, "dev_open": {}, "dev_get": {},
                                   "dev_close": {},
                                   "fill": {"args": {"buf": {"dir": "out", "size": "len"}}},
                                   "checksum": {"args": {"buf": {"dir": "in",
                                                                 "size": "len"}}}}})
    shared = shared_library(spec, str(testlib))
    assert isinstance(shared.runner, WorkerProcess)  # isolation "process", the default
    h = LibraryHandle(spec, shared)
    with pytest.raises(WouldBlock):
        h.call("add", [2, 3], PROBE)  # no worker yet: starting one is not for a probe
    assert h.call("add", [2, 3], Deadline(30.0)) == [5]  # the session's thread starts it
    yield h
    h.close()
    shared.runner.stop()


def test_a_quick_call_is_answered_inline(handle: LibraryHandle) -> None:
    assert handle.call("add", [2, 3], PROBE) == [5]
    assert not handle._parked


def test_large_buffers_to_and_from_the_worker(handle: LibraryHandle) -> None:
    n = 3 << 20  # several pipe-fulls each way
    data = bytes(range(256)) * (n // 256)
    assert handle.call("checksum", [data], Deadline(10.0)) == [sum(data) % 65536]
    assert handle.call("fill", [n, 0x5A], Deadline(10.0)) == [n, b"\x5a" * n]
    assert handle.call("add", [1, 2], PROBE) == [3]  # the channel is still in step


def test_a_slow_call_is_parked_and_claimed_by_its_own_request(handle: LibraryHandle) -> None:
    args = [1]
    with pytest.raises(WouldBlock):
        handle.call("hang", args, PROBE)  # past the inline wait: parked, still running
    with pytest.raises(WouldBlock):
        handle.call("hang", args, PROBE)  # the session probes the same request again
    with pytest.raises(WouldBlock):
        handle.call("hang", [1], PROBE)  # an equal request is another call: library busy
    assert len(handle._parked) == 1
    assert handle.call("hang", args, Deadline(5.0)) == [1]  # the session's thread
    assert not handle._parked


def test_a_parked_call_that_finished_is_answered_by_the_next_probe(handle: LibraryHandle
                                                                    ) -> None:
    args = [1]
    with pytest.raises(WouldBlock):
        handle.call("hang", args, PROBE)
    flight = handle._parked[0].flight
    assert flight.wait(5.0)
    assert handle.call("hang", args, PROBE) == [1]  # no second run, no thread
    assert not handle._parked
    assert handle.call("add", [1, 1], PROBE) == [2]


def test_closing_a_handle_while_the_library_is_busy(handle: LibraryHandle) -> None:
    (token,) = handle.call("dev_open", [4], PROBE)
    with pytest.raises(WouldBlock):
        handle.call("hang", [1], PROBE)
    close_args = [token]
    with pytest.raises(WouldBlock):
        handle.call("dev_close", close_args, PROBE)  # busy: nothing sent, token kept
    assert handle.call("dev_close", close_args, Deadline(5.0)) == []
    with pytest.raises(OSError) as e:
        handle.call("dev_get", [token], PROBE)
    assert e.value.errno == errno.EBADF


# -- end to end: slow calls through a real server -------------------------------------------

SLOW_STANDIN = '''
import time

_count = 0

def slow(ms):
    global _count
    _count += 1
    time.sleep(ms / 1000)
    return ms

def count():
    return _count
'''


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_slow_calls_end_to_end_each_run_once(make_server: Callable[..., ServerProc],
                                             tmp_path: Path, isolation: str) -> None:
    (tmp_path / "slowstandin.py").write_text(SLOW_STANDIN)
    s = make_server(f"""
[devices.slow]
kind = "library"
sim = "library"
standin = "slowstandin"
isolation = "{isolation}"
cdef = "int slow(int ms); int count(void);"
functions = ["slow", "count"]
""", env={"PYTHONPATH": str(tmp_path)})
    with bridge.connect(s.url) as host, host.open("slow") as lib:
        assert lib.slow(50) == 50  # past the inline wait: answered from the session's thread
        results: list[Any] = []
        threads = [threading.Thread(target=lambda: results.append(lib.slow(30)))
                   for _ in range(3)]  # equal requests in flight at once on one connection
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == [30, 30, 30]
        assert lib.count() == 4  # every request ran exactly once
        with host.batch():
            a = lib.slow(20)
            b = lib.count()
        assert (a.result(), b.result()) == (20, 5)


def test_killing_a_call_that_is_over_spares_the_next_one(handle: LibraryHandle) -> None:
    runner = handle.runner
    assert isinstance(runner, WorkerProcess)
    assert runner.call("add", [1, 1], 5.0, "late") == [2]
    stale = runner._calls  # the number of the call that just ended
    results: list[Any] = []

    def slow() -> None:
        try:
            results.append(runner.call("hang", [1], 5.0, "given up"))
        except Exception as e:
            results.append(e)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    runner.kill_late("too late for the old call", stale)  # must not touch the new call
    t.join(5)
    assert results == [[1]]
    generation = runner.generation
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    runner.kill_late("given up", runner._current)  # the call in flight: killed
    t.join(5)
    assert isinstance(results[1], TimeoutError) and "given up" in str(results[1])
    assert runner.call("add", [2, 2], 30.0, "late") == [4]  # a new worker
    assert runner.generation == generation + 1


@pytest.mark.parametrize("isolation", ["process", "none"])
def test_a_slow_call_does_not_hold_up_other_connections(
        make_server: Callable[..., ServerProc], tmp_path: Path, isolation: str) -> None:
    """A worker's call leaves the host's event loop after its inline wait; an in-process
    call (isolation = "none") that is not declared inline never runs on the loop."""
    (tmp_path / "slowstandin.py").write_text(SLOW_STANDIN)
    s = make_server(f"""
[devices.slow]
kind = "library"
sim = "library"
standin = "slowstandin"
isolation = "{isolation}"
cdef = "int slow(int ms); int count(void);"
functions = {{slow = {{}}, count = {{inline = true}}}}

[devices.zero]
kind = "node"
path = "/dev/zero"
access = "r"
""", env={"PYTHONPATH": str(tmp_path)})
    with bridge.connect(s.url) as a, bridge.connect(s.url) as b, a.open("slow") as lib, \
            b.open("zero") as zero:
        assert lib.slow(1) == 1  # the worker runs
        t = threading.Thread(target=lib.slow, args=(1500,))
        t.start()
        time.sleep(0.2)  # the slow call is in the worker by now
        assert zero.read(4) == b"\0" * 4
        assert t.is_alive()  # the other connection was served while the call went on
        t.join(10)
        assert lib.count() == 2  # a function declared inline = true
