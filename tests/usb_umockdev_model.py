"""The emulated kernel side of tests/test_usb_umockdev.py: what usbfs and a USB device do
behind the /dev/bus/usb/001/NNN nodes of a umockdev testbed. Not a test module.

- The ioctl numbers and struct layouts of <linux/usbdevice_fs.h> (x86_64), decoded
  independently with `struct`, not taken from libusb or the bridge.
- `LoopbackDevice`, one device with what usbfs keeps per open file. Its `ioctl` answers
  USBDEVFS_GET_CAPABILITIES, CLAIMINTERFACE / RELEASEINTERFACE, SETINTERFACE,
  SETCONFIGURATION, CLEAR_HALT, GETDRIVER (ENODATA), RESET and the URB ioctls (SUBMITURB,
  REAPURBNDELAY, DISCARDURB) as the kernel would, following and writing back the pointers
  inside the structs through umockdev (IoctlData.resolve / update / set_ptr; a reaped URB's
  pointer is written into the client's `void *` with set_ptr, and its status, actual_length
  and IN data go back with it). Behind them is a small device model: chapter 9 requests and
  descriptors, five strings, vendor requests, a bulk OUT -> IN loopback FIFO delivered in
  max-packet packets (a transfer ends at a short packet or when its buffer is full, as on a
  real bus), an interrupt IN endpoint whose reports a vendor request queues, and endpoint
  halts. Setting `unplugged` makes every ioctl fail with ENODEV.
- Testbed building helpers: the UMockdev.IoctlBase that hands a node's ioctls to a model,
  the udev/sysfs record of a device (busnum, devnum, speed, and the `descriptors` attribute
  holding the device descriptor followed by the configuration descriptor), and the root
  hub's descriptors.

Not modelled: isochronous URBs, hotplug (no uevents), the blocking USBDEVFS_REAPURB (libusb
does not use it), and per-file interface claims (EBUSY for a second claimer).
"""

from __future__ import annotations

import errno
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

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


def usbfs_handler(UMockdev: Any, device: LoopbackDevice) -> Any:
    """An IoctlBase whose ioctls go to ``device``."""

    class Usbfs(UMockdev.IoctlBase):  # type: ignore[misc]
        def do_handle_ioctl(self, client: Any) -> bool:
            return device.ioctl(client)

    return Usbfs()


def sysfs_record(path: str, busnum: int, devnum: int, descriptors: bytes) -> str:
    node = f"bus/usb/{busnum:03d}/{devnum:03d}"
    return (f"P: {path}\nN: {node}\nE: SUBSYSTEM=usb\nE: DEVTYPE=usb_device\nE: DRIVER=usb\n"
            f"E: BUSNUM={busnum:03d}\nE: DEVNUM={devnum:03d}\nE: DEVNAME=/dev/{node}\n"
            f"A: busnum={busnum}\\n\nA: devnum={devnum}\\n\nA: speed=480\\n\n"
            f"A: bConfigurationValue=1\\n\nH: descriptors={descriptors.hex()}\n")


def root_hub_descriptors() -> bytes:
    dev = struct.pack("<BBHBBBBHHHBBBB", 18, 1, 0x0200, 9, 0, 1, 64, 0x1D6B, 0x0002, 0x0618,
                      3, 2, 1, 1)
    body = struct.pack("<BBBBBBBBB", 9, 4, 0, 0, 1, 9, 0, 0, 0)
    body += struct.pack("<BBBBHB", 7, 5, 0x81, 3, 4, 12)
    return dev + struct.pack("<BBHBBBBB", 9, 2, 9 + len(body), 1, 1, 0, 0xE0, 0) + body
