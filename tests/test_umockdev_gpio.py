"""Kernel-interface tier for GPIO: the posix backend's real ioctl and read path on a
/dev/gpiochip0 emulated by umockdev, compared with the sim backend for the same operations.

umockdev's preload library diverts the child's open(), ioctl() and read() of emulated nodes
to this process (UMockdev.IoctlBase "handle-ioctl" and "handle-read"). GpioKernel below
answers them like gpiolib-cdev: it decodes every uapi struct of <linux/gpio.h> on its own
(struct module: gpiochip_info, gpio_v2_line_info, gpio_v2_line_request and its
gpio_v2_line_config, gpio_v2_line_values, 48-byte gpio_v2_line_event records) and takes the
behaviour (EBUSY, EINVAL, EPERM, wired lines, active-low, edge events and their numbering)
from a fresh sim chip model. The child runs bridge.posix_gpio handles; the same operation
list then runs on bridge.sim's gpio handles, and both must agree.

The fd of a line request. GPIO_V2_GET_LINE_IOCTL creates a new file (an anonymous inode) and
returns its number in gpio_v2_line_request.fd; umockdev cannot create a file in the child.
So the child opens a few stand-in nodes (/dev/gpio-linereqN, attached to the same handler)
before it starts, and the emulated ioctl hands one of them out: it finds that node's fd
number in /proc/<child>/fd (same st_rdev) and writes it into .fd. Every later ioctl and
read() on that fd reaches the handler through the stand-in's own umockdev connection, told
apart from the chip by its node. Closing the fd releases the request, as in the kernel: the
handler sees the fd gone from /proc/<child>/fd before its next chip ioctl. bridge/posix_gpio
needs no seam for this.

Edge events. Every node umockdev emulates is a pty whose master this process holds
(Testbed.get_dev_fd), and umockdev forwards read() but not poll(). The handler keeps the
request's kfifo; while it holds events, one byte waits in the pty, so the posix reader's
poll() wakes exactly as on a line-request fd with events. Its read() is answered from the
kfifo with whole 48-byte records (EAGAIN when empty on a non-blocking fd, as the kernel),
and the read that empties the kfifo also consumes the wake byte (IoctlClient.execute runs
the real read on the pty). The fd's O_NONBLOCK is real too: FIONBIO and the other VFS-level
ioctls run on the real fd, and the handler reads the flag from /proc/<child>/fdinfo.

The child opens the nodes with os.open: the server's hardened open uses the openat2 system
call directly, which umockdev (a libc interposer) cannot see.

Needs the Debian packages umockdev, gir1.2-umockdev-1.0 and python3-gi (`make test-deps`
installs them when run as root); skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import stat
import struct
import threading
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from bridge.gpiohost import LineRequestHandle
from bridge.ioctl import BUILTIN
from bridge.manifest import DeviceSpec

from .umockdev_common import load_umockdev, run_child, serving


def _ioc(direction: int, nr: int, size: int) -> int:
    """_IOC() of include/uapi/asm-generic/ioctl.h with GPIO's type 0xB4 (1 write, 2 read)."""
    return direction << 30 | size << 16 | 0xB4 << 8 | nr


# include/uapi/linux/gpio.h, sizes of the structs as laid out there
CHIPINFO = _ioc(2, 0x01, 68)  # GPIO_GET_CHIPINFO_IOCTL, struct gpiochip_info
LINEINFO = _ioc(3, 0x05, 256)  # GPIO_V2_GET_LINEINFO_IOCTL, struct gpio_v2_line_info
GET_LINE = _ioc(3, 0x07, 592)  # GPIO_V2_GET_LINE_IOCTL, struct gpio_v2_line_request
SET_CONFIG = _ioc(3, 0x0D, 272)  # GPIO_V2_LINE_SET_CONFIG_IOCTL, struct gpio_v2_line_config
GET_VALUES = _ioc(3, 0x0E, 16)  # GPIO_V2_LINE_GET_VALUES_IOCTL, struct gpio_v2_line_values
SET_VALUES = _ioc(3, 0x0F, 16)  # GPIO_V2_LINE_SET_VALUES_IOCTL
EVENT_SIZE = 48  # struct gpio_v2_line_event
LINES_MAX, NUM_ATTRS_MAX = 64, 10
# Answered by fs/ioctl.c for any open file before the driver sees them.
FIONBIO, FIOASYNC, FIOCLEX, FIONCLEX = 0x5421, 0x5452, 0x5451, 0x5450
VFS_IOCTLS = frozenset({FIONBIO, FIOASYNC, FIOCLEX, FIONCLEX})

CHIP = "/dev/gpiochip0"
LINE_NODES = [f"/dev/gpio-linereq{i}" for i in range(4)]  # OPS makes 3 requests


def chip_spec() -> DeviceSpec:
    """The sim lab's gpiochip0 (8 lines, line 0 wired to line 1)."""
    lab = sim_gpio.LAB["gpiochip0"]
    return DeviceSpec("gpiochip0", "gpio", "sim", sim="gpiochip",
                      options={k: lab[k] for k in ("label", "line_names", "wires")})


@dataclass
class LineFd:
    """One struct linereq: the model's request, its kfifo, and the fd the child holds."""

    node: str
    fd: int
    rdev: int
    model: LineRequestHandle
    master: int  # the pty master behind the stand-in node: a byte there makes poll() wake
    fifo: deque[bytes]
    buffer_size: int  # gpio_v2_line_request.event_buffer_size as the child sent it
    sent: list[list[int]] = field(default_factory=list)  # every event queued, decoded
    armed: bool = False  # the wake byte is waiting in the pty


class GpioKernel:
    """What gpiolib-cdev does with each ioctl and read, answered from a sim chip model."""

    def __init__(self, testbed: Any) -> None:
        self.testbed = testbed
        self.root = testbed.get_root_dir()
        self.chip = sim_gpio.SimGpioChip(chip_spec())
        self.free = list(LINE_NODES)
        self.lines: dict[str, LineFd] = {}
        self.requests: list[LineFd] = []  # in the order the child made them
        self.seen: list[tuple[str, int]] = []
        self.reads: list[tuple[str, int, int]] = []  # (node, bytes asked, bytes or -errno)
        self.problems: list[str] = []
        self._pid = 0
        self._started = threading.Event()

    def started(self, pid: int) -> None:
        self._pid = pid
        self._started.set()

    # -- umockdev entry points (GLib thread) --

    def ioctl(self, client: Any) -> bool:
        node, request = client.get_devnode(), client.get_request()
        self.seen.append((node, request))
        try:
            if request in VFS_IOCTLS:
                # O_NONBLOCK and close-on-exec live in the open file: set them for real
                result, err = client.execute()
                client.complete(result, err)
                return True
            if node == CHIP:
                self.reap()
                result = self._chip_ioctl(request, client.get_arg())
            elif node in self.lines:
                result = self._line_ioctl(self.lines[node], request, client.get_arg())
            else:
                raise OSError(errno.ENOTTY, "a stand-in node not handed out yet")
        except OSError as e:
            client.complete(-1, e.errno or errno.EIO)
        except Exception:  # a bug here: fail the child loudly instead of hanging it
            self.problems.append(traceback.format_exc())
            client.abort()
        else:
            client.complete(result, 0)
        return True

    def read(self, client: Any) -> bool:
        node, arg = client.get_devnode(), client.get_arg()
        count = len(arg.retrieve())
        try:
            line = self.lines.get(node)
            if line is None:
                raise RuntimeError(f"read() of {node}: only line-request fds are emulated")
            data = self._read(client, line, count)
        except OSError as e:
            self.reads.append((node, count, -(e.errno or errno.EIO)))
            client.complete(-1, e.errno or errno.EIO)
        except Exception:
            self.problems.append(traceback.format_exc())
            client.abort()
        else:
            self.reads.append((node, count, len(data)))
            arg.update(0, list(data))
            client.complete(len(data), 0)
        return True

    # -- the chip fd --

    def _chip_ioctl(self, request: int, arg: Any) -> int:
        if request == CHIPINFO:
            info = self.chip.get_chip_info()
            arg.resolve(0, 68).update(0, list(struct.pack(
                "=32s32sI", info["name"].encode(), info["label"].encode(), info["lines"])))
            return 0
        if request == LINEINFO:
            return self._line_info(arg.resolve(0, 256))
        if request == GET_LINE:
            return self._request(arg.resolve(0, 592))
        raise OSError(errno.ENOTTY, "not a gpiochip ioctl")

    def _line_info(self, data: Any) -> int:
        raw = bytes(data.retrieve())
        (offset,) = struct.unpack_from("=I", raw, 64)
        if any(raw[240:256]):
            raise OSError(errno.EINVAL, "padding")
        info = self.chip.get_line_info(offset)
        attrs = b""
        if info["debounce_period_us"]:  # gpio_v2_line_attribute {id, padding, u32 debounce}
            attrs = struct.pack("=III4x", 3, 0, info["debounce_period_us"])
        out = struct.pack("=32s32sIIQ", info["name"].encode(), info["consumer"].encode(),
                          offset, len(attrs) // 16, info["flags"])
        data.update(0, list(out + attrs.ljust(16 * NUM_ATTRS_MAX, b"\0") + bytes(16)))
        return 0

    def _request(self, data: Any) -> int:
        raw = bytes(data.retrieve())
        offsets = struct.unpack_from(f"={LINES_MAX}I", raw, 0)
        consumer = raw[256:288].split(b"\0", 1)[0].decode()
        flags, attrs = _config(raw, 288)
        num_lines, buffer_size = struct.unpack_from("=II", raw, 560)
        if not 1 <= num_lines <= LINES_MAX or any(raw[568:588]):
            raise OSError(errno.EINVAL, "num_lines or padding")
        if not self.free:
            raise RuntimeError("out of stand-in nodes: the child must open more")
        model = self.chip.do_request(list(offsets[:num_lines]), consumer, flags, attrs,
                                     buffer_size)
        node = self.free.pop(0)
        fd, rdev = self._fd_in_child(node)
        # linereq_create(): 16 events per line by default, at most 16 * GPIO_V2_LINES_MAX,
        # and kfifo_alloc() rounds up to a power of two
        size = 1 << (min(buffer_size or 16 * num_lines, 16 * LINES_MAX) - 1).bit_length()
        line = LineFd(node, fd, rdev, model, self.testbed.get_dev_fd(node), deque(maxlen=size),
                      buffer_size)
        model.attach(lambda _topic, payload: self._queue(line, payload))
        self.lines[node] = line
        self.requests.append(line)
        data.update(588, list(struct.pack("=i", fd)))
        return 0

    # -- a line-request fd --

    def _line_ioctl(self, line: LineFd, request: int, arg: Any) -> int:
        if request == GET_VALUES:
            data = arg.resolve(0, 16)
            _, mask = struct.unpack("=QQ", bytes(data.retrieve()))
            data.update(0, list(struct.pack("=QQ", line.model.do_get(mask), mask)))
            return 0
        if request == SET_VALUES:
            bits, mask = struct.unpack("=QQ", bytes(arg.resolve(0, 16).retrieve()))
            line.model.do_set(bits, mask)
            return 0
        if request == SET_CONFIG:
            flags, attrs = _config(bytes(arg.resolve(0, 272).retrieve()), 0)
            line.model.do_config(flags, attrs)
            return 0
        raise OSError(errno.ENOTTY, "not a line-request ioctl")

    def _queue(self, line: LineFd, payload: list[int]) -> None:
        """An edge event from the model: into the kfifo (a full one drops its oldest)."""
        line.fifo.append(struct.pack("=QIIII24x", *payload))
        line.sent.append(list(payload))
        if not line.armed:
            os.write(line.master, b"!")
            line.armed = True

    def _read(self, client: Any, line: LineFd, count: int) -> bytes:
        """linereq_read(): whole records only; EAGAIN when empty and O_NONBLOCK."""
        if count < EVENT_SIZE:
            raise OSError(errno.EINVAL, "read smaller than an event")
        if not line.fifo:
            if self._nonblocking(line):
                raise OSError(errno.EAGAIN, "no event")
            raise RuntimeError("a blocking read with no event would wait in the kernel; "
                               "the posix backend only reads non-blocking")
        out = b"".join(line.fifo.popleft() for _ in range(min(count // EVENT_SIZE,
                                                               len(line.fifo))))
        if not line.fifo and line.armed:
            client.execute()  # consume the wake byte: poll() blocks again, as on an empty fifo
            line.armed = False
        return out

    # -- the child's open files --

    def _proc(self, what: str) -> str:
        if not self._started.wait(30):
            raise RuntimeError("child pid never set")
        return f"/proc/{self._pid}/{what}"

    def _fd_in_child(self, node: str) -> tuple[int, int]:
        rdev = os.stat(self.root + node).st_rdev  # the pty behind the stand-in node
        for name in os.listdir(self._proc("fd")):
            with contextlib.suppress(FileNotFoundError):  # closed while we looked
                st = os.stat(self._proc(f"fd/{name}"))
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev:
                    return int(name), rdev
        raise RuntimeError(f"the child has not opened {node}")

    def _nonblocking(self, line: LineFd) -> bool:
        with open(self._proc(f"fdinfo/{line.fd}")) as f:
            flags = next(int(x.split()[1], 8) for x in f if x.startswith("flags:"))
        return bool(flags & os.O_NONBLOCK)

    def reap(self) -> None:
        """Release the requests whose fd the child has closed (the kernel does on release)."""
        for node, line in list(self.lines.items()):
            try:
                still = os.stat(self._proc(f"fd/{line.fd}")).st_rdev == line.rdev
            except FileNotFoundError:
                still = False
            if not still:
                del self.lines[node]
                line.model.close()


def _config(raw: bytes, base: int) -> tuple[int, list[tuple[int, int, int]]]:
    """struct gpio_v2_line_config at ``base``, checked as gpio_v2_line_config_validate()."""
    flags, num_attrs = struct.unpack_from("=QI", raw, base)
    if num_attrs > NUM_ATTRS_MAX or any(raw[base + 12:base + 32]):
        raise OSError(errno.EINVAL, "num_attrs or padding")
    attrs = []
    for i in range(num_attrs):
        o = base + 32 + 24 * i  # {gpio_v2_line_attribute {id, padding, union}, u64 mask}
        (aid,) = struct.unpack_from("=I", raw, o)
        (value,) = struct.unpack_from("=I" if aid == 3 else "=Q", raw, o + 8)
        (mask,) = struct.unpack_from("=Q", raw, o + 16)
        attrs.append((aid, value, mask))
    return flags, attrs


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
