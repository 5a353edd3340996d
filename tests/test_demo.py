# `make demo` (python -m bridge.demo) as a user runs it: a subprocess that starts its own
# server; its output must show each lab device answering as SURFACE.md documents, and a lab
# without some devices must be toured with those skipped.
from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable

from bridge.sim import lab_manifest

from bridge.demo import tour
from bridge.testing import ServerProc

# What each lab device must print, from the documented behaviour (SURFACE.md).
EXPECTED = {
    "null": ["null.read(16)        -> b''"],
    "zero": ["zero.read(8)         -> " + repr(bytes(8))],
    "uart0": ["readline() -> b'ping\\n'"],
    "instr0": ["*IDN?       -> HWBRIDGE,SIM-DMM,0001,1.0", "MEAS:VOLT?  -> "],
    "i2c1": ["register 0 -> 19 00 = 25.00 °C", "read back -> b'hwbridge'"],
    "spi0": ["JEDEC ID (0x9F) -> EF 40 18"],
    "gpiochip0": ["write line 0 = 1 -> rising edge on line 1", "read line 1 -> True"],
    "usb0": ["found hwbridge sim-loopback (1209:0001)", "bulk IN 0x81 b'round trip'"],
    "vendorlib": ["dev_add(2, 40) -> 42", f"dev_checksum(b'hwbridge') -> {sum(b'hwbridge')}"],
}


def test_make_demo_tours_every_device_of_the_lab() -> None:
    done = subprocess.run([sys.executable, "-m", "bridge.demo"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "FAILED" not in out
    lab = set(lab_manifest().devices)
    for name, lines in EXPECTED.items():
        if name in lab:
            for line in lines:
                assert line in out, f"{name}: {line!r} not in output:\n{out}"
        else:
            assert f"the lab has no {name}" in out
    assert f"in one round trip -> {bytes(4)!r}" in out
    assert "all devices answered" in out


def test_devices_a_host_lacks_are_skipped(make_server: Callable[..., ServerProc]) -> None:
    srv = make_server('[devices.zero]\nkind = "node"\nsim = "zero"\n')
    buf = io.StringIO()
    failed = tour(srv.url, lambda line: print(line, file=buf))
    out = buf.getvalue()
    assert failed == 0
    assert "the lab has no null yet" in out and "the lab has no uart0 yet" in out
    assert f"in one round trip -> {bytes(4)!r}" in out
