"""The W25Q128 model and the I2C targets in-process, with the sim clock in manual time so
busy periods are deterministic (datasheet typical times: page program 0.7 ms, sector erase
45 ms)."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from bridge.sim.clock import clock
from bridge.sim.i2c import TMP102, I2CBus, RegisterDevice
from bridge.sim.spi import W25Q128, SPIController

from bridge.bushost import I2CMsg, SPIXfer
from bridge.ioctl import I2C_M_RD


@pytest.fixture
def flash() -> Iterator[SPIController]:
    clock.set_manual(100.0)
    try:
        yield SPIController(W25Q128())
    finally:
        clock.set_real()


def cmd(c: SPIController, data: bytes) -> bytes:
    return c.message([SPIXfer(data, len(data))])[0]


def status(c: SPIController) -> int:
    return cmd(c, b"\x05\x00")[1]


def test_busy_for_the_erase_time_then_wel_clears(flash: SPIController) -> None:
    cmd(flash, b"\x06")
    cmd(flash, b"\x20\x00\x20\x00")
    assert status(flash) == 0b11  # BUSY and WEL
    assert cmd(flash, b"\x9f\x00\x00\x00") == b"\xff" * 4  # ignored while busy
    clock.advance(0.044)
    assert status(flash) & 1
    clock.advance(0.002)
    assert status(flash) == 0


def test_program_busy_time(flash: SPIController) -> None:
    cmd(flash, b"\x06")
    cmd(flash, b"\x02\x00\x00\x10\x00")
    assert status(flash) & 1
    assert cmd(flash, b"\x03\x00\x00\x10\x00")[4:] == b"\xff"  # read ignored while busy
    clock.advance(0.001)
    assert status(flash) == 0
    assert cmd(flash, b"\x03\x00\x00\x10\x00")[4:] == b"\x00"


def test_incomplete_commands_do_nothing(flash: SPIController) -> None:
    cmd(flash, b"\x06")
    cmd(flash, b"\x20\x00\x20")  # address cut short: no erase
    assert status(flash) == 0b10


def test_tmp102_extended_mode_and_negative() -> None:
    t = TMP102(temperature=-25.0)
    bus = I2CBus()
    bus.attach(0x48, t)
    # TMP102 datasheet table: -25 degC is 0xE70 in 12-bit mode.
    assert bus.transfer([I2CMsg(0x48, 0, b"\x00", 1), I2CMsg(0x48, I2C_M_RD, b"", 2)]) == \
        [b"\xe7\x00"]
    bus.transfer([I2CMsg(0x48, 0, b"\x01\x60\xb0", 3)])  # set EM: 13-bit format
    t.temperature = 150.0  # 13-bit: 0x12C0 -> left-aligned with bit 0 set
    assert bus.transfer([I2CMsg(0x48, 0, b"\x00", 1), I2CMsg(0x48, I2C_M_RD, b"", 2)]) == \
        [bytes([0x4B, 0x01])]


def test_register_device_description_errors() -> None:
    with pytest.raises(ValueError):
        RegisterDevice({"width": 12})
    with pytest.raises(ValueError):
        RegisterDevice({"registers": {0: 256}})
    with pytest.raises(ValueError):
        RegisterDevice({"colour": "blue"})
    dev = RegisterDevice({"registers": {"0x10": 1, "0x11": 2}, "auto_increment": False})
    dev.i2c_write(b"\x10")
    assert dev.i2c_read(3) == b"\x01\x01\x01"
    with pytest.raises(OSError) as info:
        dev.i2c_write(b"\x20")
    assert info.value.errno == errno.EREMOTEIO


def test_bus_attach_rules() -> None:
    bus = I2CBus()
    bus.attach(0x20, RegisterDevice({}))
    with pytest.raises(ValueError):
        bus.attach(0x20, RegisterDevice({}))
    with pytest.raises(ValueError):
        bus.attach(0x78, RegisterDevice({}))
    assert bus.detach(0x20) is not None
    with pytest.raises(OSError) as info:
        bus.transfer([I2CMsg(0x20, I2C_M_RD, b"", 1)])
    assert info.value.errno == errno.ENXIO
