"""The posix GPIO line request's event reader, fed through a real kernel pipe.

No GPIO chip can exist on this machine (its kernel lacks CONFIG_GPIOLIB, so neither gpio-sim
nor gpio-mockup; umockdev cannot stand in either: the hardened open uses the openat2
syscall directly, which its LD_PRELOAD shim never sees, and it cannot hand out the new fd
GPIO_V2_GET_LINE_IOCTL returns). A pipe carries the same 48-byte struct gpio_v2_line_event
records the kernel writes into a line-request fd, so the reader thread, its parsing and its
shutdown run for real.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import threading
from typing import Any

import pytest

from bridge.gpio_uapi import LineEvent
from bridge.manifest import DeviceSpec

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="posix GPIO is Linux-only")

SPEC = DeviceSpec(name="chip", kind="gpio", backend="posix", path="/dev/gpiochip0")


def _event(ts: int, eid: int, offset: int, seqno: int, line_seqno: int) -> bytes:
    ev = LineEvent(timestamp_ns=ts, id=eid, offset=offset, seqno=seqno, line_seqno=line_seqno)
    return bytes(ev)


def test_reader_pushes_kernel_events_in_order() -> None:
    from bridge.posix_gpio import PosixLineRequest

    r, w = os.pipe()
    req = PosixLineRequest(SPEC, [3, 4], r, edges=True)
    got: list[Any] = []
    done = threading.Event()

    def sink(topic: str, payload: Any) -> None:
        got.append((topic, payload))
        if len(got) == 3:
            done.set()

    os.write(w, _event(1000, 1, 3, 1, 1))  # buffered before attach: must not be lost
    req.attach(sink)
    os.write(w, _event(2000, 2, 4, 2, 1) + _event(3000, 1, 3, 3, 2))
    assert done.wait(5)
    assert got == [("gpio.event", [1000, 1, 3, 1, 1]), ("gpio.event", [2000, 2, 4, 2, 1]),
                   ("gpio.event", [3000, 1, 3, 3, 2])]
    req.close()
    assert req._thread is not None and not req._thread.is_alive()
    with pytest.raises(OSError) as e:
        os.fstat(r)  # the request's fd was closed with it
    assert e.value.errno == errno.EBADF
    os.close(w)


def test_no_reader_without_edges_and_ioctls_reach_the_kernel() -> None:
    from bridge.posix_gpio import PosixLineRequest

    r, w = os.pipe()
    req = PosixLineRequest(SPEC, [0], r, edges=False)
    req.attach(lambda topic, payload: None)
    assert req._thread is None
    with pytest.raises(OSError) as e:
        req.do_get(1)  # a pipe is no line request: the kernel says so
    assert e.value.errno == errno.ENOTTY
    req.close()
    req.close()  # idempotent
    with pytest.raises(OSError) as e:
        req.do_get(1)
    assert e.value.errno == errno.EBADF
    os.close(w)
    assert ctypes.sizeof(LineEvent) == 48
