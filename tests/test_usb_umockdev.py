"""Kernel-interface tier of kind "usb": a real `hwbridge serve` process serves USB devices
through bridge/posix_usb.py (pyusb over the system's libusb-1.0), and this process drives
them as a client with pyusb, while umockdev stands in for the kernel's usbfs.

umockdev's preload library (LD_PRELOAD in the server process) diverts /sys and /dev into a
testbed that this process owns, and forwards every ioctl() on /dev/bus/usb/001/NNN to an
UMockdev.IoctlBase here. libusb enumerates the testbed as it would a real machine: through
udev, then sysfs (busnum, devnum, speed, and the `descriptors` attribute holding the device
descriptor followed by the configuration descriptor). It opens the node and asks for
USBDEVFS_GET_CAPABILITIES, claims interfaces with USBDEVFS_CLAIMINTERFACE, and runs every
transfer (control, bulk, interrupt; libusb's synchronous calls are asynchronous underneath)
as a URB: USBDEVFS_SUBMITURB, then USBDEVFS_REAPURBNDELAY when its poll() reports the node
ready, and USBDEVFS_DISCARDURB when a timeout fires. `LoopbackDevice.ioctl` answers those
ioctls as the kernel would, decoding the structs of <linux/usbdevice_fs.h> (x86_64 layouts)
independently with `struct`, and following and writing back the pointers inside them through
umockdev (IoctlData.resolve / update / set_ptr; a reaped URB's pointer is written into the
client's `void *` with set_ptr, and its status, actual_length and IN data go back with it).
Behind them is a small device model: chapter 9 requests and descriptors, five strings,
vendor requests, a bulk OUT -> IN loopback FIFO delivered in max-packet
packets (a transfer ends at a short packet or when its buffer is full, as on a real bus),
an interrupt IN endpoint whose reports a vendor request queues, and endpoint halts.

The usbfs node of the testbed is a plain file, so poll() on it is always ready: libusb then
reaps (REAPURBNDELAY -> EAGAIN) in a loop while a transfer is in flight, where the kernel
would make it sleep until POLLOUT. Completion, timeout and cancellation behave as with the
kernel; only the waiting costs CPU. Not modelled: isochronous URBs, hotplug (no uevents),
the blocking USBDEVFS_REAPURB (libusb does not use it), and per-file interface claims
(EBUSY for a second claimer).

Needs the Debian packages umockdev, gir1.2-umockdev-1.0, python3-gi and libusb-1.0-0 (`make
test-deps` installs them when run as root); skips with the reason otherwise.
"""

from __future__ import annotations

import ctypes.util
import errno
import os
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import usb.core
import usb.util
from bridge.drivers.usb import get_backend

import bridge
from bridge.posix_usb import WAIT_SLICE
from bridge.testing import ServerProc, start_server

from .umockdev_common import PRELOAD, load_umockdev


def _load_umockdev() -> tuple[Any, Any]:
    """(GLib, UMockdev) from PyGObject, or skip with what is missing."""
    if sys.platform != "linux" or struct.calcsize("P") != 8 or os.uname().machine != "x86_64":
        pytest.skip("the usbdevfs struct layouts decoded here are x86_64 Linux ones")
    if ctypes.util.find_library("usb-1.0") is None:
        pytest.skip("libusb-1.0 not installed (Debian: libusb-1.0-0; `make test-deps` as root)")
    glib, umockdev = load_umockdev()
    return glib, umockdev


# -- <linux/usbdevice_fs.h>, x86_64 ------------------------------------------------------

def _ioc(direction: int, nr: int, size: int) -> int:
    """_IOC(dir, 'U', nr, size) with the generic layout (dir 2 bits, size 14, type 8, nr 8)."""
    return direction << 30 | size << 16 | ord("U") << 8 | nr


_NONE, _W, _R = 0, 1, 2  # _IOC_NONE, _IOC_WRITE, _IOC_READ
USBDEVFS_SETINTERFACE = _ioc(_R, 4, 8)  # struct usbdevfs_setinterface
USBDEVFS_SETCONFIGURATION = _ioc(_R, 5, 4)  # unsigned int
USBDEVFS_GETDRIVER = _ioc(_W, 8, 260)  # struct usbdevfs_getdriver
USBDEVFS_SUBMITURB = _ioc(_R, 10, 56)  # struct usbdevfs_urb
USBDEVFS_DISCARDURB = _ioc(_NONE, 11, 0)  # the URB's address, by value
USBDEVFS_REAPURBNDELAY = _ioc(_W, 13, 8)  # void **: where to store the URB's address
USBDEVFS_CLAIMINTERFACE = _ioc(_R, 15, 4)  # unsigned int
USBDEVFS_RELEASEINTERFACE = _ioc(_R, 16, 4)
USBDEVFS_RESET = _ioc(_NONE, 20, 0)
USBDEVFS_CLEAR_HALT = _ioc(_R, 21, 4)  # unsigned int endpoint
USBDEVFS_GET_CAPABILITIES = _ioc(_R, 26, 4)  # __u32
assert USBDEVFS_SUBMITURB == 0x8038550A and USBDEVFS_REAPURBNDELAY == 0x4008550D

# struct usbdevfs_urb: type, endpoint, (2 pad), status, flags, (4 pad), buffer,
# buffer_length, actual_length, start_frame, number_of_packets, error_count, signr,
# usercontext; 56 bytes.
URB = struct.Struct("=BBxxiIxxxxQiiiiiIQ")
URB_STATUS, URB_BUFFER, URB_ACTUAL = 4, 16, 28
assert URB.size == 56
URB_TYPE_INTERRUPT, URB_TYPE_CONTROL, URB_TYPE_BULK = 1, 2, 3
SETUP = struct.Struct("<BBHHH")  # bmRequestType, bRequest, wValue, wIndex, wLength
# ZERO_PACKET | BULK_CONTINUATION | NO_PACKET_SIZE_LIM | REAP_AFTER_DISCONNECT: one URB per
# transfer, as on a current xHCI host.
CAPABILITIES = 0x01 | 0x02 | 0x04 | 0x10

# -- the device -----------------------------------------------------------------------------

VID, PID = 0x1209, 0x0003
SERIALS = ("HWB-UMOCKDEV-A", "HWB-UMOCKDEV-B")
MANUFACTURER, PRODUCT = "hwbridge tests", "umockdev loopback"
EP_OUT, EP_IN, EP_INT = 0x01, 0x81, 0x82
MAX_PACKET, INT_PACKET = 64, 8
ENDPOINTS = {EP_OUT: URB_TYPE_BULK, EP_IN: URB_TYPE_BULK, EP_INT: URB_TYPE_INTERRUPT}
FIFO_SIZE = 512  # bytes the loopback holds before it NAKs bulk OUT
# vendor requests of the model
REQ_SCRATCH_IN, REQ_SCRATCH_OUT, REQ_ECHO_SETUP, REQ_QUEUE_REPORT, REQ_HALT = 1, 2, 3, 4, 5


def device_descriptor() -> bytes:
    return struct.pack("<BBHBBBBHHHBBBB", 18, 1, 0x0200, 0, 0, 0, 64, VID, PID, 0x0107,
                       1, 2, 3, 1)


def config_descriptor() -> bytes:
    body = struct.pack("<BBBBBBBBB", 9, 4, 0, 0, 3, 0xFF, 0x00, 0x00, 4)
    body += struct.pack("<BBBBHB", 7, 5, EP_OUT, 2, MAX_PACKET, 0)
    body += struct.pack("<BBBBHB", 7, 5, EP_IN, 2, MAX_PACKET, 0)
    body += struct.pack("<BBBBHB", 7, 5, EP_INT, 3, INT_PACKET, 4)
    return struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), 1, 1, 0, 0x80, 50) + body


def string_descriptor(text: str) -> bytes:
    raw = text.encode("utf-16-le")
    return bytes([2 + len(raw), 3]) + raw


class Stall(Exception):
    """The device answers with a STALL handshake (the URB completes with -EPIPE)."""


@dataclass
class Urb:
    """One submitted URB: the client's struct (an IoctlData kept until it is reaped)."""

    data: Any
    buffer: Any
    type: int
    endpoint: int
    length: int
    out: bytes
    actual: int = 0
    status: int = 0


@dataclass
class OpenFile:
    """What usbfs keeps per open file: URBs in flight and completed ones to reap."""

    pending: list[Urb] = field(default_factory=list)
    done: deque[Urb] = field(default_factory=deque)


class LoopbackDevice:
    """The device behind one usbfs node, with what usbfs does per open file."""

    def __init__(self, serial: str) -> None:
        self.serial = serial
        self.strings = {0: bytes([4, 3, 0x09, 0x04]), 1: string_descriptor(MANUFACTURER),
                        2: string_descriptor(PRODUCT), 3: string_descriptor(serial),
                        4: string_descriptor("loopback"),
                        5: string_descriptor("asked for by index only")}
        self.fifo = bytearray()
        self.reports: deque[bytes] = deque()
        self.scratch = bytearray(b"hwbridge")
        self.halted: set[int] = set()
        self.claimed: set[int] = set()
        self.altsetting = 0
        self.files: dict[Any, OpenFile] = {}
        self.unplugged = False  # every ioctl then fails with ENODEV, as usbfs does
        self.seen: list[int] = []  # every ioctl request, in order
        self.setups: list[tuple[int, int, int, int, int]] = []

    # -- ioctls ------------------------------------------------------------------------

    def ioctl(self, client: Any) -> bool:
        request = client.get_request()
        self.seen.append(request)
        f = self.files.setdefault(client, OpenFile())
        try:
            result = self._dispatch(f, request, client.get_arg())
        except OSError as e:
            client.complete(-1, e.errno or errno.EIO)
        else:
            client.complete(result, 0)
        return True

    def open_files(self) -> list[OpenFile]:
        """The files the server holds open on this node now. (umockdev 0.17 never emits
        client-vanished; a client's `connected` turns False when its fd is closed.)"""
        return [f for c, f in list(self.files.items()) if c.get_connected()]

    def feed(self, data: bytes) -> bool:
        """More data for bulk IN, as if looped back from elsewhere (a GLib source: False)."""
        self.fifo += data
        self._progress()
        return False

    def _dispatch(self, f: OpenFile, request: int, arg: Any) -> int:
        if self.unplugged:
            raise OSError(errno.ENODEV, "device disconnected")
        if request == USBDEVFS_GET_CAPABILITIES:
            arg.resolve(0, 4).update(0, list(struct.pack("=I", CAPABILITIES)))
            return 0
        if request == USBDEVFS_SUBMITURB:
            return self._submit(f, arg)
        if request == USBDEVFS_REAPURBNDELAY:
            if not f.done:
                raise OSError(errno.EAGAIN, "no URB completed")
            urb = f.done.popleft()
            urb.data.update(URB_STATUS, list(struct.pack("=i", urb.status)))
            urb.data.update(URB_ACTUAL, list(struct.pack("=i", urb.actual)))
            arg.resolve(0, 8).set_ptr(0, urb.data)  # *(void **)arg = the URB
            return 0
        if request == USBDEVFS_DISCARDURB:
            (addr,) = struct.unpack("=Q", bytes(arg.retrieve()))
            urb = next((u for u in f.pending if u.data.client_addr == addr), None)
            if urb is None:
                raise OSError(errno.EINVAL, "URB not in flight")
            f.pending.remove(urb)
            urb.status = -errno.ENOENT  # unlinked: what it carried so far stays counted
            f.done.append(urb)
            return 0
        if request in (USBDEVFS_CLAIMINTERFACE, USBDEVFS_RELEASEINTERFACE):
            (number,) = struct.unpack("=I", bytes(arg.resolve(0, 4).retrieve()))
            if number != 0:
                raise OSError(errno.ENOENT, "no such interface")
            if request == USBDEVFS_RELEASEINTERFACE:
                if number not in self.claimed:
                    raise OSError(errno.EINVAL, "interface not claimed")
                self.claimed.discard(number)
            else:
                self.claimed.add(number)
            return 0
        if request == USBDEVFS_SETINTERFACE:
            number, alt = struct.unpack("=II", bytes(arg.resolve(0, 8).retrieve()))
            if number != 0 or alt != 0:
                raise OSError(errno.EINVAL, "no such alternate setting")
            self.altsetting = alt
            return 0
        if request == USBDEVFS_SETCONFIGURATION:
            (value,) = struct.unpack("=i", bytes(arg.resolve(0, 4).retrieve()))
            if value not in (-1, 0, 1):
                raise OSError(errno.EINVAL, "no such configuration")
            return 0
        if request == USBDEVFS_CLEAR_HALT:
            (ep,) = struct.unpack("=I", bytes(arg.resolve(0, 4).retrieve()))
            if ep not in (EP_OUT, EP_IN, EP_INT):
                raise OSError(errno.ENOENT, "no such endpoint")
            self.halted.discard(ep)
            self._progress()
            return 0
        if request == USBDEVFS_GETDRIVER:
            raise OSError(errno.ENODATA, "no driver bound")
        if request == USBDEVFS_RESET:
            return 0
        raise OSError(errno.ENOTTY, "not a usbfs ioctl this model knows")

    def _submit(self, f: OpenFile, arg: Any) -> int:
        data = arg.resolve(0, URB.size)
        kind, ep, _status, _flags, _buf, length, *_ = URB.unpack(bytes(data.retrieve()))
        if kind not in (URB_TYPE_CONTROL, URB_TYPE_BULK, URB_TYPE_INTERRUPT) or length < 0:
            raise OSError(errno.EINVAL, "unsupported URB")
        buffer = data.resolve(URB_BUFFER, length) if length else None
        payload = bytes(buffer.retrieve()) if buffer is not None else b""
        if kind == URB_TYPE_CONTROL and length < 8:
            raise OSError(errno.EINVAL, "control URB without a setup packet")
        if kind != URB_TYPE_CONTROL and ENDPOINTS.get(ep) != kind:
            raise OSError(errno.ENOENT, f"no {kind} endpoint 0x{ep:02X}")
        urb = Urb(data, buffer, kind, ep, length, payload)
        f.pending.append(urb)
        self._progress()
        return 0

    # -- the device's side of the bus ------------------------------------------------------

    def _progress(self) -> None:
        """Let every URB in flight move as far as the device lets it, in submission order."""
        moved = True
        while moved:
            moved = False
            for f in self.files.values():
                for urb in list(f.pending):
                    if self._run(urb):
                        f.pending.remove(urb)
                        f.done.append(urb)
                        moved = True

    def _run(self, urb: Urb) -> bool:
        """Advance one URB; True when it completed."""
        try:
            if urb.type == URB_TYPE_CONTROL:
                return self._control(urb)
            if urb.endpoint in self.halted:
                raise Stall
            if urb.endpoint == EP_OUT and urb.type == URB_TYPE_BULK:
                return self._bulk_out(urb)
            if urb.endpoint == EP_IN and urb.type == URB_TYPE_BULK:
                return self._bulk_in(urb)
            if urb.endpoint == EP_INT and urb.type == URB_TYPE_INTERRUPT:
                return self._interrupt_in(urb)
        except Stall:
            urb.status = -errno.EPIPE
            return True
        raise AssertionError(f"URB type {urb.type} on 0x{urb.endpoint:02X} was accepted")

    def _bulk_out(self, urb: Urb) -> bool:
        room = FIFO_SIZE - len(self.fifo)
        take = min(room, urb.length - urb.actual)
        self.fifo += urb.out[urb.actual:urb.actual + take]
        urb.actual += take
        return urb.actual == urb.length

    def _bulk_in(self, urb: Urb) -> bool:
        """Packets of MAX_PACKET from the FIFO; a short packet or a full buffer ends it."""
        while urb.actual < urb.length and self.fifo:
            n = min(MAX_PACKET, len(self.fifo), urb.length - urb.actual)
            urb.buffer.update(urb.actual, list(self.fifo[:n]))
            del self.fifo[:n]
            urb.actual += n
            if n < MAX_PACKET:
                return True
        return urb.actual == urb.length

    def _interrupt_in(self, urb: Urb) -> bool:
        if not self.reports:
            return False
        report = self.reports.popleft()[:urb.length]
        urb.buffer.update(0, list(report))
        urb.actual = len(report)
        return True

    def _control(self, urb: Urb) -> bool:
        setup = SETUP.unpack_from(urb.out)
        self.setups.append(setup)
        rtype, req, value, index, length = setup
        data = urb.out[8:8 + length]
        if rtype & 0x80:
            reply = self._control_in(rtype, req, value, index, length)[:length]
            if reply and urb.buffer is not None:
                urb.buffer.update(8, list(reply))
            urb.actual = len(reply)
        else:
            self._control_out(rtype, req, value, index, data)
            urb.actual = len(data)
        return True

    def _control_in(self, rtype: int, req: int, value: int, index: int, length: int) -> bytes:
        if rtype == 0x80 and req == 0x06:  # GET_DESCRIPTOR
            kind, i = value >> 8, value & 0xFF
            if kind == 1 and i == 0:
                return device_descriptor()
            if kind == 2 and i == 0:
                return config_descriptor()
            if kind == 3 and i in self.strings and (i == 0 or index == 0x0409):
                return self.strings[i]
            raise Stall
        if rtype == 0x80 and req == 0x00:  # GET_STATUS: self powered
            return b"\x01\x00"
        if rtype == 0x80 and req == 0x08:  # GET_CONFIGURATION
            return b"\x01"
        if rtype == 0xC0 and req == REQ_SCRATCH_IN:
            return bytes(self.scratch)
        if rtype == 0xC0 and req == REQ_ECHO_SETUP:
            return struct.pack("<HHH", value, index, length)
        raise Stall

    def _control_out(self, rtype: int, req: int, value: int, index: int, data: bytes) -> None:
        if rtype == 0x40 and req == REQ_SCRATCH_OUT:
            self.scratch = bytearray(data)
        elif rtype == 0x40 and req == REQ_QUEUE_REPORT:
            self.reports.append(bytes(data))
        elif rtype == 0x40 and req == REQ_HALT and index in (EP_OUT, EP_IN, EP_INT):
            self.halted.add(index)
        else:
            raise Stall


def _handler(UMockdev: Any, device: LoopbackDevice) -> Any:
    """An IoctlBase whose ioctls go to ``device``."""

    class Usbfs(UMockdev.IoctlBase):  # type: ignore[misc]
        def do_handle_ioctl(self, client: Any) -> bool:
            return device.ioctl(client)

    return Usbfs()


def _sysfs_record(path: str, busnum: int, devnum: int, descriptors: bytes) -> str:
    node = f"bus/usb/{busnum:03d}/{devnum:03d}"
    return (f"P: {path}\nN: {node}\nE: SUBSYSTEM=usb\nE: DEVTYPE=usb_device\nE: DRIVER=usb\n"
            f"E: BUSNUM={busnum:03d}\nE: DEVNUM={devnum:03d}\nE: DEVNAME=/dev/{node}\n"
            f"A: busnum={busnum}\\n\nA: devnum={devnum}\\n\nA: speed=480\\n\n"
            f"A: bConfigurationValue=1\\n\nH: descriptors={descriptors.hex()}\n")


def _root_hub() -> bytes:
    dev = struct.pack("<BBHBBBBHHHBBBB", 18, 1, 0x0200, 9, 0, 1, 64, 0x1D6B, 0x0002, 0x0618,
                      3, 2, 1, 1)
    body = struct.pack("<BBBBBBBBB", 9, 4, 0, 0, 1, 9, 0, 0, 0)
    body += struct.pack("<BBBBHB", 7, 5, 0x81, 3, 4, 12)
    return dev + struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), 1, 1, 0, 0xE0, 0) + body


def _manifest(**serials: str | None) -> str:
    out = []
    for name, serial in serials.items():
        out.append(f'[devices.{name}]\nkind = "usb"\nvid = 0x{VID:04x}\npid = 0x{PID:04x}\n'
                   + ("" if serial is None else f'serial = "{serial}"\n'))
    return "".join(out)


def _wait_for(what: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.02)


@dataclass
class Rig:
    """The testbed, its device models (by serial) and the environment of a served host."""

    devices: dict[str, LoopbackDevice]
    env: dict[str, str]
    server: ServerProc
    glib: Any

    def later(self, seconds: float, fn: Any, *args: Any) -> None:
        """Run fn(*args) on the thread serving the ioctls, ``seconds`` from now."""
        self.glib.timeout_add(int(seconds * 1000), fn, *args)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    GLib, UMockdev = _load_umockdev()
    testbed = UMockdev.Testbed.new()
    assert testbed.add_from_string(_sysfs_record("/devices/usb1", 1, 1, _root_hub()))
    devices: dict[str, LoopbackDevice] = {}
    handlers = []
    for port, serial in enumerate(SERIALS, 1):
        devices[serial] = LoopbackDevice(serial)
        handlers.append(_handler(UMockdev, devices[serial]))
        # the ioctl socket first, so the node is served from the moment it appears
        assert testbed.attach_ioctl(f"/dev/bus/usb/001/{port + 1:03d}", handlers[-1])
        record = _sysfs_record(f"/devices/usb1/1-{port}", 1, port + 1,
                               device_descriptor() + config_descriptor())
        assert testbed.add_from_string(record), f"umockdev could not add 1-{port}"
    loop = GLib.MainLoop()
    thread = threading.Thread(target=loop.run, daemon=True, name="umockdev-usbfs")
    thread.start()
    env = {"LD_PRELOAD": PRELOAD, "UMOCKDEV_DIR": testbed.get_root_dir()}
    server = start_server(_manifest(probe=SERIALS[1]), workdir=tmp_path_factory.mktemp("usb"),
                          env=env)
    try:
        yield Rig(devices, env, server, GLib)
    finally:
        server.stop()
        loop.quit()
        thread.join(10)


@pytest.fixture
def probe(rig: Rig) -> Iterator[Any]:
    """The device the rig's manifest selects (serial B), found through pyusb on a client.
    When the client has gone, the host must have closed every usbfs file it opened."""
    model = rig.devices[SERIALS[1]]
    open_before = len(model.open_files())
    with bridge.connect(rig.server.url) as c:
        dev = usb.core.find(idVendor=VID, idProduct=PID, backend=get_backend(c))
        assert dev is not None, get_backend(c).unavailable
        yield dev
        usb.util.dispose_resources(dev)
    _wait_for(lambda: len(model.open_files()) == open_before)


def test_found_by_vid_pid_and_serial_with_descriptors_and_strings(rig: Rig, probe: Any) -> None:
    model = rig.devices[SERIALS[1]]
    assert (probe.idVendor, probe.idProduct, probe.bcdDevice) == (VID, PID, 0x0107)
    assert (probe.bus, probe.address, probe.speed) == (1, 3, usb.util.SPEED_HIGH)
    assert probe.serial_number == SERIALS[1]
    assert (probe.manufacturer, probe.product) == (MANUFACTURER, PRODUCT)
    assert usb.util.get_langids(probe) == (0x0409,)
    intf = probe.get_active_configuration()[(0, 0)]
    assert usb.util.get_string(probe, intf.iInterface) == "loopback"
    assert [(e.bEndpointAddress, usb.util.endpoint_type(e.bmAttributes), e.wMaxPacketSize)
            for e in intf] == [(EP_OUT, usb.util.ENDPOINT_TYPE_BULK, MAX_PACKET),
                               (EP_IN, usb.util.ENDPOINT_TYPE_BULK, MAX_PACKET),
                               (EP_INT, usb.util.ENDPOINT_TYPE_INTR, INT_PACKET)]
    # the host read the descriptors and strings from the device with control URBs
    assert (0x80, 0x06, 0x0100, 0, 18) in model.setups
    assert (0x80, 0x06, 0x0303, 0x0409, 255) in model.setups
    assert USBDEVFS_GET_CAPABILITIES in model.seen
    # a string no descriptor names is not in the bundle: asked for on the device
    assert (0x80, 0x06, 0x0305, 0x0409, 254) not in model.setups
    assert usb.util.get_string(probe, 5) == "asked for by index only"
    assert (0x80, 0x06, 0x0305, 0x0409, 254) in model.setups
    # device A (same VID:PID) was opened only to read its serial number, and passed over
    assert set(rig.devices[SERIALS[0]].setups) == {(0x80, 0x06, 0x0300, 0, 255),
                                                   (0x80, 0x06, 0x0303, 0x0409, 255)}


def test_control_transfers(rig: Rig, probe: Any) -> None:
    model = rig.devices[SERIALS[1]]
    assert probe.ctrl_transfer(0x40, REQ_SCRATCH_OUT, 0, 0, b"from the client") == 15
    assert bytes(model.scratch) == b"from the client"
    assert bytes(probe.ctrl_transfer(0xC0, REQ_SCRATCH_IN, 0, 0, 64)) == b"from the client"
    assert bytes(probe.ctrl_transfer(0xC0, REQ_SCRATCH_IN, 0, 0, 4)) == b"from"
    echo = bytes(probe.ctrl_transfer(0xC0, REQ_ECHO_SETUP, 0xBEEF, 0x1234, 6))
    assert struct.unpack("<HHH", echo) == (0xBEEF, 0x1234, 6)
    assert bytes(probe.ctrl_transfer(0x80, 0x00, 0, 0, 2)) == b"\x01\x00"  # GET_STATUS


def test_bulk_out_then_in_loopback(rig: Rig, probe: Any) -> None:
    model = rig.devices[SERIALS[1]]
    data = os.urandom(200)
    assert probe.write(EP_OUT, data, timeout=2000) == 200
    assert bytes(model.fifo) == data
    # 64 + 64 + 64 + a short packet of 8 ends the transfer
    assert bytes(probe.read(EP_IN, 512, timeout=2000)) == data
    assert model.claimed == {0}  # pyusb claimed the interface on the host
    big = os.urandom(FIFO_SIZE)
    assert probe.write(EP_OUT, big, timeout=2000) == FIFO_SIZE
    assert bytes(probe.read(EP_IN, FIFO_SIZE, timeout=2000)) == big
    assert not model.fifo


def test_interrupt_in(rig: Rig, probe: Any) -> None:
    for report in (b"\x01\x02\x03\x04", b"\xaa" * INT_PACKET):
        probe.ctrl_transfer(0x40, REQ_QUEUE_REPORT, 0, 0, report)
        assert bytes(probe.read(EP_INT, INT_PACKET, timeout=2000)) == report


def test_stall_is_usberror_epipe(rig: Rig, probe: Any) -> None:
    model = rig.devices[SERIALS[1]]
    with pytest.raises(usb.core.USBError) as e:
        probe.ctrl_transfer(0xC0, 0x7E, 0, 0, 8)  # a request the device does not know
    assert e.value.errno == errno.EPIPE and not isinstance(e.value, usb.core.USBTimeoutError)
    with pytest.raises(usb.core.USBError) as e:
        probe.ctrl_transfer(0x40, 0x7E, 0, 0, b"x")
    assert e.value.errno == errno.EPIPE
    # a halted bulk endpoint stalls every transfer until CLEAR_HALT
    probe.ctrl_transfer(0x40, REQ_HALT, 0, EP_IN, b"")
    probe.write(EP_OUT, b"waiting", timeout=2000)
    with pytest.raises(usb.core.USBError) as e:
        probe.read(EP_IN, 64, timeout=2000)
    assert e.value.errno == errno.EPIPE
    assert model.halted == {EP_IN}
    probe.clear_halt(EP_IN)
    assert model.halted == set()
    assert bytes(probe.read(EP_IN, 64, timeout=2000)) == b"waiting"


def test_timeouts_are_usbtimeouterror(rig: Rig, probe: Any) -> None:
    model = rig.devices[SERIALS[1]]
    discards = model.seen.count(USBDEVFS_DISCARDURB)
    with pytest.raises(usb.core.USBTimeoutError) as e:
        probe.read(EP_IN, 64, timeout=300)
    assert e.value.errno == errno.ETIMEDOUT
    with pytest.raises(usb.core.USBTimeoutError):
        probe.read(EP_INT, INT_PACKET, timeout=300)
    # libusb gave up on the URBs with DISCARDURB and reaped them unlinked
    assert model.seen.count(USBDEVFS_DISCARDURB) >= discards + 2
    assert not any(f.pending for f in model.files.values())
    # the device still works after the cancellations
    probe.write(EP_OUT, b"after", timeout=2000)
    assert bytes(probe.read(EP_IN, 64, timeout=2000)) == b"after"


def test_timed_out_transfers_keep_their_partial_progress(rig: Rig, probe: Any) -> None:
    """A write that fills the FIFO and times out reports what the device took (as pyusb
    does locally); a read that got full packets and then nothing returns them."""
    data = os.urandom(FIFO_SIZE + 100)
    assert probe.write(EP_OUT, data, timeout=600) == FIFO_SIZE
    assert bytes(probe.read(EP_IN, FIFO_SIZE, timeout=2000)) == data[:FIFO_SIZE]
    # exactly one full packet and no short packet after it: the read ends at its timeout
    probe.write(EP_OUT, data[:MAX_PACKET], timeout=2000)
    assert bytes(probe.read(EP_IN, 4 * MAX_PACKET, timeout=600)) == data[:MAX_PACKET]


def test_a_read_ends_at_a_short_packet_not_at_the_hosts_wait_slices(rig: Rig,
                                                                    probe: Any) -> None:
    """The host waits for a transfer in WAIT_SLICE steps (to notice a handle closed under
    it); a read whose packets arrive across several steps still returns them all, as a
    local pyusb read does, ending at the short packet."""
    model = rig.devices[SERIALS[1]]
    data = os.urandom(3 * MAX_PACKET + 10)
    probe.write(EP_OUT, data[:MAX_PACKET], timeout=2000)
    rig.later(3 * WAIT_SLICE, model.feed, data[MAX_PACKET:2 * MAX_PACKET])
    rig.later(6 * WAIT_SLICE, model.feed, data[2 * MAX_PACKET:])
    assert bytes(probe.read(EP_IN, 8 * MAX_PACKET, timeout=10_000)) == data


def test_a_closed_connection_ends_a_waiting_read_and_closes_the_device(rig: Rig) -> None:
    """A read waiting forever on the host ends when its connection goes: the URB is
    discarded, and libusb closes the device node once the read has returned."""
    model = rig.devices[SERIALS[1]]
    open_before = len(model.open_files())
    errors: list[BaseException] = []
    c = bridge.connect(rig.server.url)
    try:
        dev = usb.core.find(idVendor=VID, idProduct=PID, backend=get_backend(c))

        def read_forever() -> None:
            try:
                dev.read(EP_IN, 64, timeout=0)
            except BaseException as e:  # noqa: B036 - handed to the test thread
                errors.append(e)

        reader = threading.Thread(target=read_forever)
        reader.start()
        _wait_for(lambda: any(f.pending for f in model.open_files()))
        assert len(model.open_files()) == open_before + 1
    finally:
        c.close()
    reader.join(10)
    assert not reader.is_alive() and len(errors) == 1
    assert isinstance(errors[0], usb.core.USBError)
    _wait_for(lambda: len(model.open_files()) == open_before)  # libusb_close: fd closed
    assert not any(f.pending for f in model.files.values())


def test_an_unplugged_device_is_usberror_enodev(rig: Rig, probe: Any) -> None:
    model = rig.devices[SERIALS[1]]
    probe.write(EP_OUT, b"x", timeout=2000)
    model.unplugged = True
    try:
        with pytest.raises(usb.core.USBError) as e:
            probe.read(EP_IN, 64, timeout=2000)
        assert e.value.errno == errno.ENODEV and e.value.backend_error_code == -4
    finally:
        model.unplugged = False
    assert bytes(probe.read(EP_IN, 64, timeout=2000)) == b"x"


def test_kernel_driver_and_interface_release(rig: Rig) -> None:
    model = rig.devices[SERIALS[1]]
    with bridge.connect(rig.server.url) as c:
        dev = usb.core.find(idVendor=VID, idProduct=PID, backend=get_backend(c))
        assert dev is not None
        assert dev.is_kernel_driver_active(0) is False  # USBDEVFS_GETDRIVER: ENODATA
        usb.util.claim_interface(dev, 0)
        assert model.claimed == {0}
        dev.set_interface_altsetting(0, 0)
        assert USBDEVFS_SETINTERFACE in model.seen
        dev.set_configuration(1)
        assert USBDEVFS_SETCONFIGURATION in model.seen
        dev.reset()
        assert USBDEVFS_RESET in model.seen
        usb.util.dispose_resources(dev)
        assert model.claimed == set()


def test_selection_among_devices_with_the_same_vid_pid(rig: Rig, make_server: Any) -> None:
    s = make_server(_manifest(a=SERIALS[0], either=None, absent="HWB-NOPE"), env=rig.env)
    with bridge.connect(s.url) as c:
        with pytest.raises(OSError) as e:
            c.open("either")
        assert e.value.errno == errno.ENOTUNIQ and "serial" in str(e.value)
        with pytest.raises(OSError) as e:
            c.open("absent")
        assert e.value.errno == errno.ENODEV
        backend = get_backend(c)
        found = list(usb.core.find(find_all=True, backend=backend))
        assert [(d.address, d.serial_number) for d in found] == [(2, SERIALS[0])]
        assert sorted(backend.unavailable) == ["absent", "either"]
