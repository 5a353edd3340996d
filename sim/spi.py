# Simulated SPI: a controller that frames transfers with chip select the way spidev does,
# the target interface other models implement, and a Winbond W25Q128-like NOR flash.
# Time (busy after program/erase) comes from bridge.sim.clock, so tests can drive it.
# Must not know about the wire, sessions or ctypes (operations live in bridge/bushost.py).
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from bridge.backend import Access, DeviceHandle
from bridge.bushost import SPI_LSB_FIRST, SPIHandle, SPIXfer
from bridge.manifest import DeviceSpec

from .clock import clock


@runtime_checkable
class SPITarget(Protocol):
    """What a simulated SPI device implements; the controller drives chip select.

    For one SPI_IOC_MESSAGE the controller calls ``spi_select()`` (CS asserted), then
    ``spi_exchange(tx)`` once per transfer, which returns as many bytes as it was given
    (MISO while ``tx`` went out on MOSI), and ``spi_deselect()`` (CS released) at the end,
    and in between where a transfer sets ``cs_change``. A command takes effect where a
    real chip's would: most flash commands on deselect.
    """

    def spi_select(self) -> None: ...

    def spi_exchange(self, tx: bytes) -> bytes: ...

    def spi_deselect(self) -> None: ...


_REVERSE = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


class SPIController:
    """One chip select's worth of spidev: settings and CS framing around a target."""

    def __init__(self, target: SPITarget) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.settings: dict[str, int | bool] = {"mode": 0, "max_speed": 50_000_000,
                                                "bits_per_word": 8, "lsb_first": False}
        self._selected = False  # cs_change on a message's last transfer keeps CS active

    def message(self, xfers: Sequence[SPIXfer]) -> list[bytes]:
        """Run one message: select, each transfer, deselect (as spidev's spi_sync)."""
        lsb = bool(self.settings["lsb_first"])
        out: list[bytes] = []
        with self.lock:
            if not self._selected:
                self.target.spi_select()
            for i, x in enumerate(xfers):
                tx = x.tx if x.tx is not None else bytes(x.length)
                if lsb:  # bits leave LSB first: the chip sees each byte mirrored
                    tx = tx.translate(_REVERSE)
                rx = bytes(self.target.spi_exchange(tx))
                out.append(rx.translate(_REVERSE) if lsb else rx)
                last = i == len(xfers) - 1
                if x.cs_change and not last:
                    self.target.spi_deselect()
                    self.target.spi_select()
            self._selected = xfers[-1].cs_change
            if not self._selected:
                self.target.spi_deselect()
        return out

    def exchange(self, tx: bytes) -> bytes:
        """``message`` of one transfer of ``tx`` with no cs_change, without the SPIXfer."""
        with self.lock:
            lsb = self.settings["lsb_first"]
            if lsb:
                tx = tx.translate(_REVERSE)
            if not self._selected:
                self.target.spi_select()
            rx = self.target.spi_exchange(tx)
            self._selected = False
            self.target.spi_deselect()
        if type(rx) is not bytes:
            rx = bytes(rx)
        return rx.translate(_REVERSE) if lsb else rx


class W25Q128:
    """A Winbond W25Q128-like 16 MiB SPI NOR flash (modes 0 and 3).

    Commands: 0x9F JEDEC ID (EF 40 18), 0x90 manufacturer/device ID (EF 17), 0x03 read,
    0x0B fast read, 0x06 write enable (sets WEL), 0x04 write disable, 0x05 status 1
    (bit 0 BUSY, bit 1 WEL), 0x02 page program, 0x20 sector erase (4 KiB), 0xD8 block
    erase (64 KiB), 0xC7/0x60 chip erase. Program only clears bits and wraps within its
    256-byte page; program and erase need WEL, start on deselect, keep BUSY set for the
    datasheet's typical time and clear WEL when done. While busy only status reads work;
    everything else reads 0xFF and is ignored, as on the chip.
    """

    SIZE = 16 * 1024 * 1024
    PAGE = 256
    SECTOR = 4096
    JEDEC_ID = bytes([0xEF, 0x40, 0x18])
    # Typical times from the W25Q128JV datasheet, seconds.
    T_PAGE_PROGRAM = 0.0007
    T_SECTOR_ERASE = 0.045
    T_BLOCK_ERASE = 0.15
    T_CHIP_ERASE = 40.0

    def __init__(self) -> None:
        self.sectors: dict[int, bytearray] = {}  # sparse: absent sectors are erased
        self.wel = False
        self.busy_until = 0.0
        self._frame = bytearray()  # bytes received since chip select

    # -- state ------------------------------------------------------------------------

    def busy(self) -> bool:
        if self.busy_until and clock.now() >= self.busy_until:
            self.busy_until = 0.0
            self.wel = False  # cleared when the program/erase cycle completes
        return bool(self.busy_until)

    def status(self) -> int:
        busy = self.busy()
        return int(busy) | (int(self.wel) << 1)

    def read(self, addr: int, n: int) -> bytes:
        """``n`` bytes from ``addr``, wrapping at the end of the array."""
        out = bytearray()
        while len(out) < n:
            addr %= self.SIZE
            sector, off = divmod(addr, self.SECTOR)
            take = min(n - len(out), self.SECTOR - off)
            data = self.sectors.get(sector)
            out += data[off:off + take] if data is not None else b"\xff" * take
            addr += take
        return bytes(out)

    def _program(self, addr: int, data: bytes) -> None:
        page = addr & ~(self.PAGE - 1)
        if len(data) > self.PAGE:
            data = data[-self.PAGE:]  # the chip keeps the last 256 bytes clocked in
        for b in data:
            sector, off = divmod(addr, self.SECTOR)
            mem = self.sectors.setdefault(sector, bytearray(b"\xff" * self.SECTOR))
            mem[off] &= b
            addr = page | ((addr + 1) & (self.PAGE - 1))
        self.busy_until = clock.now() + self.T_PAGE_PROGRAM

    def _erase(self, addr: int, size: int, seconds: float) -> None:
        first = (addr & ~(size - 1)) // self.SECTOR
        for s in range(first, first + max(1, size // self.SECTOR)):
            self.sectors.pop(s, None)
        self.busy_until = clock.now() + seconds

    # -- the SPI target ---------------------------------------------------------------

    def spi_select(self) -> None:
        self._frame.clear()

    def spi_exchange(self, tx: bytes) -> bytes:
        start = len(self._frame)
        self._frame += tx
        return self._output(start, len(tx))

    def _output(self, start: int, n: int) -> bytes:
        """MISO for frame bytes ``start .. start+n`` (the command byte is frame[0])."""
        f = self._frame
        cmd = f[0] if f else None
        if cmd == 0x05:
            status = self.status()
            return bytes(0xFF if i == 0 else status for i in range(start, start + n))
        if self.busy() or cmd is None:
            return b"\xff" * n
        if cmd in (0x03, 0x0B):
            header = 4 if cmd == 0x03 else 5
            out = bytearray(b"\xff" * max(0, min(n, header - start)))
            data_start = max(start, header)
            if data_start < start + n and len(f) >= 4:
                addr = int.from_bytes(f[1:4], "big") + (data_start - header)
                out += self.read(addr, start + n - data_start)
            return bytes(out)
        if cmd == 0x9F:
            return bytes(self.JEDEC_ID[i - 1] if 1 <= i <= 3 else 0xFF
                         for i in range(start, start + n))
        if cmd == 0x90:
            return bytes((0xEF, 0x17)[(i - 4) % 2] if i >= 4 else 0xFF
                         for i in range(start, start + n))
        return b"\xff" * n

    def spi_deselect(self) -> None:
        f, self._frame = bytes(self._frame), bytearray()
        if not f or self.busy():
            return
        cmd = f[0]
        if cmd == 0x06 and len(f) == 1:
            self.wel = True
        elif cmd == 0x04 and len(f) == 1:
            self.wel = False
        elif not self.wel:
            return
        elif cmd == 0x02 and len(f) >= 5:
            self._program(int.from_bytes(f[1:4], "big"), f[4:])
        elif cmd == 0x20 and len(f) == 4:
            self._erase(int.from_bytes(f[1:4], "big"), self.SECTOR, self.T_SECTOR_ERASE)
        elif cmd == 0xD8 and len(f) == 4:
            self._erase(int.from_bytes(f[1:4], "big"), 0x10000, self.T_BLOCK_ERASE)
        elif cmd in (0xC7, 0x60) and len(f) == 1:
            self._erase(0, self.SIZE, self.T_CHIP_ERASE)


TARGET_MODELS: dict[str, Callable[[], SPITarget]] = {"w25q128": W25Q128}
"""Target model names usable in a sim SPI device's ``target`` option."""

_controllers: dict[str, SPIController] = {}
_controllers_lock = threading.Lock()


def controller_for(spec: DeviceSpec) -> SPIController:
    """The controller behind ``spec.name``, shared by every handle of this process."""
    with _controllers_lock:
        c = _controllers.get(spec.name)
        if c is None:
            model = spec.options.get("target", "w25q128")
            if model not in TARGET_MODELS:
                raise ValueError(f"{spec.name}: no SPI target model {model!r}")
            c = _controllers[spec.name] = SPIController(TARGET_MODELS[model]())
        return c


class SimSPI(SPIHandle):
    """A handle on a simulated spidev."""
    INLINE_ALL = True  # an in-process model: nothing here waits

    def __init__(self, spec: DeviceSpec, access: Access = Access.RW) -> None:
        super().__init__(spec, access)
        self.controller = controller_for(spec)

    def do_message(self, xfers: Sequence[SPIXfer]) -> list[bytes]:
        return self.controller.message(xfers)

    def do_exchange(self, tx: bytes) -> bytes:
        return self.controller.exchange(tx)

    def read_settings(self) -> dict[str, int | bool]:
        with self.controller.lock:
            return dict(self.controller.settings)

    def write_setting(self, name: str, value: int) -> None:
        with self.controller.lock:
            s = self.controller.settings
            if name == "lsb_first":
                s["lsb_first"] = bool(value)
                s["mode"] = (int(s["mode"]) & ~SPI_LSB_FIRST) | (SPI_LSB_FIRST if value else 0)
            elif name == "mode":
                s["mode"] = value
                s["lsb_first"] = bool(value & SPI_LSB_FIRST)
            else:
                s[name] = value


def _open(spec: DeviceSpec) -> DeviceHandle:
    return SimSPI(spec, spec.access)


MODELS = {"spi-flash": _open}

LAB = {
    "spi0": {"kind": "spi", "sim": "spi-flash",
             "description": "SPI NOR flash, W25Q128-like (16 MiB, JEDEC ID EF 40 18)"},
}
