# User-described simulated devices: model "file". A device's manifest table names a file
# (`sim = "file"`, `model = "devices/bme280.toml"`, relative to the manifest's folder):
# a TOML description (I2C register maps, SPI register maps, line/binary dialogs of serial
# instruments) or a Python file defining `model(spec) -> DeviceHandle` for what a table
# cannot say. Builds on the models' own interfaces (RegisterDevice, I2CBus, SPITarget,
# DialogInstrument); must not know about the wire or sessions.
from __future__ import annotations

import dataclasses
import importlib.util
import threading
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bridge.backend import DeviceHandle
from bridge.manifest import DeviceSpec

FILE_KINDS = ("i2c", "spi", "serial")
_REGISTER_KEYS = {"width", "byteorder", "registers", "read_only", "auto_increment", "strict",
                  "fill"}

_cache: dict[str, Any] = {}
_lock = threading.Lock()


def _path(spec: DeviceSpec) -> Path:
    model = spec.options.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError(f"device {spec.name}: sim = \"file\" needs model = \"FILE.toml\" "
                         "or \"FILE.py\"")
    return Path(spec.base) / model


def load_description(path: str | Path) -> dict[str, Any]:
    """Read and check a device description file (TOML); its tables as a dict."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            d = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: not valid TOML: {e}") from None
    kind = d.get("kind")
    if kind not in FILE_KINDS:
        raise ValueError(f"{p}: kind must be one of {', '.join(FILE_KINDS)}, not {kind!r}")
    return d


def _load_python(path: Path) -> Callable[[DeviceSpec], DeviceHandle]:
    spec = importlib.util.spec_from_file_location(f"hwbridge_user_model_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    factory = getattr(module, "model", None)
    if not callable(factory):
        raise ValueError(f"{path}: a Python model file defines model(spec) -> DeviceHandle")
    return factory  # type: ignore[no-any-return]


# -- I2C ----------------------------------------------------------------------------------

def i2c_bus(spec: DeviceSpec, targets: Mapping[str, Any]) -> DeviceHandle:
    """A simulated I2C adapter with ``targets`` (address -> model name, RegisterDevice
    description or an object implementing sim.i2c.I2CTarget)."""
    from .i2c import I2CBus, SimI2C, bus_for

    plain = {a: t for a, t in targets.items() if isinstance(t, str | Mapping)}
    for addr, t in plain.items():
        if isinstance(t, Mapping) and set(t) - _REGISTER_KEYS:
            raise ValueError(f"{spec.name}: target {addr}: unknown keys "
                             f"{', '.join(sorted(set(t) - _REGISTER_KEYS))}")
    handle = SimI2C(dataclasses.replace(spec, options={**spec.options, "targets": plain}),
                    spec.access)
    bus: I2CBus = bus_for(handle.spec)
    with bus.lock:
        for addr, t in targets.items():
            if not isinstance(t, str | Mapping):
                address = int(addr, 0) if isinstance(addr, str) else int(addr)
                if address not in bus.targets:
                    bus.attach(address, t)
    return handle


# -- SPI ----------------------------------------------------------------------------------

class SPIRegisters:
    """An SPI register-map target: the first byte of a select is ``read_bit | register``,
    then data bytes are read from, or written to, consecutive registers (BME280, ADXL345
    and most sensors' SPI mode). The map is a sim.i2c.RegisterDevice description."""

    def __init__(self, description: Mapping[str, Any]) -> None:
        from .i2c import RegisterDevice

        d = dict(description)
        self.read_bit = int(d.pop("read_bit", 0x80))
        self.address_mask = int(d.pop("address_mask", 0x7F))
        self.regs = RegisterDevice(d)
        self._command: int | None = None
        self._written = bytearray()

    def spi_select(self) -> None:
        self._command, self._written = None, bytearray()

    def spi_exchange(self, tx: bytes) -> bytes:
        out = bytearray()
        for b in tx:
            if self._command is None:
                self._command = b
                self.regs.pointer = b & self.address_mask
                out.append(0xFF)  # MISO is not driven during the command byte
            elif self._command & self.read_bit:
                out += self.regs.i2c_read(1)
            else:
                self._written.append(b)
                out.append(0xFF)
        return bytes(out)

    def spi_deselect(self) -> None:
        if self._command is not None and not self._command & self.read_bit and self._written:
            self.regs.i2c_write(bytes([self._command & self.address_mask]) + self._written)
        self._command = None


def spi_device(spec: DeviceSpec, make_target: Callable[[], Any]) -> DeviceHandle:
    """A simulated spidev whose chip is ``make_target()`` (a sim.spi.SPITarget), made once
    per device and shared by its handles."""
    from bridge.bushost import SPIHandle

    from .spi import SimSPI, SPIController

    with _lock:
        key = f"spi:{spec.name}"
        if key not in _cache:
            _cache[key] = SPIController(make_target())
        controller = _cache[key]

    class FileSPI(SimSPI):
        def __init__(self) -> None:
            SPIHandle.__init__(self, spec, spec.access)
            self.controller = controller

    return FileSPI()


# -- the model ----------------------------------------------------------------------------

def open_file_device(spec: DeviceSpec) -> DeviceHandle:
    """Model factory "file": the device described by the file ``spec.options["model"]``."""
    path = _path(spec)
    key = str(path.resolve())
    with _lock:
        loaded = _cache.get(key)
        if loaded is None:
            loaded = _cache[key] = (_load_python(path) if path.suffix == ".py"
                                    else load_description(path))
    if callable(loaded):
        handle: DeviceHandle = loaded(spec)
        return handle
    d: dict[str, Any] = loaded
    if d["kind"] != spec.kind:
        raise ValueError(f"{path} describes a {d['kind']} device, {spec.name} is {spec.kind}")
    body = {k: v for k, v in d.items() if k not in ("kind", "description")}
    if spec.kind == "i2c":
        return i2c_bus(spec, dict(body.get("targets", {})))
    if spec.kind == "spi":
        return spi_device(spec, lambda: SPIRegisters(body))
    from .serial import DialogInstrument

    return DialogInstrument(spec, body)


MODELS = {"file": open_file_device}
LAB: dict[str, dict[str, Any]] = {}


def _check(spec: DeviceSpec) -> None:
    """At server start: the file exists and a TOML description is valid for the kind."""
    path = _path(spec)
    if path.suffix == ".py":
        if not path.is_file():
            raise ValueError(f"device {spec.name}: no model file {path}")
        return
    d = load_description(path)
    if d["kind"] != spec.kind:
        raise ValueError(f"{path} describes a {d['kind']} device, {spec.name} is {spec.kind}")


open_file_device.prepare = _check  # type: ignore[attr-defined]
