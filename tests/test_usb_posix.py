# The posix usb path (bridge/posix_usb.py: pyusb over libusb-1.0) through a real server.
# Device selection runs everywhere; the real-device tier needs the kernel's dummy_hcd and a
# configfs loopback gadget, and skips with the reason where this kernel cannot give them.
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import usb.core
import usb.util
from bridge.drivers.usb import get_backend

import bridge

ABSENT = '[devices.scope]\nkind = "usb"\nvid = 0x1234\npid = 0x5678\n'


def test_no_matching_device_is_enodev(make_server: Any) -> None:
    s = make_server(ABSENT + 'serial = "NOPE"\n')
    with bridge.connect(s.url) as c:
        with pytest.raises(OSError) as e:
            c.open("scope")
        assert e.value.errno == errno.ENODEV and "scope: open" in str(e.value)
        backend = get_backend(c)
        assert usb.core.find(idVendor=0x1234, backend=backend) is None
        assert list(backend.unavailable) == ["scope"]


def test_selection_needs_vid_and_pid(make_server: Any) -> None:
    s = make_server('[devices.bad]\nkind = "usb"\nvid = "0x1234"\npid = 0x5678\n')
    with bridge.connect(s.url) as c, pytest.raises(OSError) as e:
        c.open("bad")
    assert e.value.errno == errno.EINVAL and "vid" in str(e.value)


# -- real USB device tier: dummy_hcd + a configfs Loopback gadget ------------------------

GADGETS = Path("/sys/kernel/config/usb_gadget")
VID, PID = 0x1209, 0x0002


def _run(*cmd: str) -> bool:
    return shutil.which(cmd[0]) is not None and subprocess.run(
        cmd, capture_output=True, timeout=30).returncode == 0


def _why_no_gadget() -> str | None:
    """None when a dummy UDC and configfs gadgets are usable here, else the reason."""
    if os.geteuid() != 0:
        return "loading dummy_hcd and configuring a gadget needs root"
    _run("modprobe", "dummy_hcd")
    _run("modprobe", "usb_f_ss_lb")
    if not Path("/sys/kernel/config").is_dir():
        return "this kernel has no configfs (CONFIG_CONFIGFS_FS)"
    if not GADGETS.is_dir():
        _run("mount", "-t", "configfs", "none", "/sys/kernel/config")
    if not GADGETS.is_dir():
        return "this kernel has no configfs USB gadgets (CONFIG_USB_CONFIGFS)"
    if not Path("/sys/class/udc").is_dir() or not any(
            p.name.startswith("dummy_udc") for p in Path("/sys/class/udc").iterdir()):
        return "this kernel has no dummy_hcd UDC (CONFIG_USB_DUMMY_HCD)"
    try:
        import usb.backend.libusb1

        if usb.backend.libusb1.get_backend() is None:
            return "libusb-1.0 is not installed"
    except Exception as e:  # pragma: no cover - depends on the host
        return f"libusb-1.0 cannot be loaded: {e}"
    return None


@pytest.fixture(scope="module")
def gadget() -> Iterator[str]:
    """A Loopback gadget (f_loopback) bound to dummy_udc; yields its serial number."""
    reason = _why_no_gadget()
    if reason is not None:
        pytest.skip(f"no real USB device: {reason}")
    serial = f"HWB-TEST-{os.getpid()}"
    g = GADGETS / f"hwbridge{os.getpid()}"
    (g / "strings/0x409").mkdir(parents=True)
    (g / "idVendor").write_text(f"0x{VID:04x}")
    (g / "idProduct").write_text(f"0x{PID:04x}")
    (g / "strings/0x409/serialnumber").write_text(serial)
    (g / "strings/0x409/product").write_text("hwbridge loopback gadget")
    (g / "functions/Loopback.0").mkdir(parents=True)
    (g / "configs/c.1").mkdir(parents=True)
    (g / "configs/c.1/Loopback.0").symlink_to(g / "functions/Loopback.0")
    udc = next(p.name for p in Path("/sys/class/udc").iterdir()
               if p.name.startswith("dummy_udc"))
    (g / "UDC").write_text(udc)
    try:
        yield serial
    finally:
        with contextlib.suppress(OSError):
            (g / "UDC").write_text("\n")
        for p in [g / "configs/c.1/Loopback.0", g / "configs/c.1", g / "functions/Loopback.0",
                  g / "strings/0x409", g]:
            with contextlib.suppress(OSError):
                p.unlink() if p.is_symlink() else p.rmdir()


def test_real_gadget_loopback(make_server: Any, gadget: str) -> None:
    s = make_server(f'[devices.gadget]\nkind = "usb"\nvid = {VID}\npid = {PID}\n'
                    f'serial = "{gadget}"\n')
    with bridge.connect(s.url) as c:
        dev = usb.core.find(idVendor=VID, idProduct=PID, backend=get_backend(c))
        assert dev is not None and dev.serial_number == gadget
        intf = dev.get_active_configuration()[(0, 0)]
        ep_out = usb.util.find_descriptor(intf, custom_match=lambda e: not e.bEndpointAddress
                                          & 0x80)
        ep_in = usb.util.find_descriptor(intf, custom_match=lambda e: e.bEndpointAddress & 0x80)
        data = os.urandom(ep_out.wMaxPacketSize)
        assert dev.write(ep_out.bEndpointAddress, data, timeout=2000) == len(data)
        assert bytes(dev.read(ep_in.bEndpointAddress, len(data), timeout=2000)) == data
        with pytest.raises(usb.core.USBError) as e:
            dev.ctrl_transfer(0xC0, 0x7E, 0, 0, 8)  # f_loopback has no such request
        assert e.value.errno == errno.EPIPE
        usb.util.dispose_resources(dev)
