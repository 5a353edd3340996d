# The host side of kind "usb": one DeviceHandle base class shared by the posix (libusb) and
# sim backends. It owns the remote operation table, argument checks, the descriptor bundle
# (every descriptor of a device in one reply, fetched once) and the mapping of USB
# timeouts to seconds. Subclasses implement a few primitives with libusb/usbfs semantics
# and errno values (ETIMEDOUT, EPIPE for a stall, ENODEV when gone, EBUSY, EACCES...).
# Must not know about the wire, the session, or pyusb's client-side objects.
from __future__ import annotations

import abc
import enum
import errno
from typing import Any

from .backend import Access, DeviceHandle, op
from .manifest import DeviceSpec
from .timeout import Deadline

# The largest single transfer one operation carries (well under the default frame limit).
MAX_TRANSFER = 4 * 1024 * 1024

# USB 2.0 spec, chapter 9: standard requests and descriptor types.
GET_STATUS, CLEAR_FEATURE, SET_FEATURE = 0x00, 0x01, 0x03
GET_DESCRIPTOR, GET_CONFIGURATION, SET_CONFIGURATION = 0x06, 0x08, 0x09
GET_INTERFACE, SET_INTERFACE = 0x0A, 0x0B
DT_DEVICE, DT_CONFIG, DT_STRING, DT_INTERFACE, DT_ENDPOINT = 1, 2, 3, 4, 5
ENDPOINT_HALT = 0
DIR_IN = 0x80

# Time allowed to each descriptor read when the bundle is built.
DESCRIPTOR_TIMEOUT = 1.0


class Transfer(enum.Enum):
    """The endpoint transfer types a remote operation can drive."""

    BULK = 2
    INTERRUPT = 3


def _u8(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v <= 0xFF:
        raise ValueError(f"{what} must be an integer 0..255, not {v!r}")
    return v


def _u16(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v <= 0xFFFF:
        raise ValueError(f"{what} must be an integer 0..65535, not {v!r}")
    return v


def _endpoint(ep: object, want_in: bool) -> int:
    ep = _u8(ep, "endpoint address")
    if ep & 0x70 or not ep & 0x0F:
        raise ValueError(f"0x{ep:02X} is not a data endpoint address")
    if bool(ep & DIR_IN) != want_in:
        raise ValueError(f"endpoint 0x{ep:02X} is an {'IN' if ep & DIR_IN else 'OUT'} "
                         f"endpoint: use {'read' if ep & DIR_IN else 'write'}")
    return ep


def _length(n: object, limit: int = MAX_TRANSFER) -> int:
    if type(n) is not int or not 0 <= n <= limit:
        raise ValueError(f"transfer length must be an integer 0..{limit}, not {n!r}")
    return n


def _data(data: object, limit: int = MAX_TRANSFER) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"transfer data must be bytes, not {type(data).__name__}")
    if len(data) > limit:
        raise ValueError(f"transfer of {len(data)} bytes is over the {limit}-byte limit")
    return bytes(data)


def string_descriptor(text: str) -> bytes:
    """A USB string descriptor (bLength, bDescriptorType=3, UTF-16LE)."""
    body = text.encode("utf-16-le")
    if len(body) > 253:
        raise ValueError(f"string {text!r} is too long for a descriptor")
    return bytes([2 + len(body), DT_STRING]) + body


def string_indexes(device: bytes, configs: list[bytes]) -> list[int]:
    """Every non-zero string index a device's descriptors refer to, in order, once each."""
    found: list[int] = []

    def add(i: int) -> None:
        if i and i not in found:
            found.append(i)

    for i in device[14:17]:
        add(i)
    for cfg in configs:
        pos = 0
        while pos + 2 <= len(cfg):
            length, kind = cfg[pos], cfg[pos + 1]
            if length < 2:
                break
            if kind == DT_CONFIG and length >= 9:
                add(cfg[pos + 6])
            elif kind == DT_INTERFACE and length >= 9:
                add(cfg[pos + 8])
            pos += length
    return found


class USBHandle(DeviceHandle):
    """An open USB device on the host: descriptors, control, bulk and interrupt transfers.

    Operations mirror libusb (and pyusb's IBackend) one to one. Transfers take a timeout in
    seconds as their last argument (None waits forever); their errors carry the errno
    libusb gives: ETIMEDOUT, EPIPE (stall), EOVERFLOW, ENODEV, EBUSY, EACCES, ENOENT.
    """

    kind = "usb"

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec)
        self._bundle: dict[str, Any] | None = None

    # -- primitives ----------------------------------------------------------------------

    @abc.abstractmethod
    def control(self, request_type: int, request: int, value: int, index: int,
                data_or_length: bytes | int, deadline: Deadline) -> bytes | int:
        """One control transfer: the bytes read (IN) or the count written (OUT)."""

    @abc.abstractmethod
    def transfer(self, kind: Transfer, ep: int, data_or_length: bytes | int,
                 deadline: Deadline) -> bytes | int:
        """One bulk or interrupt transfer: the bytes read (IN) or the count written (OUT)."""

    @abc.abstractmethod
    def get_configuration(self) -> int: ...

    @abc.abstractmethod
    def set_configuration(self, value: int) -> None: ...

    @abc.abstractmethod
    def claim_interface(self, number: int) -> None: ...

    @abc.abstractmethod
    def release_interface(self, number: int) -> None: ...

    @abc.abstractmethod
    def set_altsetting(self, number: int, alt: int) -> None: ...

    @abc.abstractmethod
    def clear_halt(self, ep: int) -> None: ...

    @abc.abstractmethod
    def reset(self) -> None: ...

    def location(self) -> dict[str, Any]:
        """bus, address, port_numbers and speed (libusb's LIBUSB_SPEED_* numbers)."""
        return {"bus": None, "address": None, "port_numbers": None, "speed": None}

    def raw_descriptors(self) -> tuple[bytes, list[bytes]]:
        """The device descriptor and each full configuration descriptor, as the device
        returns them to GET_DESCRIPTOR. Backends with a descriptor cache override this."""
        dev = self._get_descriptor(DT_DEVICE, 0, 0, 18)
        if len(dev) < 18 or dev[1] != DT_DEVICE:
            raise OSError(errno.EIO, "the device returned a malformed device descriptor")
        configs = []
        for i in range(dev[17]):
            head = self._get_descriptor(DT_CONFIG, i, 0, 9)
            if len(head) < 9 or head[1] != DT_CONFIG:
                raise OSError(errno.EIO, f"configuration {i}: malformed descriptor")
            configs.append(self._get_descriptor(DT_CONFIG, i, 0, int.from_bytes(head[2:4],
                                                                                "little")))
        return dev, configs

    def kernel_driver_active(self, number: int) -> bool:
        return False

    def detach_kernel_driver(self, number: int) -> None:
        raise OSError(errno.ENOENT, f"no kernel driver is bound to interface {number}")

    def attach_kernel_driver(self, number: int) -> None:
        raise OSError(errno.ENOENT, f"no kernel driver to attach to interface {number}")

    def _get_descriptor(self, kind: int, index: int, langid: int, length: int) -> bytes:
        got = self.control(DIR_IN, GET_DESCRIPTOR, kind << 8 | index, langid, length,
                           Deadline(DESCRIPTOR_TIMEOUT))
        assert isinstance(got, bytes)
        return got

    # -- remote operations ---------------------------------------------------------------

    @op("usb_descriptors", Access.NONE)
    def descriptors(self) -> dict[str, Any]:
        """Everything pyusb reads without I/O, in one reply: the device descriptor, each full
        configuration descriptor, the LANGID table and every string the descriptors name
        (first LANGID), and where the device sits on its bus. Built once per handle."""
        if self._bundle is None:
            dev, configs = self.raw_descriptors()
            strings: list[list[Any]] = []
            try:
                table = self._get_descriptor(DT_STRING, 0, 0, 255)
            except OSError:
                table = b""  # a device with no strings stalls string 0
            if len(table) >= 4:
                strings.append([0, 0, table])
                langid = int.from_bytes(table[2:4], "little")
                for i in string_indexes(dev, configs):
                    try:
                        strings.append([i, langid, self._get_descriptor(DT_STRING, i,
                                                                        langid, 255)])
                    except OSError:
                        continue  # left for the client to ask again (and fail) itself
            self._bundle = {"device": dev, "configs": configs, "strings": strings,
                            **self.location()}
        return self._bundle

    @op("usb_control_in", Access.READ, blocking=True)
    def control_in(self, request_type: int, request: int, value: int, index: int,
                   length: int, deadline: Deadline) -> bytes:
        """A control transfer with an IN data stage of up to ``length`` bytes."""
        if not _u8(request_type, "bmRequestType") & DIR_IN:
            raise ValueError("usb_control_in needs an IN bmRequestType (bit 7 set)")
        got = self.control(request_type, _u8(request, "bRequest"), _u16(value, "wValue"),
                           _u16(index, "wIndex"), _length(length, 0xFFFF), deadline)
        assert isinstance(got, bytes)
        return got

    @op("usb_control_out", Access.WRITE, blocking=True)
    def control_out(self, request_type: int, request: int, value: int, index: int,
                    data: bytes, deadline: Deadline) -> int:
        """A control transfer with an OUT data stage (possibly empty); the count sent."""
        if _u8(request_type, "bmRequestType") & DIR_IN:
            raise ValueError("usb_control_out needs an OUT bmRequestType (bit 7 clear)")
        done = self.control(request_type, _u8(request, "bRequest"), _u16(value, "wValue"),
                            _u16(index, "wIndex"), _data(data, 0xFFFF), deadline)
        assert isinstance(done, int)
        return done

    @op("usb_bulk_read", Access.READ, blocking=True)
    def bulk_read(self, ep: int, length: int, deadline: Deadline) -> bytes:
        return self._read(Transfer.BULK, ep, length, deadline)

    @op("usb_bulk_write", Access.WRITE, blocking=True)
    def bulk_write(self, ep: int, data: bytes, deadline: Deadline) -> int:
        return self._write(Transfer.BULK, ep, data, deadline)

    @op("usb_intr_read", Access.READ, blocking=True)
    def intr_read(self, ep: int, length: int, deadline: Deadline) -> bytes:
        return self._read(Transfer.INTERRUPT, ep, length, deadline)

    @op("usb_intr_write", Access.WRITE, blocking=True)
    def intr_write(self, ep: int, data: bytes, deadline: Deadline) -> int:
        return self._write(Transfer.INTERRUPT, ep, data, deadline)

    @op("usb_get_configuration", Access.NONE)
    def op_get_configuration(self) -> int:
        return self.get_configuration()

    @op("usb_set_configuration", Access.WRITE)
    def op_set_configuration(self, value: int) -> None:
        self.set_configuration(_u8(value, "bConfigurationValue"))

    @op("usb_claim_interface", Access.NONE)
    def op_claim_interface(self, number: int) -> None:
        self.claim_interface(_u8(number, "bInterfaceNumber"))

    @op("usb_release_interface", Access.NONE)
    def op_release_interface(self, number: int) -> None:
        self.release_interface(_u8(number, "bInterfaceNumber"))

    @op("usb_set_altsetting", Access.NONE)
    def op_set_altsetting(self, number: int, alt: int) -> None:
        self.set_altsetting(_u8(number, "bInterfaceNumber"), _u8(alt, "bAlternateSetting"))

    @op("usb_clear_halt", Access.NONE)
    def op_clear_halt(self, ep: int) -> None:
        ep = _u8(ep, "endpoint address")
        self.clear_halt(_endpoint(ep, bool(ep & DIR_IN)))

    @op("usb_reset", Access.WRITE)
    def op_reset(self) -> None:
        self.reset()

    @op("usb_kernel_driver_active", Access.NONE)
    def op_kernel_driver_active(self, number: int) -> bool:
        return self.kernel_driver_active(_u8(number, "bInterfaceNumber"))

    @op("usb_detach_kernel_driver", Access.WRITE)
    def op_detach_kernel_driver(self, number: int) -> None:
        self.detach_kernel_driver(_u8(number, "bInterfaceNumber"))

    @op("usb_attach_kernel_driver", Access.WRITE)
    def op_attach_kernel_driver(self, number: int) -> None:
        self.attach_kernel_driver(_u8(number, "bInterfaceNumber"))

    def _read(self, kind: Transfer, ep: int, length: int, deadline: Deadline) -> bytes:
        got = self.transfer(kind, _endpoint(ep, True), _length(length), deadline)
        assert isinstance(got, bytes)
        return got

    def _write(self, kind: Transfer, ep: int, data: bytes, deadline: Deadline) -> int:
        done = self.transfer(kind, _endpoint(ep, False), _data(data), deadline)
        assert isinstance(done, int)
        return done

    def describe(self) -> dict[str, Any]:
        return dict(self.location())
