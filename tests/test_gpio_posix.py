"""The posix GPIO line request's event reader, fed through a real kernel pipe.

No GPIO chip can exist on this machine (its kernel lacks CONFIG_GPIOLIB, so neither gpio-sim
nor gpio-mockup). tests/test_umockdev_gpio.py runs the whole posix path through umockdev
instead: the chip ioctls, the line-request fd GPIO_V2_GET_LINE_IOCTL hands out, its ioctls,
and edge events read from it. This file covers what that does not: a pipe carries the same
48-byte struct gpio_v2_line_event records the kernel writes into a line-request fd, so events
written before the handle is attached, the reader's shutdown with the fd closed, and the
errno of an fd that is no line request run for real.
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
