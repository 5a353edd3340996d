"""Kernel-interface tier for GPIO: the posix backend's real ioctl and read path on a
/dev/gpiochip0 emulated by umockdev, compared with the sim backend for the same operations.

The emulated kernel lives in tests/gpio_umockdev_kernel.py: GpioKernel answers the child's
ioctl() and read() of the emulated nodes like gpiolib-cdev (every uapi struct of
<linux/gpio.h> decoded on its own, the behaviour taken from a fresh sim chip model), hands
out stand-in nodes as line-request fds, and wakes the posix reader's poll() through the
node's pty when edge events are queued; its docstring has the details. This module holds the
fixture that sets up the testbed and runs the child, the operation list, and the tests. The
child runs bridge.posix_gpio handles; the same operation list then runs on bridge.sim's gpio
handles, and both must agree.

The child opens the nodes with os.open: the server's hardened open uses the openat2 system
call directly, which umockdev (a libc interposer) cannot see.

Needs the Debian packages umockdev, gir1.2-umockdev-1.0 and python3-gi (`make test-deps`
installs them when run as root); skips with the reason otherwise.
"""

from __future__ import annotations

import ctypes
import errno
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from bridge.sim import gpio as sim_gpio

from bridge.gpio_uapi import (
    EventId,
    GpiochipInfo,
    LineConfig,
    LineEvent,
    LineFlag,
    LineInfo,
    LineRequest,
    LineValues,
)
from bridge.ioctl import BUILTIN

from .gpio_umockdev_kernel import (
    CHIP,
    CHIPINFO,
    EVENT_SIZE,
    FIONBIO,
    GET_LINE,
    GET_VALUES,
    LINE_NODES,
    LINEINFO,
    SET_CONFIG,
    SET_VALUES,
    GpioKernel,
    chip_spec,
)
from .umockdev_common import load_umockdev, run_child, serving

# Runs in both places: on posix handles in the umockdev child, on sim handles here.
RUNNER = r'''
import time

def run(chip, ops):
    reqs, events, out = [], [], []
    for name, *args in ops:
        try:
            out.append(["ok", step(chip, reqs, events, name, args)])
        except OSError as e:
            out.append(["error", e.errno])
    for r in reqs:
        r.close()
    return {"results": out, "events": events}

def step(chip, reqs, events, name, args):
    if name == "chip_info":
        return chip.chip_info()
    if name == "line_info":
        return chip.line_info(*args)
    if name == "request":
        handle = chip.request_lines(*args).handle
        got = []

        def sink(topic, payload):
            got.append([topic, *payload])

        handle.attach(sink)
        reqs.append(handle)
        events.append(got)
        return len(reqs) - 1
    req = reqs[args[0]]
    if name == "get":
        return req.get_values(args[1])
    if name == "set":
        return req.set_values(args[1], args[2])
    if name == "config":
        return req.set_config(args[1])
    if name == "close":
        return req.close()
    if name == "events":  # the first n events of a request, once all of them came
        deadline = time.monotonic() + 10
        while len(events[args[0]]) < args[1] and time.monotonic() < deadline:
            time.sleep(0.005)
        return [e[2:] for e in events[args[0]][:args[1]]]  # without topic and timestamp
    raise ValueError(name)
'''

CHILD = RUNNER + r'''
import json, os, sys
from bridge.backend import Access
from bridge.manifest import DeviceSpec
from bridge.posix_gpio import PosixGpioChip

ops = json.load(open(sys.argv[1]))
for node in json.loads(sys.argv[2]):  # stand-ins for the kernel's line-request files
    os.open(node, os.O_RDWR | os.O_CLOEXEC)
chip = PosixGpioChip(DeviceSpec("gpiochip0", "gpio", "posix", path="/dev/gpiochip0"),
                     os.open("/dev/gpiochip0", os.O_RDWR | os.O_CLOEXEC), Access.RW)
print(json.dumps(run(chip, ops)))
'''

IN, OUT = int(LineFlag.INPUT), int(LineFlag.OUTPUT)
RISING, FALLING = int(LineFlag.EDGE_RISING), int(LineFlag.EDGE_FALLING)
PULL_UP, PULL_DOWN = int(LineFlag.BIAS_PULL_UP), int(LineFlag.BIAS_PULL_DOWN)
ACTIVE_LOW = int(LineFlag.ACTIVE_LOW)
USED = int(LineFlag.USED)
FLAGS, VALUES, DEBOUNCE = 1, 2, 3  # gpio_v2_line_attr_id

OPS: list[list[Any]] = [
    ["chip_info"],
    ["line_info", 0],
    ["line_info", 1],
    ["line_info", 8],  # no such line
    ["request", [0, 2], "hwb-out", {"flags": OUT, "attrs": [[VALUES, 0b01, 0b11]]}],
    ["request", [1, 3], "hwb-in", {"flags": IN | PULL_DOWN}],  # no edges yet
    ["line_info", 0],
    ["line_info", 1],
    ["request", [2, 4], "again", {"flags": IN}],  # line 2 is taken
    ["request", [4], "both", {"flags": IN | OUT}],
    ["request", [4], "edge-out", {"flags": OUT | RISING}],
    ["get", 1, 0b11],  # line 1 wired to line 0, driven high; line 3 pulled down
    ["get", 0, 0b11],
    ["set", 1, 1, 1],  # an input
    ["get", 0, 0],  # empty mask
    ["config", 1, {"flags": IN | RISING | FALLING | PULL_DOWN}],  # edges from now on
    ["set", 0, 0b00, 0b01],  # line 0 low: falling edge on line 1
    ["get", 1, 0b11],
    ["set", 0, 0b11, 0b11],  # rising edge on line 1
    # line 3 alone pulled up: a rising edge numbered 3 in the request, 1 on its line
    ["config", 1, {"flags": IN | RISING | FALLING | PULL_DOWN,
                   "attrs": [[FLAGS, IN | RISING | FALLING | PULL_UP, 0b10]]}],
    ["get", 1, 0b11],
    ["events", 1, 3],
    ["config", 1, {"flags": IN | RISING | ACTIVE_LOW,
                   "attrs": [[FLAGS, IN | PULL_UP, 0b10], [DEBOUNCE, 1500, 0b01]]}],
    ["line_info", 1],
    ["line_info", 3],
    ["get", 1, 0b11],  # line 1 physically high, active low; line 3 pulled up
    ["set", 0, 0, 1],  # physical falling edge = logical rising on line 1: an event
    ["set", 0, 1, 1],  # logical falling: not watched
    ["events", 1, 4],
    ["config", 0, {"flags": OUT | ACTIVE_LOW, "attrs": [[VALUES, 0b01, 0b01]]}],
    ["get", 0, 0b11],
    ["get", 1, 0b01],
    ["events", 1, 5],  # that config's edge, read before the request goes
    ["close", 1],
    ["close", 0],
    ["line_info", 0],  # released with its fd
    ["line_info", 1],
    ["request", [0, 1, 2], "", {"flags": IN}, 40],
    ["line_info", 2],
    ["get", 2, 0b111],
    ["close", 2],
]


@dataclass
class Run:
    posix: dict[str, Any]
    sim: dict[str, Any]
    kernel: GpioKernel


@pytest.fixture(scope="module")
def gpio_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    GLib, UMockdev = load_umockdev()
    testbed = UMockdev.Testbed.new()
    for i, node in enumerate([CHIP, *LINE_NODES]):
        name = node.removeprefix("/dev/")
        ok = testbed.add_from_string(f"P: /devices/virtual/gpio/{name}\nN: {name}\nE: SUBSYSTEM="
                                     f"gpio\nE: DEVNAME={node}\nA: dev=254:{i}\n\n")
        assert ok, f"umockdev could not add {node}"
    tmp = tmp_path_factory.mktemp("umockdev-gpio")
    (tmp / "ops.json").write_text(json.dumps(OPS))
    (tmp / "child.py").write_text(CHILD)
    with pytest.MonkeyPatch.context() as mp:  # a board of its own: lines free, no other wires
        mp.setattr(sim_gpio, "BOARD", sim_gpio.Board())
        kernel = GpioKernel(testbed)
        handler = UMockdev.IoctlBase()
        handler.connect("handle-ioctl", lambda _h, client: kernel.ioctl(client))
        handler.connect("handle-read", lambda _h, client: kernel.read(client))
        for node in [CHIP, *LINE_NODES]:
            assert testbed.attach_ioctl(node, handler)
        with serving(GLib):
            done = run_child(testbed, [str(tmp / "child.py"), str(tmp / "ops.json"),
                                       json.dumps(LINE_NODES)], started=kernel.started)
        kernel.reap()
    assert not kernel.problems, kernel.problems[0]
    assert done.returncode == 0, done.stderr[-3000:]
    posix = json.loads(done.stdout.strip().splitlines()[-1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sim_gpio, "BOARD", sim_gpio.Board())
        ns: dict[str, Any] = {}
        exec(compile(RUNNER, "<runner>", "exec"), ns)  # noqa: S102 - our own constant source
        sim = ns["run"](sim_gpio.SimGpioChip(chip_spec()), OPS)
    yield Run(posix, sim, kernel)


def test_decoder_layouts_are_the_uapi_ones() -> None:
    """The emulation's own offsets and codes agree with the ctypes mirrors posix uses."""
    assert [ctypes.sizeof(t) for t in (GpiochipInfo, LineInfo, LineRequest, LineConfig,
                                       LineValues, LineEvent)] == [68, 256, 592, 272, 16, 48]
    assert (LineRequest.consumer.offset, LineRequest.config.offset) == (256, 288)
    assert (LineRequest.num_lines.offset, LineRequest.fd.offset) == (560, 588)
    assert (LineInfo.offset.offset, LineInfo.flags.offset, LineInfo.attrs.offset) == (64, 72, 80)
    assert LineConfig.attrs.offset == 32
    names = ["GPIO_GET_CHIPINFO_IOCTL", "GPIO_V2_GET_LINEINFO_IOCTL", "GPIO_V2_GET_LINE_IOCTL",
             "GPIO_V2_LINE_SET_CONFIG_IOCTL", "GPIO_V2_LINE_GET_VALUES_IOCTL",
             "GPIO_V2_LINE_SET_VALUES_IOCTL"]
    assert [BUILTIN[n].request for n in names] == [CHIPINFO, LINEINFO, GET_LINE, SET_CONFIG,
                                                   GET_VALUES, SET_VALUES]


def test_gpio_posix_path_went_through_the_kernel_interface(gpio_run: Run) -> None:
    kernel = gpio_run.kernel
    assert {CHIPINFO, LINEINFO, GET_LINE} <= {r for n, r in kernel.seen if n == CHIP}
    on_lines = {r for n, r in kernel.seen if n in LINE_NODES}
    assert {GET_VALUES, SET_VALUES, SET_CONFIG, FIONBIO} <= on_lines
    # three requests, each on its own stand-in fd, all released when the child closed them
    assert [line.node for line in kernel.requests] == LINE_NODES[:3]
    assert len({line.fd for line in kernel.requests}) == 3
    # event_buffer_size: 0 (the kernel's default, 16 per line) unless the client asked
    assert [line.buffer_size for line in kernel.requests] == [0, 0, 40]
    assert [line.fifo.maxlen for line in kernel.requests] == [32, 32, 64]
    assert not kernel.lines and all(line.model.closed for line in kernel.requests)
    # events came through read(): whole records into the reader's 16-event buffer
    delivered = [n for node, asked, n in kernel.reads if node == LINE_NODES[1] and n > 0]
    assert delivered and all(n % EVENT_SIZE == 0 for n in delivered)
    assert sum(delivered) == EVENT_SIZE * 5
    assert all(asked == EVENT_SIZE * 16 for _, asked, _ in kernel.reads)
    # and only when there was one: poll() blocked until the kfifo held an event, as on the
    # kernel's fd (no read ever found it empty, so the reader never spun)
    assert len(delivered) == len(kernel.reads)


def test_gpio_posix_over_umockdev_matches_sim(gpio_run: Run) -> None:
    posix, sim = gpio_run.posix, gpio_run.sim
    assert len(posix["results"]) == len(sim["results"]) == len(OPS)
    for op, p, s in zip(OPS, posix["results"], sim["results"], strict=True):
        assert p == s, f"{op}: posix {p} != sim {s}"
    # every event of every request, apart from the time it happened
    assert ([[e[:1] + e[2:] for e in evs] for evs in posix["events"]]
            == [[e[:1] + e[2:] for e in evs] for evs in sim["events"]])


def test_event_records_reached_the_reader_intact(gpio_run: Run) -> None:
    """Each 48-byte record the kernel queued, as the posix reader decoded it, timestamp too."""
    posix, kernel = gpio_run.posix, gpio_run.kernel
    assert [[e[1:] for e in evs] for evs in posix["events"]] == [line.sent
                                                                 for line in kernel.requests]
    assert {e[0] for evs in posix["events"] for e in evs} == {"gpio.event"}
    stamps = [e[1] for e in posix["events"][1]]
    assert stamps == sorted(stamps) and stamps[0] > 0


def test_expected_from_the_uapi(gpio_run: Run) -> None:
    by = dict(enumerate(gpio_run.posix["results"]))
    assert by[0] == ["ok", {"name": "gpiochip0", "label": "hwbridge-sim", "lines": 8}]
    assert by[1] == ["ok", {"name": "wire-out", "consumer": "", "offset": 0, "flags": IN,
                            "debounce_period_us": 0}]
    assert by[3] == ["error", errno.EINVAL]
    assert by[4] == ["ok", 0] and by[5] == ["ok", 1]
    assert by[6][1]["flags"] == OUT | USED and by[6][1]["consumer"] == "hwb-out"
    assert by[7][1]["flags"] == IN | PULL_DOWN | USED
    assert by[8] == ["error", errno.EBUSY]
    assert by[9] == by[10] == ["error", errno.EINVAL]
    assert by[11] == ["ok", 0b01] and by[12] == ["ok", 0b01]
    assert by[13] == ["error", errno.EPERM] and by[14] == ["error", errno.EINVAL]
    assert by[17] == ["ok", 0b00] and by[20] == ["ok", 0b11]
    falling, rising = int(EventId.FALLING_EDGE), int(EventId.RISING_EDGE)
    # [id, offset, seqno (per request), line_seqno (per line)]
    first = [[falling, 1, 1, 1], [rising, 1, 2, 2], [rising, 3, 3, 1]]
    assert by[21] == ["ok", first]
    assert by[23][1]["flags"] == IN | RISING | ACTIVE_LOW | USED
    assert by[23][1]["debounce_period_us"] == 1500
    assert by[24][1]["flags"] == IN | PULL_UP | USED and by[24][1]["debounce_period_us"] == 0
    assert by[25] == ["ok", 0b10]
    assert by[28] == ["ok", [*first, [rising, 1, 4, 3]]]
    # line 0 active low, driven to logical 1: physically low, so line 1 (active low) reads 1,
    # and that physical falling edge is a logical rising one on line 1
    assert by[30] == ["ok", 0b01] and by[31] == ["ok", 1]
    assert by[32] == ["ok", [*first, [rising, 1, 4, 3], [rising, 1, 5, 4]]]
    assert by[35][1]["flags"] == IN and by[35][1]["consumer"] == ""
    assert by[38][1]["consumer"] == "?" and by[38][1]["flags"] == IN | USED
