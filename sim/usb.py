# The simulated USB device of the lab (usb0): a full-speed vendor-class loopback device that
# answers chapter 9 standard requests like real firmware, behind the same libusb/usbfs
# semantics the posix backend gives (claims, stalls as EPIPE, timeouts as ETIMEDOUT, a
# too-small IN buffer as EOVERFLOW). Descriptor bytes follow the USB 2.0 spec layouts.
# Time comes from the sim clock. Must not know about the wire or about pyusb.
from __future__ import annotations

import errno
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from bridge.backend import DeviceHandle
from bridge.manifest import DeviceSpec
from bridge.timeout import Deadline
from bridge.usbhost import (
    CLEAR_FEATURE,
    DT_CONFIG,
    DT_DEVICE,
    DT_INTERFACE,
    DT_STRING,
    ENDPOINT_HALT,
    GET_CONFIGURATION,
    GET_DESCRIPTOR,
    GET_INTERFACE,
    GET_STATUS,
    SET_CONFIGURATION,
    SET_FEATURE,
    SET_INTERFACE,
    Transfer,
    USBHandle,
    string_descriptor,
)

from .clock import clock

VENDOR_STORE = 0x01  # vendor request: OUT stores the data stage, IN returns it
STORE_MAX = 4096  # bytes the vendor request keeps; a longer OUT stage stalls
FIFO_MAX = 64 * 1024  # bytes the loopback holds before bulk OUT NAKs (blocks)
MAX_PACKET = 64  # full speed bulk
LANGID_EN_US = 0x0409
LIBUSB_SPEED_FULL = 2

BULK_OUT, BULK_IN, INTR_IN = 0x01, 0x81, 0x82
# endpoint address -> (transfer type, wMaxPacketSize, bInterval)
ENDPOINTS = {BULK_OUT: (Transfer.BULK, MAX_PACKET, 0), BULK_IN: (Transfer.BULK, MAX_PACKET, 0),
             INTR_IN: (Transfer.INTERRUPT, 8, 10)}
STRINGS = {1: "manufacturer", 2: "product", 3: "serial", 4: "interface"}


class Stall(OSError):
    """The device answered with a STALL handshake (usbfs: EPIPE)."""

    def __init__(self, why: str) -> None:
        super().__init__(errno.EPIPE, f"stall: {why}")


def device_descriptor(vid: int, pid: int) -> bytes:
    """USB 2.0 table 9-8: 18 bytes, little endian."""
    return struct.pack("<BBHBBBBHHHBBBB", 18, DT_DEVICE, 0x0200, 0x00, 0x00, 0x00, 64,
                       vid, pid, 0x0100, 1, 2, 3, 1)


def config_descriptor() -> bytes:
    """USB 2.0 tables 9-10, 9-12, 9-13: configuration 1, interface 0, three endpoints."""
    eps = b"".join(struct.pack("<BBBBHB", 7, 5, addr, kind.value, size, interval)
                   for addr, (kind, size, interval) in ENDPOINTS.items())
    intf = struct.pack("<BBBBBBBBB", 9, DT_INTERFACE, 0, 0, len(ENDPOINTS), 0xFF, 0, 0, 4)
    total = 9 + len(intf) + len(eps)
    # bmAttributes: bit 7 reserved (set), bus powered, no remote wakeup; bMaxPower 50 = 100 mA
    return struct.pack("<BBHBBBBB", 9, DT_CONFIG, total, 1, 1, 0, 0x80, 50) + intf + eps


@dataclass
class LoopbackDevice:
    """The device itself, shared by every handle opened on it (as a real device is)."""

    strings: dict[int, str]
    device: bytes
    config: bytes = field(default_factory=config_descriptor)
    configuration: int = 1  # Linux configures a device when it enumerates
    altsetting: int = 0
    halted: set[int] = field(default_factory=set)
    fifo: bytearray = field(default_factory=bytearray)
    stored: bytes = b""
    claims: dict[int, object] = field(default_factory=dict)  # interface -> owning handle
    cv: threading.Condition = field(default_factory=lambda: threading.Condition(threading.Lock()))

    def firmware_reset(self) -> None:
        self.halted.clear()
        self.fifo.clear()
        self.stored = b""
        self.altsetting = 0
        self.cv.notify_all()

    # -- endpoint 0 -----------------------------------------------------------------------

    def setup(self, rtype: int, req: int, value: int, index: int,
              data: bytes | int) -> bytes | int:
        """Handle one SETUP packet and its data stage; Stall when firmware would stall."""
        kind, recipient = rtype >> 5 & 3, rtype & 0x1F
        if kind == 2 and req == VENDOR_STORE and (recipient == 0 or
                                                  (recipient == 1 and index & 0xFF == 0)):
            if isinstance(data, int):
                return self.stored[:data]
            if len(data) > STORE_MAX:
                raise Stall(f"vendor request 0x01 stores at most {STORE_MAX} bytes")
            self.stored = data
            return len(data)
        if kind != 0:
            raise Stall(f"unsupported {('standard', 'class', 'vendor', 'reserved')[kind]} "
                        f"request 0x{req:02X}")
        return self._standard(recipient, req, value, index, data)

    def _standard(self, recipient: int, req: int, value: int, index: int,
                  data: bytes | int) -> bytes | int:
        into = isinstance(data, int)
        if req == GET_DESCRIPTOR and into and recipient == 0:
            return self._descriptor(value >> 8, value & 0xFF)[:int(data)]
        if req == GET_STATUS and into:
            if recipient == 0:
                return b"\x00\x00"[:int(data)]  # bus powered, no remote wakeup
            if recipient == 1 and self._interface_ok(index):
                return b"\x00\x00"[:int(data)]
            if recipient == 2 and self._endpoint_ok(index & 0xFF):
                return bytes([index & 0xFF in self.halted, 0])[:int(data)]
        if req == GET_CONFIGURATION and into and recipient == 0:
            return bytes([self.configuration])[:int(data)]
        if req == GET_INTERFACE and into and recipient == 1 and self._interface_ok(index):
            return bytes([self.altsetting])[:int(data)]
        if not into and data == b"":
            if req == SET_CONFIGURATION and recipient == 0 and value in (0, 1):
                self.configuration = value
                self.firmware_reset()
                return 0
            if req == SET_INTERFACE and recipient == 1 and self._interface_ok(index) and \
                    value == 0:
                self.altsetting = 0
                self.halted.clear()
                return 0
            if req in (CLEAR_FEATURE, SET_FEATURE) and recipient == 2 and \
                    value == ENDPOINT_HALT and self._endpoint_ok(index & 0xFF):
                (self.halted.add if req == SET_FEATURE else self.halted.discard)(index & 0xFF)
                return 0
        raise Stall(f"standard request 0x{req:02X} (recipient {recipient}, wValue 0x{value:04X}, "
                    f"wIndex 0x{index:04X}) is not supported")

    def _descriptor(self, kind: int, index: int) -> bytes:
        if kind == DT_DEVICE and index == 0:
            return self.device
        if kind == DT_CONFIG and index == 0:
            return self.config
        if kind == DT_STRING and index == 0:
            return struct.pack("<BBH", 4, DT_STRING, LANGID_EN_US)
        if kind == DT_STRING and index in self.strings:
            return string_descriptor(self.strings[index])
        raise Stall(f"no descriptor of type {kind} index {index}")  # incl. device qualifier

    def _interface_ok(self, index: int) -> bool:
        return self.configuration == 1 and index == 0

    def _endpoint_ok(self, ep: int) -> bool:
        return ep == 0 or (self.configuration == 1 and ep in ENDPOINTS)

    # -- data endpoints -------------------------------------------------------------------

    def bulk_in(self, n: int) -> bytes:
        """Packets from the FIFO, as a host with an ``n``-byte buffer receives them.

        The device ends a transfer with a short packet, or a zero-length one when its data
        ends on a packet boundary; a packet larger than the room left is an overflow."""
        avail = len(self.fifo)
        full = min(n // MAX_PACKET * MAX_PACKET, avail)  # whole packets that fit
        take = full
        if full < avail and full < n:  # one more packet, into the room that is left
            take = full + min(MAX_PACKET, avail - full)
            if take > n:
                del self.fifo[:take]
                self.cv.notify_all()
                raise OSError(errno.EOVERFLOW, f"the device sent a {take - full}-byte packet "
                                               f"into {n - full} bytes of room")
        got = bytes(self.fifo[:take])
        del self.fifo[:take]
        self.cv.notify_all()
        return got

    def status_report(self) -> bytes:
        """Interrupt IN 0x82: bytes waiting on bulk IN and bytes stored, u32 LE each."""
        return struct.pack("<II", len(self.fifo), len(self.stored))


_DEVICES: dict[str, LoopbackDevice] = {}
_DEVICES_LOCK = threading.Lock()


def _option(spec: DeviceSpec, key: str, default: Any, kind: type) -> Any:
    v = spec.options.get(key, default)
    if type(v) is not kind:
        raise ValueError(f"device {spec.name}: option {key} must be a {kind.__name__}")
    return v


def _device_for(spec: DeviceSpec) -> LoopbackDevice:
    with _DEVICES_LOCK:
        dev = _DEVICES.get(spec.name)
        if dev is None:
            vid, pid = _option(spec, "vid", 0x1209, int), _option(spec, "pid", 0x0001, int)
            if not (0 <= vid <= 0xFFFF and 0 <= pid <= 0xFFFF):
                raise ValueError(f"device {spec.name}: vid and pid are 16-bit numbers")
            strings = {1: _option(spec, "manufacturer", "hwbridge", str),
                       2: _option(spec, "product", "sim-loopback", str),
                       3: _option(spec, "serial", "HWB-SIM-0001", str),
                       4: "loopback"}
            dev = _DEVICES[spec.name] = LoopbackDevice(strings, device_descriptor(vid, pid))
        return dev


class SimUSBHandle(USBHandle):
    """One open handle on a simulated device: its own interface claims, a shared device."""
    INLINE_ALL = True  # an in-process model: nothing here waits

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec)
        self.dev = _device_for(spec)

    def _check(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "handle is closed")

    def location(self) -> dict[str, Any]:
        return {"bus": 1, "address": 2, "port_numbers": [1], "speed": LIBUSB_SPEED_FULL}

    def control(self, request_type: int, request: int, value: int, index: int,
                data_or_length: bytes | int, deadline: Deadline) -> bytes | int:
        with self.dev.cv:
            self._check()
            if request_type & 0x1F == 1 and request_type >> 5 & 3 == 0:
                self._claimable(index & 0xFF)  # usbfs claims the recipient interface
            return self.dev.setup(request_type, request, value, index, data_or_length)

    def transfer(self, kind: Transfer, ep: int, data_or_length: bytes | int,
                 deadline: Deadline) -> bytes | int:
        dev = self.dev
        end: float | None = -1.0  # set on the first wait, in sim clock time
        sent = 0  # an OUT transfer's bytes already accepted (whole packets)
        with dev.cv:
            while True:
                self._check()
                if dev.configuration != 1 or ENDPOINTS.get(ep, (None,))[0] is not kind:
                    raise OSError(errno.EIO, f"no {kind.name.lower()} endpoint 0x{ep:02X} "
                                             "in the active configuration")
                self._claimable(0)
                if ep in dev.halted:
                    raise OSError(errno.EPIPE, f"endpoint 0x{ep:02X} is halted")
                if isinstance(data_or_length, bytes):
                    if deadline.probe and len(dev.fifo) + len(data_or_length) > FIFO_MAX:
                        deadline.expire(f"transfer on 0x{ep:02X}")  # all or nothing inline
                    sent += self._accept(data_or_length[sent:])
                    if sent == len(data_or_length):
                        return sent
                else:
                    got = self._send(ep, data_or_length)
                    if got is not None:
                        return got
                    if deadline.probe:
                        deadline.expire(f"transfer on 0x{ep:02X}")
                now = clock.now()
                if end == -1.0:
                    left = deadline.remaining()
                    end = None if left is None else now + left
                if end is not None and now >= end:
                    if sent:
                        return sent  # libusb reports a partial transfer, not the timeout
                    raise TimeoutError(errno.ETIMEDOUT, f"transfer on endpoint 0x{ep:02X} "
                                                        f"timed out after {deadline.timeout} s")
                dev.cv.wait(0.05 if clock.manual or end is None else min(0.05, end - now))

    def _send(self, ep: int, n: int) -> bytes | None:
        """What an IN endpoint sends a host with ``n`` bytes of room; None while it NAKs."""
        dev = self.dev
        if ep == INTR_IN:
            report = dev.status_report()
            if n < len(report):
                raise OSError(errno.EOVERFLOW, f"the device sent an {len(report)}-byte report "
                                               f"into {n} bytes of room")
            return report
        if n and not dev.fifo:
            return None
        return dev.bulk_in(n)

    def _accept(self, data: bytes) -> int:
        """Take the whole packets of ``data`` that fit in the loopback FIFO."""
        dev = self.dev
        room = FIFO_MAX - len(dev.fifo)
        take = len(data) if len(data) <= room else room - room % MAX_PACKET
        dev.fifo += data[:take]
        if take:
            dev.cv.notify_all()
        return take

    def _claimable(self, number: int) -> None:
        owner = self.dev.claims.get(number)
        if owner is not None and owner is not self:
            raise OSError(errno.EBUSY, f"interface {number} is claimed by another handle")

    def get_configuration(self) -> int:
        with self.dev.cv:
            self._check()
            return self.dev.configuration

    def set_configuration(self, value: int) -> None:
        with self.dev.cv:
            self._check()
            if any(owner is not self for owner in self.dev.claims.values()):
                raise OSError(errno.EBUSY, "another handle has claimed an interface")
            self.dev.setup(0x00, SET_CONFIGURATION, value, 0, b"")

    def claim_interface(self, number: int) -> None:
        with self.dev.cv:
            self._check()
            if not self.dev._interface_ok(number):
                raise OSError(errno.ENOENT, f"no interface {number} in the active configuration")
            self._claimable(number)
            self.dev.claims[number] = self

    def release_interface(self, number: int) -> None:
        with self.dev.cv:
            self._check()
            if self.dev.claims.get(number) is not self:
                raise OSError(errno.ENOENT, f"interface {number} is not claimed by this handle")
            del self.dev.claims[number]

    def set_altsetting(self, number: int, alt: int) -> None:
        with self.dev.cv:
            self._check()
            if self.dev.claims.get(number) is not self or alt != 0:
                raise OSError(errno.ENOENT, f"interface {number} is not claimed or has no "
                                            f"alternate setting {alt}")
            self.dev.setup(0x01, SET_INTERFACE, alt, number, b"")

    def clear_halt(self, ep: int) -> None:
        with self.dev.cv:
            self._check()
            if not self.dev._endpoint_ok(ep):
                raise OSError(errno.ENOENT, f"no endpoint 0x{ep:02X}")
            self.dev.halted.discard(ep)

    def reset(self) -> None:
        with self.dev.cv:
            self._check()
            self.dev.firmware_reset()  # the kernel restores configuration and claims after

    def close(self) -> None:
        with self.dev.cv:
            if not self.closed:
                for number in [n for n, h in self.dev.claims.items() if h is self]:
                    del self.dev.claims[number]
                self.closed = True
                self.dev.cv.notify_all()


def _open(spec: DeviceSpec) -> DeviceHandle:
    return SimUSBHandle(spec)


MODELS = {"usb-loopback": _open}

LAB = {
    "usb0": {"kind": "usb", "sim": "usb-loopback",
             "description": "USB loopback: VID 0x1209 PID 0x0001, bulk 0x01 -> 0x81, "
                            "vendor request 0x01 stores/returns data"},
}

__all__ = ["LoopbackDevice", "MODELS", "LAB", "SimUSBHandle", "Stall", "config_descriptor",
           "device_descriptor"]
