# Kind "usb" on the posix backend: a real USB device served through pyusb's libusb-1.0
# backend, selected by the manifest's `vid`, `pid` and optional `serial`. Owns device
# selection, the libusb handle's lifetime, timeouts in libusb milliseconds and libusb's
# exceptions turned into OSError with libusb's errno. Must not know about the wire or the
# session (the operation table and argument checks live in bridge/usbhost.py).
from __future__ import annotations

import array
import ctypes
import errno
import math
import os
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from .backend import Access, DeviceHandle
from .manifest import DeviceSpec
from .timeout import Deadline
from .usbhost import DIR_IN, DT_STRING, GET_DESCRIPTOR, Transfer, USBHandle

if TYPE_CHECKING:
    from collections.abc import Callable

    from .posix import PosixBackend

# A waiting transfer wakes this often to notice that its handle was closed under it.
WAIT_SLICE = 0.25
# libusb_error values (libusb.h) and the errno libusb's Linux backend derives each from.
LIBUSB_ERROR_TIMEOUT = -7
_LIBUSB_ERRNO = {-1: errno.EIO, -2: errno.EINVAL, -3: errno.EACCES, -4: errno.ENODEV,
                 -5: errno.ENOENT, -6: errno.EBUSY, -7: errno.ETIMEDOUT, -8: errno.EOVERFLOW,
                 -9: errno.EPIPE, -10: errno.EINTR, -11: errno.ENOMEM, -12: errno.ENOSYS}
T = TypeVar("T")

_lib: Any = None
_lib_lock = threading.Lock()


def _libusb() -> Any:
    """pyusb's libusb-1.0 backend, created once per process."""
    global _lib
    with _lib_lock:
        if _lib is None:
            import usb.backend.libusb1

            _lib = usb.backend.libusb1.get_backend()
            if _lib is None:
                raise OSError(errno.ENODEV, "libusb-1.0 is not available on this host "
                                            "(Debian: apt-get install libusb-1.0-0)")
        return _lib


def _oserror(e: Exception) -> OSError:
    """libusb's failure as the OSError its errno names (EIO when it names none)."""
    if isinstance(e, NotImplementedError):
        return OSError(errno.ENOSYS, f"not supported by libusb on this host: {e}")
    if isinstance(e, OSError) and e.errno:
        return OSError(e.errno, e.strerror or str(e))
    return OSError(errno.EIO, str(e))


def _libusb_call(fn: Callable[..., T], *args: Any) -> T:
    import usb.core

    try:
        return fn(*args)
    except (usb.core.USBError, NotImplementedError) as e:
        raise _oserror(e) from e


def _option(spec: DeviceSpec, key: str) -> int:
    v = spec.options.get(key)
    if type(v) is not int or not 0 <= v <= 0xFFFF:
        raise ValueError(f"device {spec.name}: a usb device needs {key} = 0x0000..0xFFFF")
    return v


def _read_serial(lib: Any, dev: Any, index: int) -> str | None:
    """The device's serial number string (first LANGID), opening it briefly."""
    if not index:
        return None
    handle = _libusb_call(lib.open_device, dev)
    try:
        table = array.array("B", bytes(255))
        n = _libusb_call(lib.ctrl_transfer, handle, DIR_IN, GET_DESCRIPTOR, DT_STRING << 8,
                         0, table, 1000)
        if n < 4:
            return None
        buf = array.array("B", bytes(255))
        langid = table[2] | table[3] << 8
        n = _libusb_call(lib.ctrl_transfer, handle, DIR_IN, GET_DESCRIPTOR,
                         DT_STRING << 8 | index, langid, buf, 1000)
        return buf[2:n & 0xFE].tobytes().decode("utf-16-le", "replace")
    finally:
        lib.close_device(handle)


def select_device(spec: DeviceSpec) -> tuple[Any, Any]:
    """(libusb backend, device) for the one device matching the manifest's selection.

    ENODEV when none matches, ENOTUNIQ when several match and no serial tells them apart,
    EACCES when the serial numbers could not be read.
    """
    vid, pid = _option(spec, "vid"), _option(spec, "pid")
    serial = spec.options.get("serial")
    if serial is not None and not isinstance(serial, str):
        raise ValueError(f"device {spec.name}: serial must be a string")
    lib = _libusb()
    found = []
    for d in _libusb_call(lambda: list(lib.enumerate_devices())):
        desc = lib.get_device_descriptor(d)
        if (desc.idVendor, desc.idProduct) == (vid, pid):
            found.append(d)
    denied: OSError | None = None
    if serial is not None:
        matching = []
        for d in found:
            try:
                if _read_serial(lib, d, lib.get_device_descriptor(d).iSerialNumber) == serial:
                    matching.append(d)
            except OSError as e:
                denied = denied or e
        found = matching
    what = f"{vid:04x}:{pid:04x}" + ("" if serial is None else f" serial {serial!r}")
    if not found:
        if denied is not None:
            raise OSError(denied.errno, f"no usb device {what} could be checked: {denied}")
        raise OSError(errno.ENODEV, f"no usb device {what} is connected")
    if len(found) > 1:
        raise OSError(errno.ENOTUNIQ, f"{len(found)} usb devices match {what}: "
                                      "add serial = \"...\" to the manifest")
    return lib, found[0]


class PosixUSBHandle(USBHandle):
    """A libusb device handle. Transfers run on the session's waiting threads; the libusb
    handle is closed when the last operation using it returns."""

    def __init__(self, spec: DeviceSpec, lib: Any, dev: Any) -> None:
        super().__init__(spec)
        self.lib = lib
        self.dev = dev
        self.handle = _libusb_call(lib.open_device, dev)
        self._lock = threading.Lock()
        self._busy = 0

    def _enter(self) -> Any:
        with self._lock:
            if self.closed:
                raise OSError(errno.EBADF, "handle is closed")
            self._busy += 1
            return self.handle

    def _leave(self) -> None:
        with self._lock:
            self._busy -= 1
            last = self.closed and self._busy == 0
        if last:
            self.lib.close_device(self.handle)

    def _do(self, fn: Callable[..., T], *args: Any) -> T:
        handle = self._enter()
        try:
            return _libusb_call(fn, handle, *args)
        finally:
            self._leave()

    def location(self) -> dict[str, Any]:
        d = self.lib.get_device_descriptor(self.dev)
        ports = d.port_numbers
        return {"bus": d.bus, "address": d.address, "speed": d.speed,
                "port_numbers": list(ports) if ports else None}

    def control(self, request_type: int, request: int, value: int, index: int,
                data_or_length: bytes | int, deadline: Deadline) -> bytes | int:
        if deadline.probe:
            deadline.expire("control transfer")  # libusb calls wait: run on a thread
        buf = array.array("B", bytes(data_or_length) if isinstance(data_or_length, bytes)
                          else bytes(data_or_length))
        n: int = self._do(self.lib.ctrl_transfer, request_type, request, value, index, buf,
                          _ms(deadline.remaining()))
        return bytes(buf[:n]) if request_type & DIR_IN else n

    def transfer(self, kind: Transfer, ep: int, data_or_length: bytes | int,
                 deadline: Deadline) -> bytes | int:
        """Waited for in WAIT_SLICE steps, so a closed handle is noticed. Each step is one
        libusb transfer of what is left; a step that times out has moved whole packets only,
        which libusb counts, so the next step goes on from there and the transfer ends as it
        would in one piece: at a short packet or a full buffer (IN), when everything is sent
        (OUT), or at the deadline with what moved by then."""
        if deadline.probe:
            deadline.expire("transfer")
        read = isinstance(data_or_length, int)
        buf = array.array("B", bytes(data_or_length))  # zeros to read into, or the data
        done = 0
        while True:
            left = deadline.remaining()
            step = WAIT_SLICE if left is None else min(WAIT_SLICE, left)
            n, timed_out = self._sync_transfer(kind, ep, buf, done, _ms(step))
            done += n
            if not timed_out or (done and deadline.expired()):
                return bytes(buf[:done]) if read else done  # n may be 0: a zero-length packet
            if deadline.expired():
                raise TimeoutError(errno.ETIMEDOUT, f"transfer on endpoint 0x{ep:02X} "
                                                    f"timed out after {deadline.timeout} s")

    def _sync_transfer(self, kind: Transfer, ep: int, buf: array.array[int], offset: int,
                       timeout_ms: int) -> tuple[int, bool]:
        """One synchronous libusb transfer of ``buf[offset:]``: (bytes moved, timed out).

        pyusb's bulk_read and friends return the count both when a transfer ended and when
        it timed out after moving some bytes, so they cannot say whether to go on: this
        calls libusb's function itself (with the prototypes pyusb set up) for its result.
        """
        lib = self.lib.lib
        fn = lib.libusb_bulk_transfer if kind is Transfer.BULK else lib.libusb_interrupt_transfer
        moved = ctypes.c_int()
        address = buf.buffer_info()[0] + offset
        handle = self._enter()
        try:
            ret: int = fn(handle.handle, ep, ctypes.cast(address, ctypes.POINTER(ctypes.c_ubyte)),
                          len(buf) - offset, ctypes.byref(moved), timeout_ms)
        finally:
            self._leave()
        if ret == LIBUSB_ERROR_TIMEOUT:
            return moved.value, True
        if ret < 0:
            code = _LIBUSB_ERRNO.get(ret, errno.EIO)
            raise OSError(code, f"{os.strerror(code)} (libusb error {ret})")
        return moved.value, False

    def get_configuration(self) -> int:
        value: int = self._do(self.lib.get_configuration)
        return value

    def set_configuration(self, value: int) -> None:
        self._do(self.lib.set_configuration, value)

    def claim_interface(self, number: int) -> None:
        self._do(self.lib.claim_interface, number)

    def release_interface(self, number: int) -> None:
        self._do(self.lib.release_interface, number)

    def set_altsetting(self, number: int, alt: int) -> None:
        self._do(self.lib.set_interface_altsetting, number, alt)

    def clear_halt(self, ep: int) -> None:
        self._do(self.lib.clear_halt, ep)

    def reset(self) -> None:
        self._do(self.lib.reset_device)

    def kernel_driver_active(self, number: int) -> bool:
        return bool(self._do(self.lib.is_kernel_driver_active, number))

    def detach_kernel_driver(self, number: int) -> None:
        self._do(self.lib.detach_kernel_driver, number)

    def attach_kernel_driver(self, number: int) -> None:
        self._do(self.lib.attach_kernel_driver, number)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            idle = self._busy == 0
        if idle:
            self.lib.close_device(self.handle)


def _ms(seconds: float | None) -> int:
    """hwbridge seconds (None forever) -> libusb milliseconds (0 forever, else >= 1)."""
    if seconds is None:
        return 0
    return max(1, math.ceil(seconds * 1000))


def open_device(backend: PosixBackend, spec: DeviceSpec, access: Access) -> DeviceHandle:
    """Open the usb device the manifest selects by ``vid``, ``pid`` and ``serial``."""
    lib, dev = select_device(spec)
    return PosixUSBHandle(spec, lib, dev)
