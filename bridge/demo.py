# `make demo`: start a real `hwbridge serve` of the built-in simulated lab and tour it with
# a few lines of ordinary client code per device, printing what comes back. A device the lab
# does not have (or whose driver is not installed) is skipped with a note. Exits 0 when
# every device present answered as documented, 1 otherwise. Client code only, plus the
# test helper that starts the server process.
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

import bridge
from bridge.testing import start_server

Step = Callable[[Any], list[str]]


def tour_nodes(host: Any) -> list[str]:
    with host.open("null") as null, host.open("zero") as zero:
        return [f"null.write(b'hello') -> {null.write(b'hello')}",
                f"null.read(16)        -> {null.read(16)!r}  (end of file)",
                f"zero.read(8)         -> {zero.read(8)!r}"]


def tour_uart(host: Any) -> list[str]:
    with host.open("uart0") as uart:
        uart.timeout = 5.0
        uart.write(b"ping\n")
        return ["uart.write(b'ping\\n'); uart.readline() -> " + repr(uart.readline())]


def tour_instrument(host: Any) -> list[str]:
    with host.open("instr0") as dmm:
        dmm.timeout = 5.0
        out = []
        for request in (b"*IDN?", b"MEAS:VOLT?"):
            dmm.write(request + b"\n")
            out.append(f"{request.decode():<11} -> {dmm.readline().decode().strip()}")
        return out


def tour_i2c(host: Any) -> list[str]:
    with host.open("i2c1") as bus:
        raw = bus.read_register(0x48, 0x00, 2)
        celsius = (int.from_bytes(raw, "big") >> 4) * 0.0625
        bus.write_register(0x50, 0x10, b"hwbridge")
        back = bytes(bus.transfer(0x50, [bus.Message(b"\x10"), bus.Message(8, read=True)])[0])
        return [f"TMP102 @0x48 register 0 -> {raw.hex(' ')} = {celsius:.2f} °C",
                f"24C02 @0x50 write b'hwbridge' at 0x10, read back -> {back!r}"]


def tour_spi(host: Any) -> list[str]:
    with host.open("spi0") as spi:
        jedec = bytes(spi.transfer(b"\x9f\x00\x00\x00"))[1:]
        return [f"JEDEC ID (0x9F) -> {jedec.hex(' ').upper()}"]


def tour_gpio(host: Any) -> list[str]:
    with host.open("gpiochip0") as chip:
        chip.configure(1, "in", edge="both")
        chip.configure(0, "out")
        chip.write(0, True)
        event = chip.wait_event(1, timeout=5.0)
        seen = f"{event.edge.value} edge on line {event.line}" if event else "no event"
        return [f"write line 0 = 1 -> {seen}",
                f"read line 1 -> {chip.read(1)}"]


def tour_usb(host: Any) -> list[str]:
    import usb.core  # pyusb

    from bridge.drivers.usb import get_backend

    dev = usb.core.find(idVendor=0x1209, idProduct=0x0001, backend=get_backend(host))
    if dev is None:
        return ["usb.core.find(0x1209, 0x0001) found nothing"]
    dev.write(0x01, b"round trip")
    back = bytes(dev.read(0x81, 64, timeout=5000))
    return [f"found {dev.manufacturer} {dev.product} ({dev.idVendor:04x}:{dev.idProduct:04x})",
            f"bulk OUT 0x01 b'round trip' -> bulk IN 0x81 {back!r}"]


def tour_library(host: Any) -> list[str]:
    lib = host.open("vendorlib")
    try:
        return [f"dev_add(2, 40) -> {lib.dev_add(2, 40)}",
                f"dev_checksum(b'hwbridge') -> {lib.dev_checksum(b'hwbridge')}"]
    finally:
        lib.close()


def tour_batch(host: Any) -> list[str]:
    with host.batch():
        zero = host.open("zero")
        data = zero.read(4)
        zero.close()
    return [f"open zero, read(4), close in one round trip -> {data.result()!r}"]


TOUR: list[tuple[str, tuple[str, ...], Step]] = [
    ("null and zero", ("null", "zero"), tour_nodes),
    ("uart0: loopback serial (pyserial API)", ("uart0",), tour_uart),
    ("instr0: SCPI multimeter", ("instr0",), tour_instrument),
    ("i2c1: TMP102 and 24C02", ("i2c1",), tour_i2c),
    ("spi0: NOR flash", ("spi0",), tour_spi),
    ("gpiochip0: line 0 wired to line 1", ("gpiochip0",), tour_gpio),
    ("usb0 through pyusb", ("usb0",), tour_usb),
    ("vendorlib: a remote native library", ("vendorlib",), tour_library),
    ("a batch", ("zero",), tour_batch),
]


def tour(url: str, out: Callable[[str], None] = print) -> int:
    """Tour the lab at ``url``; the number of devices that failed."""
    failed = 0
    with bridge.connect(url) as host:
        present = {d.name for d in host.devices()}
        out(f"{url} serves {len(present)} devices: {', '.join(sorted(present))}")
        for title, needs, step in TOUR:
            out(f"\n== {title}")
            missing = [n for n in needs if n not in present]
            if missing:
                out(f"   skipped: the lab has no {', '.join(missing)} yet")
                continue
            try:
                for line in step(host):
                    out(f"   {line}")
            except ImportError as e:
                out(f"   skipped: {e.name or e} is not installed")
            except Exception as e:
                failed += 1
                out(f"   FAILED: {type(e).__name__}: {e}")
                traceback.print_exc(file=sys.stderr)
    return failed


def main() -> int:
    """Start the lab server, tour it, stop it."""
    server = start_server()
    try:
        print(f"started `hwbridge serve` (pid {server.proc.pid})")
        failed = tour(server.url)
    finally:
        server.stop()
    print(f"\n{'all devices answered' if not failed else f'{failed} device(s) failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
