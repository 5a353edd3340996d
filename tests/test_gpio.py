"""GPIO end to end: the driver against the simulated lab's gpiochip0 through a real server.

gpiochip0 has 8 lines with line 0 wired to line 1. Every test releases what it requested
(the lab server is shared), so each starts from free lines.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from bridge.drivers.gpio import GPIO, Bias, Direction, Edge, EdgeEvent

import bridge
from bridge.gpio_uapi import LineFlag

from .conftest import ServerProc

WAIT = 5.0  # generous bound for an event that must come


@pytest.fixture
def host(lab: ServerProc) -> Iterator[Any]:
    with bridge.connect(lab.url) as h:
        yield h


@pytest.fixture
def chip(host: Any) -> Iterator[GPIO]:
    with host.open("gpiochip0") as g:
        assert isinstance(g, GPIO)
        yield g


def _events(g: GPIO, line: int, n: int) -> list[EdgeEvent]:
    got = []
    for _ in range(n):
        ev = g.wait_event(line, WAIT)
        assert ev is not None, f"event {len(got) + 1} of {n} did not come"
        got.append(ev)
    return got


def test_chip_and_line_info(chip: GPIO) -> None:
    info = chip.chip_info()
    assert (info.name, info.lines) == ("gpiochip0", 8)
    li = chip.line_info(0)
    assert li.name == "wire-out" and not li.used and li.flags & LineFlag.INPUT
    chip.configure(0, Direction.OUT)
    li = chip.line_info(0)
    assert li.used and li.consumer == "hwbridge"
    assert li.flags & LineFlag.OUTPUT and not li.flags & LineFlag.INPUT
    with pytest.raises(OSError) as e:
        chip.line_info(8)
    assert e.value.errno == errno.EINVAL and "gpiochip0" in str(e.value)


def test_wire_carries_level(chip: GPIO) -> None:
    chip.configure(0, Direction.OUT)
    chip.configure(1, Direction.IN)
    for level in (True, False, True, False):
        chip.write(0, level)
        assert chip.read(1) is level
        assert chip.read(0) is level  # an output reads back what it drives


def test_initial_output_value(chip: GPIO) -> None:
    chip.configure(1, Direction.IN)
    chip.configure(0, Direction.OUT, value=True)
    assert chip.read(1) is True


def test_unconfigured_lines_are_requested_on_use(chip: GPIO) -> None:
    chip.write(0, True)  # becomes an output driving high
    assert chip.read(1) is True  # becomes an input
    assert chip.line_info(0).flags & LineFlag.OUTPUT
    assert chip.line_info(1).flags & LineFlag.INPUT and chip.line_info(1).used


@pytest.mark.parametrize(("edge", "expected"), [
    (Edge.RISING, [Edge.RISING, Edge.RISING]),
    (Edge.FALLING, [Edge.FALLING, Edge.FALLING]),
    (Edge.BOTH, [Edge.RISING, Edge.FALLING, Edge.RISING, Edge.FALLING]),
])
def test_edge_events(chip: GPIO, edge: Edge, expected: list[Edge]) -> None:
    chip.configure(0, Direction.OUT)
    chip.configure(1, Direction.IN, edge)
    for level in (True, False, True, False):
        chip.write(0, level)
    got = _events(chip, 1, len(expected))
    assert [e.edge for e in got] == expected
    assert [e.line for e in got] == [1] * len(expected)
    assert [e.seqno for e in got] == list(range(1, len(expected) + 1))
    assert [e.line_seqno for e in got] == list(range(1, len(expected) + 1))
    stamps = [e.timestamp_ns for e in got]
    assert stamps == sorted(stamps) and stamps[0] > 0
    assert chip.wait_event(1, 0.05) is None  # nothing more


def test_no_event_without_a_level_change(chip: GPIO) -> None:
    chip.configure(0, Direction.OUT)
    chip.configure(1, Direction.IN, Edge.BOTH)
    chip.write(0, False)  # already low
    assert chip.wait_event(1, 0.05) is None
    assert chip.wait_event(1, 0) is None


def test_wait_event_timeout_returns_none(chip: GPIO) -> None:
    chip.configure(1, Direction.IN, Edge.BOTH)
    assert chip.wait_event(1, 0.1) is None
    assert chip.wait_event(5, 0) is None


def test_on_event_callback(chip: GPIO) -> None:
    seen: list[EdgeEvent] = []
    done = threading.Event()

    def callback(ev: EdgeEvent) -> None:
        seen.append(ev)
        if len(seen) == 2:
            done.set()

    chip.on_event(callback)
    chip.configure(0, Direction.OUT)
    chip.configure(1, Direction.IN, "both")  # periphery's strings work too
    chip.write(0, True)
    chip.write(0, False)
    assert done.wait(WAIT)
    assert [(e.line, e.edge, e.seqno) for e in seen] == [(1, Edge.RISING, 1),
                                                         (1, Edge.FALLING, 2)]


def test_an_edge_a_write_raises_is_queued_when_the_write_returns(chip: GPIO) -> None:
    # The host pushes the edge before the write's reply, and the proxy stores pushed
    # events on the thread that receives them: no hand-off to the event thread, so the
    # event is there to poll (timeout 0) as soon as write() returns, every time.
    calls: list[EdgeEvent] = []
    chip.on_event(calls.append)  # callbacks still run, on the event thread
    chip.configure(0, Direction.OUT)
    chip.configure(1, Direction.IN, Edge.BOTH)
    level = False
    for i in range(50):
        level = not level
        chip.write(0, level)
        ev = chip.wait_event(1, 0)
        assert ev is not None, f"edge {i + 1} was not queued when write() returned"
        assert ev.edge is (Edge.RISING if level else Edge.FALLING)
    deadline = time.monotonic() + WAIT
    while len(calls) < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [e.seqno for e in calls] == list(range(1, 51))


def test_reconfigure_enables_edges(chip: GPIO) -> None:
    chip.configure(0, Direction.OUT)
    chip.configure(1, Direction.IN)
    chip.write(0, True)
    assert chip.wait_event(1, 0.05) is None  # no edge detection yet
    chip.configure(1, Direction.IN, Edge.FALLING)  # set_config on the same request
    chip.write(0, False)
    ev = chip.wait_event(1, WAIT)
    assert ev is not None and ev.edge is Edge.FALLING


def test_active_low(chip: GPIO) -> None:
    chip.configure(0, Direction.OUT)
    chip.configure(1, Direction.IN, Edge.RISING, active_low=True)
    chip.write(0, True)
    assert chip.read(1) is False
    assert chip.wait_event(1, 0.05) is None  # physical rise is a logical fall
    chip.write(0, False)
    assert chip.read(1) is True
    ev = chip.wait_event(1, WAIT)
    assert ev is not None and ev.edge is Edge.RISING


@pytest.mark.parametrize(("bias", "level"), [(Bias.PULL_UP, True), (Bias.PULL_DOWN, False)])
def test_bias_sets_unconnected_level(chip: GPIO, bias: Bias, level: bool) -> None:
    chip.configure(3, Direction.IN, bias=bias)  # line 3 is wired to nothing
    assert chip.read(3) is level
    chip.configure(1, Direction.IN, bias=bias)  # line 1's wire has no driver
    assert chip.read(1) is level


def test_release_of_driver_falls_to_bias(chip: GPIO) -> None:
    chip.configure(0, Direction.OUT, value=True)
    chip.configure(1, Direction.IN, Edge.FALLING, Bias.PULL_DOWN)
    chip.release(0)
    ev = chip.wait_event(1, WAIT)
    assert ev is not None and ev.edge is Edge.FALLING
    assert not chip.line_info(0).used


def test_busy_line(chip: GPIO, lab: ServerProc) -> None:
    chip.configure(1, Direction.IN)
    with bridge.connect(lab.url) as other, other.open("gpiochip0") as g2:
        with pytest.raises(OSError) as e:
            g2.configure(1, Direction.IN)
        assert e.value.errno == errno.EBUSY
        assert "gpiochip0" in str(e.value) and "request_lines" in str(e.value)
        g2.configure(2, Direction.IN)  # other lines stay free
    chip.release(1)
    with bridge.connect(lab.url) as other, other.open("gpiochip0") as g2:
        g2.configure(1, Direction.IN)  # free again after release


def test_edge_on_output_is_einval(chip: GPIO) -> None:
    with pytest.raises(OSError) as e:
        chip.configure(0, Direction.OUT, Edge.RISING)
    assert e.value.errno == errno.EINVAL
    assert not chip.line_info(0).used  # the failed request left nothing behind


def test_write_to_input_is_eperm(chip: GPIO) -> None:
    chip.configure(1, Direction.IN)
    with pytest.raises(PermissionError) as e:
        chip.write(1, True)
    assert e.value.errno == errno.EPERM


@pytest.mark.parametrize(("flags", "why"), [
    (LineFlag.INPUT | LineFlag.OUTPUT, "both directions"),
    (LineFlag.BIAS_PULL_UP, "bias with no direction"),
    (LineFlag.INPUT | LineFlag.BIAS_PULL_UP | LineFlag.BIAS_PULL_DOWN, "two biases"),
    (LineFlag.INPUT | LineFlag.OPEN_DRAIN, "open drain on an input"),
    (LineFlag.OUTPUT | LineFlag.OPEN_DRAIN | LineFlag.OPEN_SOURCE, "two drives"),
    (LineFlag.INPUT | LineFlag.EVENT_CLOCK_REALTIME | LineFlag.EVENT_CLOCK_HTE, "two clocks"),
    (LineFlag.USED | LineFlag.INPUT, "USED is not a request flag"),
    (1 << 20 | LineFlag.INPUT, "unknown flag"),
])
def test_kernel_rejects_flag_combinations(chip: GPIO, flags: int, why: str) -> None:
    with pytest.raises(OSError) as e:
        chip.client.call("request_lines", [chip.handle, [4], "t", {"flags": int(flags)}, 0])
    assert e.value.errno == errno.EINVAL, why


@pytest.mark.parametrize("args", [
    [[8], "t", {"flags": 4}, 0],  # no such line
    [[], "t", {"flags": 4}, 0],  # no line at all
    [[4], "t", {"flags": "in"}, 0],  # flags of the wrong type
    [[4], "t", {"flags": 4, "attrs": [[9, 0, 1]]}, 0],  # unknown attribute
    [[4], "t", {"flags": 4, "attrs": [[2, 0, 1]] * 11}, 0],  # more than 10 attributes
    [[4], "x" * 40, {"flags": 4}, 0],  # consumer longer than the kernel's 32 bytes
    ["4", "t", {}, 0],
])
def test_bad_requests_are_einval_and_harmless(chip: GPIO, args: list[Any]) -> None:
    with pytest.raises(OSError) as e:
        chip.client.call("request_lines", [chip.handle, *args])
    assert e.value.errno == errno.EINVAL
    assert chip.chip_info().lines == 8  # the server carries on


def test_duplicate_offsets_are_ebusy(chip: GPIO) -> None:
    with pytest.raises(OSError) as e:
        chip.client.call("request_lines", [chip.handle, [4, 4], "t", {"flags": 4}, 0])
    assert e.value.errno == errno.EBUSY
    assert not chip.line_info(4).used


def test_values_need_a_mask(chip: GPIO) -> None:
    h = chip.client.call("request_lines", [chip.handle, [4], "t", {"flags": 8}, 0])
    for op, args in (("get_values", [0]), ("set_values", [1, 0]), ("get_values", [2])):
        with pytest.raises(OSError) as e:
            chip.client.call(op, [h, *args])
        assert e.value.errno == errno.EINVAL, (op, args)
    chip.client.call("close", [h])


def test_read_only_connection_cannot_drive(host: Any) -> None:
    with host.open("gpiochip0", "r") as g:
        with pytest.raises(PermissionError):
            g.configure(0, Direction.OUT)
        assert g.read(3) is False  # inputs are fine


def test_gpio_in_a_batch(chip: GPIO, host: Any) -> None:
    chip.configure(0, Direction.OUT)
    chip.configure(1, Direction.IN)
    with host.batch():
        chip.write(0, True)
        level = chip.read(1)
    assert level.result() is True


_WIRED = """
[devices.chipa]
kind = "gpio"
sim = "gpiochip"
lines = 4
wires = [[0, "chipb", 3], [1, "chipb", 4]]

[devices.chipb]
kind = "gpio"
sim = "gpiochip"
line_names = ["b0", "b1", "b2", "b3", "b4", "b5"]
lines = 6
"""


def test_wires_between_chips_and_request_seqno(make_server: Any) -> None:
    srv = make_server(_WIRED)
    with bridge.connect(srv.url) as host, host.open("chipa") as a, host.open("chipb") as b:
        assert b.line_info(3).name == "b3"
        events: list[list[int]] = []
        done = threading.Event()

        def on(ev: Any) -> None:
            events.append(ev.payload)
            if len(events) == 3:
                done.set()

        host.on_event(on, "gpio.event")
        both = int(LineFlag.INPUT | LineFlag.EDGE_RISING | LineFlag.EDGE_FALLING)
        req = host.call("request_lines", [b.handle, [3, 4], "t", {"flags": both}, 0])
        a.configure(0, Direction.OUT)
        a.configure(1, Direction.OUT)
        a.write(0, True)
        a.write(1, True)
        a.write(0, False)
        assert done.wait(WAIT)
        # [timestamp_ns, id, offset, seqno, line_seqno]: seqno counts the request,
        # line_seqno each line, as in the kernel.
        assert [e[1:] for e in events] == [[1, 3, 1, 1], [1, 4, 2, 1], [2, 3, 3, 2]]
        assert host.call("get_values", [req, 0b11]) == 0b10


def test_posix_gpio_on_a_node_that_is_no_chip(make_server: Any) -> None:
    """The real posix path: ioctls reach the kernel, whose ENOTTY comes back intact."""
    srv = make_server('[devices.notachip]\nkind = "gpio"\npath = "/dev/null"\n')
    with bridge.connect(srv.url) as host, host.open("notachip") as g:
        with pytest.raises(OSError) as e:
            g.chip_info()
        assert e.value.errno == errno.ENOTTY
        with pytest.raises(OSError) as e:
            g.configure(0, Direction.IN)
        assert e.value.errno == errno.ENOTTY


def test_driver_validates_before_io(chip: GPIO) -> None:
    with pytest.raises(ValueError, match="direction"):
        chip.configure(0, "sideways")
    with pytest.raises(ValueError, match="edge"):
        chip.configure(1, Direction.IN, edge="up")
    with pytest.raises(ValueError, match="line"):
        chip.read(-1)


def test_driver_imports_without_posix_modules() -> None:
    code = ("import sys\n"
            "for m in ('fcntl', 'termios', 'resource'):\n"
            "    sys.modules[m] = None\n"
            "import bridge.drivers.gpio\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_event_clock_realtime(chip: GPIO, host: Any) -> None:
    got: list[list[int]] = []
    done = threading.Event()

    def on(ev: Any) -> None:
        got.append(ev.payload)
        done.set()

    host.on_event(on, "gpio.event")
    flags = int(LineFlag.INPUT | LineFlag.EDGE_RISING | LineFlag.EVENT_CLOCK_REALTIME)
    req = host.call("request_lines", [chip.handle, [1], "t", {"flags": flags}, 0])
    chip.write(0, True)
    assert done.wait(WAIT)
    # CLOCK_REALTIME, not CLOCK_MONOTONIC: the stamp is in the wall clock's domain
    assert abs(got[0][0] - time.time_ns()) < 3600 * 10**9
    host.call("close", [req])
