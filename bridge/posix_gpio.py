# GPIO on a real /dev/gpiochipN through the kernel's character device uAPI v2
# (include/uapi/linux/gpio.h): GPIO_GET_CHIPINFO_IOCTL, GPIO_V2_GET_LINEINFO_IOCTL,
# GPIO_V2_GET_LINE_IOCTL (whose returned fd becomes a remote line-request handle), and the
# line-request ioctls. A thread per line request with edge detection reads struct
# gpio_v2_line_event records from its fd and pushes them to the client as they arrive.
# Must not know about the wire or the session; the shapes live in bridge/gpiohost.py.
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import threading
from typing import Any

from .backend import Access, EventSink
from .gpio_uapi import (
    EDGE_FLAGS,
    Attr,
    GpiochipInfo,
    LineEvent,
    LineInfo,
    LineRequest,
    LineValues,
    config_struct,
    line_flags,
)
from .gpiohost import GpioChip, LineRequestHandle
from .ioctl import BUILTIN
from .manifest import DeviceSpec
from .posix import PosixBackend, open_fd

GPIO_GET_CHIPINFO_IOCTL = BUILTIN["GPIO_GET_CHIPINFO_IOCTL"].request
GPIO_V2_GET_LINEINFO_IOCTL = BUILTIN["GPIO_V2_GET_LINEINFO_IOCTL"].request
GPIO_V2_GET_LINE_IOCTL = BUILTIN["GPIO_V2_GET_LINE_IOCTL"].request
GPIO_V2_LINE_SET_CONFIG_IOCTL = BUILTIN["GPIO_V2_LINE_SET_CONFIG_IOCTL"].request
GPIO_V2_LINE_GET_VALUES_IOCTL = BUILTIN["GPIO_V2_LINE_GET_VALUES_IOCTL"].request
GPIO_V2_LINE_SET_VALUES_IOCTL = BUILTIN["GPIO_V2_LINE_SET_VALUES_IOCTL"].request

_EVENT_SIZE = ctypes.sizeof(LineEvent)
_READ_BATCH = 16  # events read per read(2)


def _text(raw: bytes) -> str:
    return raw.decode(errors="replace")


class PosixGpioChip(GpioChip):
    """An open /dev/gpiochipN."""

    def __init__(self, spec: DeviceSpec, fd: int, access: Access) -> None:
        super().__init__(spec, access)
        self.fd = fd

    def _ioctl(self, request: int, arg: ctypes.Structure) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "handle is closed")
        fcntl.ioctl(self.fd, request, arg, True)

    def get_chip_info(self) -> dict[str, Any]:
        info = GpiochipInfo()
        self._ioctl(GPIO_GET_CHIPINFO_IOCTL, info)
        return {"name": _text(info.name), "label": _text(info.label), "lines": info.lines}

    def get_line_info(self, offset: int) -> dict[str, Any]:
        info = LineInfo()
        info.offset = offset
        self._ioctl(GPIO_V2_GET_LINEINFO_IOCTL, info)
        debounce = next((info.attrs[i].debounce_period_us for i in range(info.num_attrs)
                         if info.attrs[i].id == 3), 0)
        return {"name": _text(info.name), "consumer": _text(info.consumer),
                "offset": info.offset, "flags": info.flags, "debounce_period_us": debounce}

    def do_request(self, offsets: list[int], consumer: str, flags: int, attrs: list[Attr],
                   event_buffer_size: int) -> LineRequestHandle:
        req = LineRequest()
        for i, off in enumerate(offsets):
            req.offsets[i] = off
        req.num_lines = len(offsets)
        req.consumer = consumer.encode()
        req.config = config_struct(flags, attrs)
        req.event_buffer_size = event_buffer_size
        self._ioctl(GPIO_V2_GET_LINE_IOCTL, req)
        edges = any(line_flags(flags, attrs, i) & EDGE_FLAGS for i in range(len(offsets)))
        return PosixLineRequest(self.spec, offsets, req.fd, edges)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def describe(self) -> dict[str, Any]:
        return {"fd": self.fd}


class PosixLineRequest(LineRequestHandle):
    """The fd the kernel returned for a line request, and its event reader."""

    def __init__(self, spec: DeviceSpec, offsets: list[int], fd: int, edges: bool) -> None:
        super().__init__(spec, offsets)
        self.fd = fd
        os.set_blocking(fd, False)
        self._edges = edges
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None

    def attach(self, emit: EventSink) -> None:
        super().attach(emit)
        self._start_reader()

    def _start_reader(self) -> None:
        # Events wait in the kernel's buffer until the handle has somewhere to send them.
        if self._edges and self._thread is None and self._emit is not None:
            self._thread = threading.Thread(target=self._read_events, daemon=True,
                                            name=f"hwbridge-gpio-{self.spec.name}")
            self._thread.start()

    def _read_events(self) -> None:
        p = select.poll()
        p.register(self.fd, select.POLLIN | select.POLLPRI)
        p.register(self._wake_r, select.POLLIN)
        while not self.closed:
            ready = p.poll()
            if self.closed or any(fd == self._wake_r for fd, _ in ready):
                return
            try:
                buf = os.read(self.fd, _EVENT_SIZE * _READ_BATCH)
            except BlockingIOError:
                continue
            except OSError:  # ENODEV: the chip went away
                return
            if not buf:  # end of file: nothing will come (do not spin on the poll)
                return
            for i in range(0, len(buf) - _EVENT_SIZE + 1, _EVENT_SIZE):
                ev = LineEvent.from_buffer_copy(buf, i)
                self.push_event(ev.timestamp_ns, ev.id, ev.offset, ev.seqno, ev.line_seqno)

    def _ioctl(self, request: int, arg: ctypes.Structure) -> None:
        with self._lock:
            if self.closed:
                raise OSError(errno.EBADF, "handle is closed")
            fcntl.ioctl(self.fd, request, arg, True)

    def do_get(self, mask: int) -> int:
        v = LineValues(0, mask)
        self._ioctl(GPIO_V2_LINE_GET_VALUES_IOCTL, v)
        bits: int = v.bits
        return bits

    def do_set(self, bits: int, mask: int) -> None:
        self._ioctl(GPIO_V2_LINE_SET_VALUES_IOCTL, LineValues(bits, mask))

    def do_config(self, flags: int, attrs: list[Attr]) -> None:
        self._ioctl(GPIO_V2_LINE_SET_CONFIG_IOCTL, config_struct(flags, attrs))
        self._edges = any(line_flags(flags, attrs, i) & EDGE_FLAGS
                          for i in range(len(self.offsets)))
        self._start_reader()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        os.close(self.fd)
        os.close(self._wake_r)
        os.close(self._wake_w)


def open_device(backend: PosixBackend, spec: DeviceSpec, access: Access) -> GpioChip:
    """Open the manifest's /dev/gpiochipN (hardened: no symlinks, must be a char device)."""
    return PosixGpioChip(spec, open_fd(spec, backend.path(spec), access), access)
