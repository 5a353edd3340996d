# The client side of kind "usb": a pyusb backend (usb.backend.IBackend) whose devices live
# on a remote host, so `usb.core.find(..., backend=get_backend(host))` returns a normal
# usb.core.Device, and the proxy class for one opened usb device. Owns descriptor parsing
# (raw USB 2.0 layouts into libusb-shaped objects), the descriptor cache (each device's
# descriptors and strings arrive in one reply) and the mapping of remote errors to
# pyusb's USBError/USBTimeoutError with libusb's codes. Pure Python, imports on Windows.
# Must not know about sockets or how the host reaches the device.
from __future__ import annotations

import errno
import struct
import threading
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NoReturn

import usb.backend
import usb.core

from .base import Proxy

if TYPE_CHECKING:
    from array import array

    from bridge.client import Client

# errno -> libusb error code, as libusb's own mapping (pyusb's backend_error_code).
_LIBUSB_CODE = {errno.EIO: -1, errno.EINVAL: -2, errno.EACCES: -3, errno.EPERM: -3,
                errno.ENODEV: -4, errno.ENOENT: -5, errno.EBUSY: -6, errno.ETIMEDOUT: -7,
                errno.EOVERFLOW: -8, errno.EPIPE: -9, errno.EINTR: -10, errno.ENOMEM: -11}
_NOT_SUPPORTED = (errno.ENOSYS, errno.EOPNOTSUPP)
_GET_DESCRIPTOR = 0x06


def _usb_error(e: OSError, client: Client | None) -> Exception:
    """The exception pyusb's libusb1 backend raises for the same failure."""
    if client is None or client.closed or getattr(client, "_broken", None) is not None:
        lost: Exception = usb.core.USBError(f"connection to the device host lost: {e}", -4,
                                            errno.ENODEV)
        return lost
    code = e.errno or errno.EIO
    if code in _NOT_SUPPORTED:
        return NotImplementedError(str(e))
    cls = usb.core.USBTimeoutError if code == errno.ETIMEDOUT else usb.core.USBError
    err: Exception = cls(e.strerror or str(e), _LIBUSB_CODE.get(code, -99), code)
    return err


def _seconds(timeout_ms: int) -> float | None:
    """pyusb/libusb milliseconds (0 waits forever) -> hwbridge seconds (None forever)."""
    return None if not timeout_ms else timeout_ms / 1000


# -- descriptors ---------------------------------------------------------------------------

_DEVICE = struct.Struct("<BBHBBBBHHHBBBB")
_DEVICE_FIELDS = ("bLength", "bDescriptorType", "bcdUSB", "bDeviceClass", "bDeviceSubClass",
                  "bDeviceProtocol", "bMaxPacketSize0", "idVendor", "idProduct", "bcdDevice",
                  "iManufacturer", "iProduct", "iSerialNumber", "bNumConfigurations")
_CONFIG = struct.Struct("<BBHBBBBB")
_CONFIG_FIELDS = ("bLength", "bDescriptorType", "wTotalLength", "bNumInterfaces",
                  "bConfigurationValue", "iConfiguration", "bmAttributes", "bMaxPower")
_INTERFACE = struct.Struct("<BBBBBBBBB")
_INTERFACE_FIELDS = ("bLength", "bDescriptorType", "bInterfaceNumber", "bAlternateSetting",
                     "bNumEndpoints", "bInterfaceClass", "bInterfaceSubClass",
                     "bInterfaceProtocol", "iInterface")
_ENDPOINT = struct.Struct("<BBBBHB")
_ENDPOINT_FIELDS = ("bLength", "bDescriptorType", "bEndpointAddress", "bmAttributes",
                    "wMaxPacketSize", "bInterval")


def _fields(names: tuple[str, ...], layout: struct.Struct, raw: bytes) -> SimpleNamespace:
    if len(raw) < layout.size:
        raise ValueError(f"a {layout.size}-byte descriptor arrived as {len(raw)} bytes")
    return SimpleNamespace(**dict(zip(names, layout.unpack_from(raw), strict=True)),
                           extra_descriptors=[])


def parse_device(raw: bytes, where: dict[str, Any]) -> SimpleNamespace:
    """A device descriptor (USB 2.0 table 9-8) with libusb's location fields."""
    d = _fields(_DEVICE_FIELDS, _DEVICE, raw)
    d.bus, d.address, d.speed = where.get("bus"), where.get("address"), where.get("speed")
    ports = where.get("port_numbers")
    d.port_numbers = tuple(ports) if ports else None
    d.port_number = ports[-1] if ports else None
    return d


def parse_config(raw: bytes) -> SimpleNamespace:
    """A full configuration descriptor, grouped as libusb does: ``interfaces`` is a list
    (by order of first appearance) of lists of alternate settings, each with ``endpoints``;
    unknown descriptors go to the ``extra_descriptors`` of the entity before them."""
    cfg = _fields(_CONFIG_FIELDS, _CONFIG, raw)
    cfg.interfaces = []
    numbers: list[int] = []
    intf: SimpleNamespace | None = None
    target = cfg  # where descriptors of other types go
    pos = cfg.bLength
    while pos + 2 <= min(len(raw), cfg.wTotalLength):
        length, kind = raw[pos], raw[pos + 1]
        if length < 2 or pos + length > len(raw):
            break  # a truncated tail: keep what parsed, as libusb does
        body = raw[pos:pos + length]
        if kind == 4 and length >= _INTERFACE.size:
            intf = target = _fields(_INTERFACE_FIELDS, _INTERFACE, body)
            intf.endpoints = []
            if intf.bInterfaceNumber not in numbers:
                numbers.append(intf.bInterfaceNumber)
                cfg.interfaces.append([])
            cfg.interfaces[numbers.index(intf.bInterfaceNumber)].append(intf)
        elif kind == 5 and length >= _ENDPOINT.size and intf is not None:
            target = _fields(_ENDPOINT_FIELDS, _ENDPOINT, body)
            target.bRefresh, target.bSynchAddress = (body[7], body[8]) if length >= 9 else (0, 0)
            intf.endpoints.append(target)
        else:
            target.extra_descriptors.extend(body)
        pos += length
    return cfg


class _RemoteDevice:
    """pyusb's device identification object (and its handle): one open remote handle with
    the device's descriptor bundle, parsed once."""

    def __init__(self, client: Client, name: str, handle: int, bundle: dict[str, Any]) -> None:
        self._client = weakref.ref(client)
        self.name = name
        self.handle = handle
        self.bundle = bundle
        self.raw_device: bytes = bundle["device"]
        self.raw_configs: list[bytes] = list(bundle["configs"])
        self.device = parse_device(self.raw_device, bundle)
        self.configs = [parse_config(c) for c in self.raw_configs]
        self.strings: dict[tuple[int, int], bytes] = {
            (i, lang): bytes(raw) for i, lang, raw in bundle.get("strings", [])}

    def call(self, op: str, *args: Any) -> Any:
        client = self._client()
        try:
            if client is None:
                raise ConnectionAbortedError(errno.ECONNABORTED, "the client is gone")
            return client.call(op, [self.handle, *args])
        except OSError as e:
            raise _usb_error(e, client) from e

    def cached(self, rtype: int, req: int, value: int, index: int) -> bytes | None:
        """A standard GET_DESCRIPTOR answer from the bundle, or None to ask the device."""
        if rtype != 0x80 or req != _GET_DESCRIPTOR:
            return None
        kind, i = value >> 8, value & 0xFF
        if kind == 1 and i == 0 and index == 0:
            return self.raw_device
        if kind == 2 and i < len(self.raw_configs) and index == 0:
            return self.raw_configs[i]
        if kind == 3:
            return self.strings.get((i, index))
        return None

    def __repr__(self) -> str:
        return f"<remote usb device {self.name}>"


def _open_all(client: Client, names: list[str]) -> tuple[list[_RemoteDevice], dict[str, str]]:
    """Open ``names`` and fetch their descriptors, all in one round trip when none fails."""
    found: list[_RemoteDevice] = []
    failed: dict[str, str] = {}
    pending = list(names)
    while pending:
        issued: list[tuple[str, Any, Any]] = []
        try:
            with client.batch():
                for name in pending:
                    h = client.call("open", [name])
                    issued.append((name, h, client.call("usb_descriptors", [h])))
        except OSError:
            pass  # per-device outcomes are read below
        retry: list[str] = []
        for name, h, d in issued:
            try:
                found.append(_RemoteDevice(client, name, h.result(), d.result()))
            except RuntimeError:
                retry.append(name)  # not executed: an earlier device of the batch failed
            except OSError as e:
                failed[name] = str(e)
                if h.done and not isinstance(_outcome(h), BaseException):
                    client.call("close", [h.result()])
        pending = retry
    return found, failed


def _outcome(d: Any) -> Any:
    try:
        return d.result()
    except Exception as e:
        return e


# -- the pyusb backend ---------------------------------------------------------------------


class RemoteBackend(usb.backend.IBackend):  # type: ignore[misc]
    """A pyusb backend whose devices are the usb devices of one hwbridge host.

    Devices are opened on the host when first enumerated and stay open until
    :meth:`close` or the end of the connection; their descriptors are fetched once.
    A device the host could not open (unplugged, busy) is tried again at the next
    enumeration, and its reason is kept in ``unavailable``.
    """

    def __init__(self, client: Client, devices: list[_RemoteDevice] | None = None) -> None:
        super().__init__()
        self._client = weakref.ref(client)
        self._fixed = devices is not None
        self._names: list[str] | None = None
        self._devices: dict[str, _RemoteDevice] = {d.name: d for d in devices or []}
        self.unavailable: dict[str, str] = {}
        self._lock = threading.Lock()

    def devices(self) -> list[_RemoteDevice]:
        """The remote devices as of now (one round trip the first time, or while one of
        the host's usb devices cannot be opened)."""
        with self._lock:
            client = self._client()
            if self._fixed or client is None:
                return list(self._devices.values())
            if self._names is None:
                self._names = [d.name for d in client.devices() if d.kind == "usb"]
            missing = [n for n in self._names if n not in self._devices]
            if missing:
                found, self.unavailable = _open_all(client, missing)
                self._devices.update((d.name, d) for d in found)
            return [self._devices[n] for n in self._names if n in self._devices]

    def close(self) -> None:
        """Close every handle this backend opened on the host."""
        with self._lock:
            client = self._client()
            devices, self._devices = list(self._devices.values()), {}
            self._names = None
        if client is not None and not client.closed and not self._fixed:
            for d in devices:
                client.call("close", [d.handle])

    # -- IBackend: descriptors (no I/O) --------------------------------------------------

    def enumerate_devices(self) -> Iterator[_RemoteDevice]:
        return iter(self.devices())

    def get_parent(self, dev: _RemoteDevice) -> None:
        return None

    def get_device_descriptor(self, dev: _RemoteDevice) -> SimpleNamespace:
        return dev.device

    def get_configuration_descriptor(self, dev: _RemoteDevice, config: int) -> SimpleNamespace:
        if not 0 <= config < len(dev.configs):
            raise IndexError(f"invalid configuration index {config}")
        return dev.configs[config]

    def get_interface_descriptor(self, dev: _RemoteDevice, intf: int, alt: int,
                                 config: int) -> SimpleNamespace:
        cfg = self.get_configuration_descriptor(dev, config)
        if not 0 <= intf < len(cfg.interfaces):
            raise IndexError(f"invalid interface index {intf}")
        alts = cfg.interfaces[intf]
        if not 0 <= alt < len(alts):
            raise IndexError(f"invalid alternate setting index {alt}")
        found: SimpleNamespace = alts[alt]
        return found

    def get_endpoint_descriptor(self, dev: _RemoteDevice, ep: int, intf: int, alt: int,
                                config: int) -> SimpleNamespace:
        i = self.get_interface_descriptor(dev, intf, alt, config)
        if not 0 <= ep < len(i.endpoints):
            raise IndexError(f"invalid endpoint index {ep}")
        found: SimpleNamespace = i.endpoints[ep]
        return found

    # -- IBackend: operations (one round trip each) -------------------------------------

    def open_device(self, dev: _RemoteDevice) -> _RemoteDevice:
        return dev  # the host handle is already open

    def close_device(self, dev_handle: _RemoteDevice) -> None:
        pass  # interfaces were released by pyusb; the host handle lives with the backend

    def set_configuration(self, dev_handle: _RemoteDevice, config_value: int) -> None:
        dev_handle.call("usb_set_configuration", config_value)

    def get_configuration(self, dev_handle: _RemoteDevice) -> int:
        value: int = dev_handle.call("usb_get_configuration")
        return value

    def set_interface_altsetting(self, dev_handle: _RemoteDevice, intf: int,
                                 altsetting: int) -> None:
        dev_handle.call("usb_set_altsetting", intf, altsetting)

    def claim_interface(self, dev_handle: _RemoteDevice, intf: int) -> None:
        dev_handle.call("usb_claim_interface", intf)

    def release_interface(self, dev_handle: _RemoteDevice, intf: int) -> None:
        dev_handle.call("usb_release_interface", intf)

    def bulk_write(self, dev_handle: _RemoteDevice, ep: int, intf: int, data: array[int],
                   timeout: int) -> int:
        done: int = dev_handle.call("usb_bulk_write", ep, _bytes(data), _seconds(timeout))
        return done

    def bulk_read(self, dev_handle: _RemoteDevice, ep: int, intf: int, buff: array[int],
                  timeout: int) -> int:
        got = dev_handle.call("usb_bulk_read", ep, _size(buff), _seconds(timeout))
        return _fill(buff, got)

    def intr_write(self, dev_handle: _RemoteDevice, ep: int, intf: int, data: array[int],
                   timeout: int) -> int:
        done: int = dev_handle.call("usb_intr_write", ep, _bytes(data), _seconds(timeout))
        return done

    def intr_read(self, dev_handle: _RemoteDevice, ep: int, intf: int, buff: array[int],
                  timeout: int) -> int:
        got = dev_handle.call("usb_intr_read", ep, _size(buff), _seconds(timeout))
        return _fill(buff, got)

    def iso_write(self, *args: Any) -> NoReturn:
        raise NotImplementedError("isochronous transfers are not bridged")

    def iso_read(self, *args: Any) -> NoReturn:
        raise NotImplementedError("isochronous transfers are not bridged")

    def ctrl_transfer(self, dev_handle: _RemoteDevice, bmRequestType: int, bRequest: int,
                      wValue: int, wIndex: int, data: array[int], timeout: int) -> int:
        if not bmRequestType & 0x80:
            done: int = dev_handle.call("usb_control_out", bmRequestType, bRequest, wValue,
                                        wIndex, _bytes(data), _seconds(timeout))
            return done
        got = dev_handle.cached(bmRequestType, bRequest, wValue, wIndex)
        if got is None:
            got = dev_handle.call("usb_control_in", bmRequestType, bRequest, wValue, wIndex,
                                  _size(data), _seconds(timeout))
            if bRequest == _GET_DESCRIPTOR and wValue >> 8 == 3 and bmRequestType == 0x80:
                dev_handle.strings[(wValue & 0xFF, wIndex)] = bytes(got)
        return _fill(data, got[:_size(data)])

    def clear_halt(self, dev_handle: _RemoteDevice, ep: int) -> None:
        dev_handle.call("usb_clear_halt", ep)

    def reset_device(self, dev_handle: _RemoteDevice) -> None:
        dev_handle.call("usb_reset")

    def is_kernel_driver_active(self, dev_handle: _RemoteDevice, intf: int) -> bool:
        return bool(dev_handle.call("usb_kernel_driver_active", intf))

    def detach_kernel_driver(self, dev_handle: _RemoteDevice, intf: int) -> None:
        dev_handle.call("usb_detach_kernel_driver", intf)

    def attach_kernel_driver(self, dev_handle: _RemoteDevice, intf: int) -> None:
        dev_handle.call("usb_attach_kernel_driver", intf)


def _size(buff: array[int]) -> int:
    return len(buff) * buff.itemsize


def _bytes(data: array[int]) -> bytes:
    return data.tobytes()


def _fill(buff: array[int], got: bytes) -> int:
    memoryview(buff).cast("B")[:len(got)] = got
    return len(got)


_BACKENDS: weakref.WeakKeyDictionary[Client, RemoteBackend] = weakref.WeakKeyDictionary()
_BACKENDS_LOCK = threading.Lock()


def get_backend(host: Client) -> RemoteBackend:
    """The pyusb backend for ``host``'s usb devices (one per connection, reused):
    ``usb.core.find(idVendor=..., idProduct=..., backend=get_backend(host))``."""
    with _BACKENDS_LOCK:
        backend = _BACKENDS.get(host)
        if backend is None:
            backend = _BACKENDS[host] = RemoteBackend(host)
        return backend


# -- the proxy of kind "usb" ---------------------------------------------------------------


class USBDevice(Proxy):
    """One usb device opened with ``host.open(name)``; :meth:`device` gives it to pyusb."""

    def __init__(self, client: Client, name: str, handle: Any,
                 description: dict[str, Any] | None = None) -> None:
        super().__init__(client, name, handle, description)
        self._remote: _RemoteDevice | None = None
        self._backend: RemoteBackend | None = None


    def descriptors(self) -> dict[str, Any]:
        """The raw descriptor bundle: ``device`` and ``configs`` bytes, ``strings`` as
        [index, langid, bytes], bus location (one round trip, then cached)."""
        return self._remote_device().bundle

    def backend(self) -> RemoteBackend:
        """A pyusb backend that enumerates just this device."""
        if self._backend is None:
            self._backend = RemoteBackend(self.client, [self._remote_device()])
        return self._backend

    def device(self) -> usb.core.Device:
        """This device as a normal ``usb.core.Device``."""
        return usb.core.Device(self._remote_device(), self.backend())

    def _remote_device(self) -> _RemoteDevice:
        if self._remote is None:
            try:
                bundle = self.client.call("usb_descriptors", [self.handle])
            except OSError as e:
                raise _usb_error(e, self.client) from e
            self._remote = _RemoteDevice(self.client, self.name, self.handle, bundle)
        return self._remote



__all__ = ["RemoteBackend", "USBDevice", "get_backend", "parse_config", "parse_device"]
