# Simulated I2C: a bus that dispatches messages to targets by address, the target
# interface other models implement, and the lab's targets (TMP102, 24C02, and a generic
# RegisterDevice built from a plain description). Errors follow i2c-dev: an address nobody
# acknowledges fails the whole transfer with ENXIO. Must not know about the wire, sessions
# or ctypes (the handle's operations live in bridge/bushost.py).
from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from bridge.backend import Access, DeviceHandle
from bridge.bushost import I2C_FUNC_I2C, I2C_FUNC_NOSTART, I2CHandle, I2CMsg
from bridge.ioctl import I2C_M_TEN
from bridge.manifest import DeviceSpec


@runtime_checkable
class I2CTarget(Protocol):
    """What a simulated I2C device implements. The bus calls it once per message.

    ``i2c_write(data)`` receives the bytes of one write message (after the address byte);
    ``i2c_read(n)`` returns exactly ``n`` bytes for one read message. A message boundary
    is a (repeated) start, so a register pointer written by one message is what the next
    read message reads from. To NAK, raise ``OSError(errno.EREMOTEIO, ...)`` (a data
    byte not acknowledged) or any errno the real device's adapter would report.
    """

    def i2c_write(self, data: bytes) -> None: ...

    def i2c_read(self, n: int) -> bytes: ...


class I2CBus:
    """Targets by 7-bit address; ``transfer`` runs one combined I2C_RDWR atomically."""

    def __init__(self) -> None:
        self.targets: dict[int, I2CTarget] = {}
        self.lock = threading.Lock()

    def attach(self, address: int, target: I2CTarget) -> None:
        """Put ``target`` on the bus at ``address`` (0x03..0x77)."""
        if not 0x03 <= address <= 0x77:
            raise ValueError(f"a 7-bit target address is 0x03..0x77, not 0x{address:x}")
        with self.lock:
            if address in self.targets:
                raise ValueError(f"address 0x{address:02x} is already taken")
            self.targets[address] = target

    def detach(self, address: int) -> I2CTarget | None:
        """Take the target at ``address`` off the bus (it stops acknowledging)."""
        with self.lock:
            return self.targets.pop(address, None)

    def transfer(self, msgs: Sequence[I2CMsg]) -> list[bytes]:
        """Every message in order under one bus lock; the data of each read message."""
        out: list[bytes] = []
        with self.lock:
            for m in msgs:
                # Targets have 7-bit addresses: nobody answers a 10-bit one.
                target = None if m.flags & I2C_M_TEN else self.targets.get(m.addr)
                if target is None:
                    raise _nak(m.addr)
                if m.read:
                    out.append(_checked(target.i2c_read(m.length), m.addr, m.length))
                else:
                    target.i2c_write(m.data)
        return out

    def write_read(self, address: int, data: bytes, n: int) -> bytes:
        """``transfer`` of a write of ``data`` then a read of ``n`` bytes, both to 7-bit
        ``address`` (a register read), without the messages."""
        with self.lock:
            target = self.targets.get(address)
            if target is None:
                raise _nak(address)
            target.i2c_write(data)
            got = target.i2c_read(n)
        return got if type(got) is bytes and len(got) == n else _checked(got, address, n)


def _nak(address: int) -> OSError:
    return OSError(errno.ENXIO, f"no device acknowledges address 0x{address:02x}")


def _checked(data: bytes, address: int, n: int) -> bytes:
    """What a target's i2c_read returned, as bytes, refused unless it is ``n`` long."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) != n:
        raise OSError(errno.EIO, f"target 0x{address:02x} returned {len(data)} bytes for a "
                                 f"{n}-byte read")
    return data


class TMP102:
    """TI TMP102 temperature sensor: pointer register, then 16-bit registers MSB first.

    Registers: 0 temperature (read-only, 12-bit, 0.0625 °C/LSB, left-aligned; 13-bit when
    the EM bit of the configuration is set), 1 configuration (power-on 0x60A0), 2 TLOW
    (75 °C), 3 THIGH (80 °C). ``temperature`` may be set by tests and fault injectors.
    """

    CONFIG_RESET = 0x60A0
    _READ_ONLY_CONFIG = 0x6020  # R1 R0 (resolution) and AL are read-only
    _EM = 0x0010

    def __init__(self, temperature: float = 25.0) -> None:
        self.temperature = temperature
        self.pointer = 0
        self.regs = {1: self.CONFIG_RESET, 2: self._encode(75.0, False),
                     3: self._encode(80.0, False)}

    @staticmethod
    def _encode(celsius: float, extended: bool) -> int:
        bits = 13 if extended else 12
        raw = round(celsius / 0.0625) & ((1 << bits) - 1)
        return (raw << 3 | 1) if extended else raw << 4

    def register(self, n: int) -> int:
        """The 16-bit value register ``n`` reads as now."""
        if n == 0:
            return self._encode(self.temperature, bool(self.regs[1] & self._EM))
        return self.regs[n]

    def i2c_write(self, data: bytes) -> None:
        if not data:
            return  # a quick write: address acknowledged, nothing else
        if data[0] > 3:
            raise OSError(errno.EREMOTEIO, f"TMP102 has no register {data[0]}")
        self.pointer = data[0]
        if len(data) >= 3 and self.pointer != 0:
            value = data[1] << 8 | data[2]
            if self.pointer == 1:
                keep = self._READ_ONLY_CONFIG
                value = (value & ~keep) | (self.regs[1] & keep)
            self.regs[self.pointer] = value

    def i2c_read(self, n: int) -> bytes:
        p = self.pointer
        value = self.regs[p] if p else self._encode(self.temperature,
                                                    bool(self.regs[1] & self._EM))
        word = value.to_bytes(2, "big")
        return word if n == 2 else (word * (n // 2 + 1))[:n]


class EEPROM24C02:
    """Microchip/Atmel 24C02: 256 bytes, one word-address byte, 8-byte pages.

    A write message is the word address then data; data wraps within its 8-byte page
    (bytes beyond the page overwrite its start). A read continues from the address counter
    and wraps at 256. The contents start erased (0xFF).
    """

    SIZE = 256
    PAGE = 8

    def __init__(self, data: bytes | None = None) -> None:
        self.memory = bytearray(data if data is not None else b"\xff" * self.SIZE)
        if len(self.memory) != self.SIZE:
            raise ValueError(f"a 24C02 holds {self.SIZE} bytes")
        self.address = 0

    def i2c_write(self, data: bytes) -> None:
        if not data:
            return
        addr = data[0]
        page = addr & ~(self.PAGE - 1)
        for b in data[1:]:
            self.memory[addr] = b
            addr = page | ((addr + 1) & (self.PAGE - 1))
        self.address = addr

    def i2c_read(self, n: int) -> bytes:
        out = bytes(self.memory[(self.address + i) % self.SIZE] for i in range(n))
        self.address = (self.address + n) % self.SIZE
        return out


class RegisterDevice:
    """A generic register-map target, built from a plain description (e.g. a TOML table).

    ``RegisterDevice({"width": 16, "byteorder": "big", "registers": {0x00: 0x1234,
    0x01: 0}, "read_only": [0x00], "auto_increment": True})``

    - ``width``: register width in bits, 8 or 16 (default 8).
    - ``byteorder``: "big" or "little" for 16-bit registers (default "big").
    - ``registers``: register number -> initial value; keys may be ints or strings such as
      "0x10". Only these registers exist.
    - ``read_only``: register numbers whose writes are acknowledged but ignored.
    - ``auto_increment``: after each register read or written, move the pointer to the
      next register (default True); otherwise stay on the same register.
    - ``strict``: NAK (EREMOTEIO) a pointer to a register that does not exist (default
      True); when false, such registers read as ``fill`` and writes vanish.
    - ``fill``: value of registers that do not exist (default 0xFF per byte).

    A write message is the register number (one byte) then values; a read message reads
    from the pointer. ``values`` holds the current register contents.
    """

    def __init__(self, description: Mapping[str, Any]) -> None:
        unknown = set(description) - {"width", "byteorder", "registers", "read_only",
                                      "auto_increment", "strict", "fill"}
        if unknown:
            raise ValueError(f"unknown register device keys: {', '.join(sorted(unknown))}")
        self.width = int(description.get("width", 8))
        if self.width not in (8, 16):
            raise ValueError("width must be 8 or 16")
        self.byteorder = description.get("byteorder", "big")
        if self.byteorder not in ("big", "little"):
            raise ValueError('byteorder must be "big" or "little"')
        self.values: dict[int, int] = {}
        for k, v in dict(description.get("registers", {})).items():
            reg = int(k, 0) if isinstance(k, str) else int(k)
            if not 0 <= reg <= 0xFF or not 0 <= int(v) < 1 << self.width:
                raise ValueError(f"register {k!r} = {v!r} does not fit")
            self.values[reg] = int(v)
        self.read_only = {int(r, 0) if isinstance(r, str) else int(r)
                          for r in description.get("read_only", [])}
        self.auto_increment = bool(description.get("auto_increment", True))
        self.strict = bool(description.get("strict", True))
        self.fill = int(description.get("fill", (1 << self.width) - 1))
        self.pointer = min(self.values, default=0)
        self._nbytes = self.width // 8

    def _advance(self) -> None:
        if self.auto_increment:
            self.pointer = (self.pointer + 1) & 0xFF

    def i2c_write(self, data: bytes) -> None:
        if not data:
            return
        if self.strict and data[0] not in self.values:
            raise OSError(errno.EREMOTEIO, f"no register 0x{data[0]:02x}")
        self.pointer = data[0]
        body = data[1:]
        for i in range(0, len(body) - len(body) % self._nbytes, self._nbytes):
            value = int.from_bytes(body[i:i + self._nbytes], self.byteorder)
            if self.pointer in self.values and self.pointer not in self.read_only:
                self.values[self.pointer] = value
            self._advance()

    def i2c_read(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            value = self.values.get(self.pointer, self.fill)
            out += value.to_bytes(self._nbytes, self.byteorder)
            self._advance()
        return bytes(out[:n])


TARGET_MODELS: dict[str, Callable[[], I2CTarget]] = {
    "tmp102": TMP102,
    "24c02": EEPROM24C02,
}
"""Target model names usable in a sim I2C bus's ``targets`` option."""

_LAB_TARGETS = {"0x48": "tmp102", "0x50": "24c02"}
_buses: dict[str, I2CBus] = {}
_buses_lock = threading.Lock()


def bus_for(spec: DeviceSpec) -> I2CBus:
    """The one bus behind device ``spec.name``, shared by every handle of this process.

    Built on first use from the option ``targets`` (address -> model name, or a
    RegisterDevice description table), defaulting to the lab's TMP102 and 24C02.
    """
    with _buses_lock:
        bus = _buses.get(spec.name)
        if bus is None:
            bus = I2CBus()
            targets = spec.options.get("targets", _LAB_TARGETS)
            for addr, model in dict(targets).items():
                address = int(addr, 0) if isinstance(addr, str) else int(addr)
                if isinstance(model, str):
                    if model not in TARGET_MODELS:
                        raise ValueError(f"{spec.name}: no I2C target model {model!r}")
                    bus.attach(address, TARGET_MODELS[model]())
                else:
                    bus.attach(address, RegisterDevice(model))
            _buses[spec.name] = bus
        return bus


class SimI2C(I2CHandle):
    """A handle on a simulated adapter."""
    INLINE_ALL = True  # an in-process model: nothing here waits

    def __init__(self, spec: DeviceSpec, access: Access = Access.RW) -> None:
        super().__init__(spec, access)
        self.bus = bus_for(spec)

    def do_transfer(self, msgs: Sequence[I2CMsg]) -> list[bytes]:
        return self.bus.transfer(msgs)

    def do_write_read(self, address: int, data: bytes, n: int) -> bytes:
        return self.bus.write_read(address, data, n)

    def do_funcs(self) -> int:
        return I2C_FUNC_I2C | I2C_FUNC_NOSTART


def _open(spec: DeviceSpec) -> DeviceHandle:
    return SimI2C(spec, spec.access)


MODELS = {"i2c-bus": _open}

LAB = {
    "i2c1": {"kind": "i2c", "sim": "i2c-bus",
             "description": "I2C bus: TMP102 at 0x48, 24C02 EEPROM at 0x50"},
}
