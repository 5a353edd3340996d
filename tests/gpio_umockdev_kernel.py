"""The emulated kernel side of the GPIO kernel-interface tier (tests/test_umockdev_gpio.py):
what gpiolib-cdev would answer on a /dev/gpiochip0 that umockdev emulates. A plain module, not
collected by pytest.

umockdev's preload library diverts the child's open(), ioctl() and read() of emulated nodes
to the test process (UMockdev.IoctlBase "handle-ioctl" and "handle-read"). GpioKernel below
answers them like gpiolib-cdev: it decodes every uapi struct of <linux/gpio.h> on its own
(struct module: gpiochip_info, gpio_v2_line_info, gpio_v2_line_request and its
gpio_v2_line_config, gpio_v2_line_values, 48-byte gpio_v2_line_event records) and takes the
behaviour (EBUSY, EINVAL, EPERM, wired lines, active-low, edge events and their numbering)
from a fresh sim chip model.

The fd of a line request. GPIO_V2_GET_LINE_IOCTL creates a new file (an anonymous inode) and
returns its number in gpio_v2_line_request.fd; umockdev cannot create a file in the child.
So the child opens a few stand-in nodes (/dev/gpio-linereqN, attached to the same handler)
before it starts, and the emulated ioctl hands one of them out: it finds that node's fd
number in /proc/<child>/fd (same st_rdev) and writes it into .fd. Every later ioctl and
read() on that fd reaches the handler through the stand-in's own umockdev connection, told
apart from the chip by its node. Closing the fd releases the request, as in the kernel: the
handler sees the fd gone from /proc/<child>/fd before its next chip ioctl. bridge/posix_gpio
needs no seam for this.

Edge events. Every node umockdev emulates is a pty whose master the test process holds
(Testbed.get_dev_fd), and umockdev forwards read() but not poll(). The handler keeps the
request's kfifo; while it holds events, one byte waits in the pty, so the posix reader's
poll() wakes exactly as on a line-request fd with events. Its read() is answered from the
kfifo with whole 48-byte records (EAGAIN when empty on a non-blocking fd, as the kernel),
and the read that empties the kfifo also consumes the wake byte (IoctlClient.execute runs
the real read on the pty). The fd's O_NONBLOCK is real too: FIONBIO and the other VFS-level
ioctls run on the real fd, and the handler reads the flag from /proc/<child>/fdinfo.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bridge.sim import gpio as sim_gpio

from bridge.gpiohost import LineRequestHandle
from bridge.manifest import DeviceSpec


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
LINE_NODES = [f"/dev/gpio-linereq{i}" for i in range(4)]  # the test's OPS makes 3 requests


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
