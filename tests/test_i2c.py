"""I2C end to end: bridge.drivers.i2c against the simulated lab's i2c1 through a real server.

Expected values come from the TMP102 and 24C02 datasheets, not from the code under test.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

import pytest
from bridge.drivers.i2c import I2C, I2C_M_RD, I2CError

import bridge
from bridge.client import Client
from bridge.testing import ServerProc

TMP102, EEPROM = 0x48, 0x50


@pytest.fixture
def host(lab: ServerProc) -> Iterator[Client]:
    with bridge.connect(lab.url) as c:
        yield c


@pytest.fixture
def i2c(host: Client) -> Iterator[I2C]:
    dev = host.open("i2c1")
    assert isinstance(dev, I2C)
    yield dev
    dev.close()


def tmp102_celsius(word: bytes) -> float:
    """TMP102 datasheet, 12-bit format: left-aligned two's complement, 0.0625 °C per LSB."""
    raw = int.from_bytes(word, "big", signed=True) >> 4
    return raw * 0.0625


def test_tmp102_reads_25_degrees(i2c: I2C) -> None:
    word = i2c.read_register(TMP102, 0, 2)
    assert word == b"\x19\x00"
    assert tmp102_celsius(word) == 25.0


def test_tmp102_registers_after_power_on(i2c: I2C) -> None:
    assert i2c.read_register(TMP102, 1, 2) == b"\x60\xa0"  # configuration
    assert tmp102_celsius(i2c.read_register(TMP102, 2, 2)) == 75.0  # TLOW
    assert tmp102_celsius(i2c.read_register(TMP102, 3, 2)) == 80.0  # THIGH


def test_tmp102_threshold_write_and_pointer(i2c: I2C) -> None:
    i2c.write_register(TMP102, 3, b"\x55\x00")  # THIGH = 85 °C
    try:
        assert tmp102_celsius(i2c.read_register(TMP102, 3, 2)) == 85.0
        # The pointer stays where the last write put it: a bare read reads THIGH again.
        assert i2c.transfer(TMP102, [I2C.Message(2, read=True)]) == [b"\x55\x00"]
    finally:
        i2c.write_register(TMP102, 3, b"\x50\x00")


def test_transfer_fills_messages_like_periphery(i2c: I2C) -> None:
    msgs = [I2C.Message([0x00]), I2C.Message([0, 0], read=True)]
    result = i2c.transfer(TMP102, msgs)
    assert result == [b"\x19\x00"]
    assert msgs[1].data == [0x19, 0x00]
    ba = [I2C.Message(b"\x01"), I2C.Message(bytearray(2), read=True)]
    i2c.transfer(TMP102, ba)
    assert ba[1].data == bytearray(b"\x60\xa0")


def test_eeprom_page_write_wraps_within_page(i2c: I2C) -> None:
    # 24C02 datasheet: page writes of 8 bytes; data beyond the page end wraps to its start.
    i2c.write_register(EEPROM, 0x1D, bytes(range(0xA0, 0xA6)))  # 6 bytes from 0x1D
    page = i2c.read_register(EEPROM, 0x18, 8)
    assert page[5:8] == bytes([0xA0, 0xA1, 0xA2])  # 0x1D, 0x1E, 0x1F
    assert page[0:3] == bytes([0xA3, 0xA4, 0xA5])  # wrapped to 0x18, 0x19, 0x1A
    assert i2c.read_register(EEPROM, 0x20, 1) != b"\xa3"  # the next page is untouched


def test_eeprom_sequential_read_wraps_at_256(i2c: I2C) -> None:
    i2c.write_register(EEPROM, 0xF8, b"\x11" * 8)
    i2c.write_register(EEPROM, 0x00, b"\x22" * 8)
    data = i2c.read_register(EEPROM, 0xFC, 8)
    assert data == b"\x11" * 4 + b"\x22" * 4


def test_eeprom_current_address_read(i2c: I2C) -> None:
    i2c.write_register(EEPROM, 0x40, b"\x01\x02\x03\x04")
    i2c.transfer(EEPROM, [I2C.Message([0x40])])
    first = i2c.transfer(EEPROM, [I2C.Message(2, read=True)])
    second = i2c.transfer(EEPROM, [I2C.Message(2, read=True)])
    assert (first, second) == ([b"\x01\x02"], [b"\x03\x04"])


def test_empty_address_is_enxio(i2c: I2C) -> None:
    with pytest.raises(OSError) as info:
        i2c.read_register(0x33, 0, 1)
    assert info.value.errno == errno.ENXIO == 6
    assert isinstance(info.value, I2CError)
    assert "i2c1" in str(info.value)
    # A NAK on the address fails the whole combined transfer, including earlier messages.
    with pytest.raises(I2CError) as info:
        i2c.transfer(0x21, [I2C.Message(1, read=True)])
    assert info.value.errno == errno.ENXIO
    assert i2c.read_register(TMP102, 0, 2) == b"\x19\x00"  # the bus still works


def test_funcs(i2c: I2C) -> None:
    assert i2c.funcs() & 0x1  # I2C_FUNC_I2C


def test_host_enforces_kernel_limits(host: Client, i2c: I2C) -> None:
    h = i2c.handle
    too_many = [[I2C_M_RD, 1]] * 43  # I2C_RDWR_IOCTL_MAX_MSGS is 42
    with pytest.raises(OSError) as info:
        host.call("transfer", [h, TMP102, too_many])
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        host.call("transfer", [h, TMP102, [[I2C_M_RD, 8193]]])  # > 8192 bytes
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        host.call("transfer", [h, TMP102, []])
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        host.call("transfer", [h, 0x80, [[I2C_M_RD, 1]]])  # not a 7-bit address
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        host.call("transfer", [h, TMP102, [[0, "text"]]])
    assert info.value.errno == errno.EINVAL
    assert host.call("transfer", [h, TMP102, [[0, b"\x00"], [I2C_M_RD, 2]]]) == [b"\x19\x00"]


def test_host_checks_register_ops_too(host: Client, i2c: I2C) -> None:
    h = i2c.handle
    for args in ([0x80, b"\x00", 2], [TMP102, b"\x00", 8193], [TMP102, b"\x00", -1],
                 [TMP102, "\x00", 2], [TMP102, 0, 2], [TMP102, b"\x00"]):
        with pytest.raises(OSError) as info:
            host.call("read_register", [h, *args])
        assert info.value.errno == errno.EINVAL, args
    for args in ([0x80, b"\x00", b""], [EEPROM, b"\x00", bytes(8192)], [EEPROM, b"\x00", "x"]):
        with pytest.raises(OSError) as info:
            host.call("write_register", [h, *args])
        assert info.value.errno == errno.EINVAL, args
    assert host.call("read_register", [h, TMP102, b"\x00", 2]) == b"\x19\x00"


@pytest.mark.parametrize("call", [
    lambda d: d.read_register(0x80, 0, 1),
    lambda d: d.read_register(TMP102, 256, 1),
    lambda d: d.read_register(TMP102, 0, -1),
    lambda d: d.read_register(TMP102, 0, 8193),
    lambda d: d.write_register(TMP102, 0, [256]),
    lambda d: d.transfer(TMP102, []),
    lambda d: d.transfer(TMP102, [I2C.Message(1, read=True)] * 43),
    lambda d: d.transfer(TMP102, [b"\x00"]),
    lambda d: I2C.Message(3),
    lambda d: I2C.Message(b"x" * 8193),
    lambda d: I2C.Message("text"),
])
def test_arguments_checked_before_any_io(lab: ServerProc,
                                         call: Callable[[I2C], object]) -> None:
    c = bridge.connect(lab.url)
    dev = c.open("i2c1")
    c.close()  # any I/O now fails with ConnectionAbortedError, so only validation can raise
    with pytest.raises((ValueError, TypeError)):
        call(dev)


def test_batch_one_round_trip(host: Client) -> None:
    with host.batch():
        dev = host.open("i2c1")
        temp = dev.read_register(TMP102, 0, 2)
        msgs = [I2C.Message([0x01]), I2C.Message(2, read=True)]
        both = dev.transfer(TMP102, msgs)
    assert temp.result() == b"\x19\x00"
    assert both.result() == [b"\x60\xa0"]
    assert msgs[1].data == b"\x60\xa0"
    dev.close()


def test_read_only_manifest(make_server: Callable[..., ServerProc]) -> None:
    srv = make_server('[devices.ro]\nkind = "i2c"\nsim = "i2c-bus"\naccess = "r"\n')
    with bridge.connect(srv.url) as c, c.open("ro") as dev:
        assert dev.read_register(TMP102, 0, 2) == b"\x19\x00"
        with pytest.raises(PermissionError) as info:
            dev.write_register(EEPROM, 0, b"\x00")
        assert isinstance(info.value, I2CError)
        with pytest.raises(PermissionError):
            dev.transfer(EEPROM, [I2C.Message(b"\x00\x01")])


def test_register_device_from_manifest(make_server: Callable[..., ServerProc]) -> None:
    srv = make_server("""
[devices.bus]
kind = "i2c"
sim = "i2c-bus"
[devices.bus.targets."0x20"]
width = 16
byteorder = "little"
registers = { "0x00" = 0x1234, "0x01" = 0 }
read_only = ["0x00"]
""")
    with bridge.connect(srv.url) as c, c.open("bus") as dev:
        assert dev.read_register(0x20, 0, 4) == b"\x34\x12\x00\x00"
        dev.write_register(0x20, 0, b"\xff\xff\xcd\xab")  # reg 0 read-only, reg 1 = 0xABCD
        assert dev.read_register(0x20, 0, 4) == b"\x34\x12\xcd\xab"
        with pytest.raises(I2CError) as info:
            dev.read_register(0x20, 7, 2)
        assert info.value.errno == errno.EREMOTEIO
        with pytest.raises(I2CError) as info:
            dev.read_register(TMP102, 0, 2)
        assert info.value.errno == errno.ENXIO
