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
ready, and USBDEVFS_DISCARDURB when a timeout fires.

The emulated kernel side lives in tests/usb_umockdev_model.py: the <linux/usbdevice_fs.h>
constants and struct decoding, the device model (`LoopbackDevice`, whose `ioctl` answers
those ioctls as the kernel would: a bulk OUT -> IN loopback FIFO, an interrupt IN endpoint,
vendor requests, strings, halts) and the helpers that build the testbed; what it does not
model is listed there. This file holds the fixtures (the testbed with two devices of the same
VID:PID, the served host, a pyusb client) and the tests.

The usbfs node of the testbed is a plain file, so poll() on it is always ready: libusb then
reaps (REAPURBNDELAY -> EAGAIN) in a loop while a transfer is in flight, where the kernel
would make it sleep until POLLOUT. Completion, timeout and cancellation behave as with the
kernel; only the waiting costs CPU.

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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import usb.core
import usb.util
from bridge.drivers.usb import get_backend

import bridge
from bridge.posix_usb import WAIT_SLICE
from bridge.testing import ServerProc, start_server

from .umockdev_common import PRELOAD, load_umockdev
from .usb_umockdev_model import (
    EP_IN,
    EP_INT,
    EP_OUT,
    FIFO_SIZE,
    INT_PACKET,
    MANUFACTURER,
    MAX_PACKET,
    PID,
    PRODUCT,
    REQ_ECHO_SETUP,
    REQ_HALT,
    REQ_QUEUE_REPORT,
    REQ_SCRATCH_IN,
    REQ_SCRATCH_OUT,
    SERIALS,
    USBDEVFS_DISCARDURB,
    USBDEVFS_GET_CAPABILITIES,
    USBDEVFS_RESET,
    USBDEVFS_SETCONFIGURATION,
    USBDEVFS_SETINTERFACE,
    VID,
    LoopbackDevice,
    config_descriptor,
    device_descriptor,
    root_hub_descriptors,
    sysfs_record,
    usbfs_handler,
)


def _load_umockdev() -> tuple[Any, Any]:
    """(GLib, UMockdev) from PyGObject, or skip with what is missing."""
    if sys.platform != "linux" or struct.calcsize("P") != 8 or os.uname().machine != "x86_64":
        pytest.skip("the usbdevfs struct layouts decoded here are x86_64 Linux ones")
    if ctypes.util.find_library("usb-1.0") is None:
        pytest.skip("libusb-1.0 not installed (Debian: libusb-1.0-0; `make test-deps` as root)")
    glib, umockdev = load_umockdev()
    return glib, umockdev


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
    assert testbed.add_from_string(sysfs_record("/devices/usb1", 1, 1, root_hub_descriptors()))
    devices: dict[str, LoopbackDevice] = {}
    handlers = []
    for port, serial in enumerate(SERIALS, 1):
        devices[serial] = LoopbackDevice(serial)
        handlers.append(usbfs_handler(UMockdev, devices[serial]))
        # the ioctl socket first, so the node is served from the moment it appears
        assert testbed.attach_ioctl(f"/dev/bus/usb/001/{port + 1:03d}", handlers[-1])
        record = sysfs_record(f"/devices/usb1/1-{port}", 1, port + 1,
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
