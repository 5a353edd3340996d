"""The register read and the one-transfer SPI message take shortcuts past the general
message path (bridge/bushost.py: do_write_read, do_exchange; the sim's I2CBus.write_read
and SPIController.exchange). Each must behave exactly as the general path it stands for:
same bytes, same chip-select framing, same errors; and the host still checks everything.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from bridge.sim.clock import clock
from bridge.sim.i2c import EEPROM24C02, TMP102, I2CBus, SimI2C
from bridge.sim.spi import W25Q128, SimSPI, SPIController

from bridge.backend import Access
from bridge.bushost import I2CHandle, I2CMsg, SPIHandle, SPIXfer
from bridge.ioctl import I2C_M_RD
from bridge.manifest import DeviceSpec, parse

JEDEC, RDSR, WREN, PP, READ = 0x9F, 0x05, 0x06, 0x02, 0x03


def _spec(kind: str, sim: str) -> DeviceSpec:
    return parse({"devices": {"bus": {"kind": kind, "sim": sim}}}).devices["bus"]


class _ShortTarget:
    """Answers every read with one byte too few, as a bytearray."""

    def i2c_write(self, data: bytes) -> None:
        pass

    def i2c_read(self, n: int) -> bytearray:
        return bytearray(max(n - 1, 0))


def _general_read(bus: I2CBus, addr: int, reg: bytes, n: int) -> bytes:
    return bus.transfer([I2CMsg(addr, 0, reg, len(reg)), I2CMsg(addr, I2C_M_RD, b"", n)])[0]


def _fresh_bus() -> I2CBus:
    bus = I2CBus()
    bus.attach(0x48, TMP102(-12.5))
    bus.attach(0x50, EEPROM24C02(bytes(range(256))))
    bus.attach(0x20, _ShortTarget())
    return bus


@pytest.mark.parametrize(("addr", "reg", "n"), [
    (0x48, b"\x00", 2), (0x48, b"\x01", 2), (0x48, b"\x03", 5), (0x48, b"\x02", 0),
    (0x50, b"\xfc", 8), (0x50, b"", 3),
])
def test_write_read_is_the_two_message_transfer(addr: int, reg: bytes, n: int) -> None:
    a, b = _fresh_bus(), _fresh_bus()
    for _ in range(2):  # twice: the pointer a read leaves behind must match too
        got = a.write_read(addr, reg, n)
        assert type(got) is bytes
        assert got == _general_read(b, addr, reg, n)


@pytest.mark.parametrize(("addr", "code"), [(0x33, errno.ENXIO), (0x20, errno.EIO)])
def test_write_read_fails_like_the_transfer(addr: int, code: int) -> None:
    for run in (lambda bus: bus.write_read(addr, b"\x00", 2),
                lambda bus: _general_read(bus, addr, b"\x00", 2)):
        with pytest.raises(OSError) as info:
            run(_fresh_bus())
        assert info.value.errno == code


@pytest.fixture
def manual_clock() -> Iterator[None]:
    clock.set_manual(100.0)
    try:
        yield
    finally:
        clock.set_real()


def _script() -> list[tuple[str, Any]]:
    """Flash traffic that exercises status, ID, program, read, and a held chip select."""
    page = bytes(range(16))
    return [
        ("x", bytes([JEDEC, 0, 0, 0])),
        ("x", bytes([WREN])),
        ("x", bytes([RDSR, 0])),
        ("x", bytes([PP, 0, 0x10, 0]) + page),
        ("x", bytes([RDSR, 0, 0])),
        ("tick", 0.001),
        ("x", bytes([READ, 0, 0x10, 0]) + bytes(16)),
        ("lsb", True),
        ("x", bytes([0xF9, 0, 0, 0])),  # 0x9F mirrored: the chip sees JEDEC ID
        ("x", bytes([JEDEC, 0])),  # the chip sees 0xF9: no command
        ("lsb", False),
        # A message whose last transfer sets cs_change leaves the chip selected, so the
        # next one continues the same command: JEDEC ID, then its three bytes.
        ("held", bytes([JEDEC])),
        ("x", bytes(3)),
        ("x", b""),
        ("x", bytes([JEDEC, 0, 0, 0])),
    ]


def test_exchange_is_the_one_transfer_message(manual_clock: None) -> None:
    a, b = SPIController(W25Q128()), SPIController(W25Q128())
    seen = []
    for what, arg in _script():
        if what == "tick":
            clock.advance(arg)
        elif what == "lsb":
            a.settings["lsb_first"] = b.settings["lsb_first"] = arg
        elif what == "held":
            a.message([SPIXfer(arg, len(arg), cs_change=True)])
            b.message([SPIXfer(arg, len(arg), cs_change=True)])
        else:
            got = a.exchange(arg)
            assert type(got) is bytes
            assert got == b.message([SPIXfer(arg, len(arg))])[0], arg
            seen.append(got)
    # And the script did what it says (so the comparison above covered these states).
    assert seen[0] == b"\xff\xef\x40\x18"
    assert seen[2][1] == 0x02 and seen[4][1] & 0x01  # WEL, then BUSY programming
    assert seen[5][4:] == bytes(range(16))
    assert seen[6] == bytes([0xFF, 0xF7, 0x02, 0x18])
    assert seen[8] == b"\xef\x40\x18" and seen[9] == b""
    assert seen[10] == b"\xff\xef\x40\x18"


# -- the host's checks of the shortcut operations -----------------------------------------


@pytest.mark.parametrize(("args", "code"), [
    ((0x80, b"\x00", 2), errno.EINVAL),  # not a 7-bit address
    ((-1, b"\x00", 2), errno.EINVAL),
    ((True, b"\x00", 2), errno.EINVAL),
    ((0x48, b"\x00", -1), errno.EINVAL),
    ((0x48, b"\x00", 8193), errno.EINVAL),  # beyond i2c-dev's message size
    ((0x48, b"\x00", 2.0), errno.EINVAL),
    ((0x48, bytes(8193), 2), errno.EINVAL),
    ((0x33, b"\x00", 2), errno.ENXIO),
])
def test_host_checks_read_register(args: tuple[Any, ...], code: int) -> None:
    dev = SimI2C(_spec("i2c", "i2c-bus"))
    with pytest.raises(OSError) as info:
        dev.read_register(*args)
    assert info.value.errno == code


@pytest.mark.parametrize("args", [(0x48, "\x00", 2), (0x48, 0, 2), (0x48, None, 2)])
def test_host_refuses_a_register_that_is_not_bytes(args: tuple[Any, ...]) -> None:
    dev = SimI2C(_spec("i2c", "i2c-bus"))
    with pytest.raises(TypeError):
        dev.read_register(*args)
    with pytest.raises(TypeError):
        dev.write_register(args[0], args[1], b"\x00")


def test_host_checks_write_register() -> None:
    dev = SimI2C(_spec("i2c", "i2c-bus"))
    with pytest.raises(OSError) as info:
        dev.write_register(0x50, b"\x00", bytes(8192))  # 8193 bytes in one message
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        dev.write_register(0x1FF, b"\x00", b"")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(TypeError):
        dev.write_register(0x50, b"\x00", [1, 2])
    dev.close()
    with pytest.raises(OSError) as info:
        dev.read_register(0x48, b"\x00", 2)
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize(("transfers", "code"), [
    ([[b"\x00\x00", 1]], errno.EINVAL),  # tx and length disagree
    ([[b"\x00", True]], errno.EINVAL),  # a bool is no length
    ([[bytes(4097), 4097]], errno.EMSGSIZE),  # beyond spidev's bufsiz
    ([(b"\x00", 1)], None),  # a tuple goes the general way and works
])
def test_host_checks_one_transfer_messages(transfers: list[Any], code: int | None) -> None:
    dev = SimSPI(_spec("spi", "spi-flash"))
    if code is None:
        assert dev.transfer(transfers) == [b"\xff"]
        return
    with pytest.raises((OSError, ValueError, TypeError)) as info:
        dev.transfer(transfers)
    got = info.value.errno if isinstance(info.value, OSError) else errno.EINVAL
    assert got == code


# -- the default shortcuts (posix): the general primitive with the same messages ----------


class _RecordingI2C(I2CHandle):
    def __init__(self) -> None:
        super().__init__(_spec("i2c", "i2c-bus"), Access.RW)
        self.seen: list[Sequence[I2CMsg]] = []

    def do_transfer(self, msgs: Sequence[I2CMsg]) -> list[bytes]:
        self.seen.append(msgs)
        return [bytes(m.length) for m in msgs if m.read]

    def do_funcs(self) -> int:
        return 0


class _RecordingSPI(SPIHandle):
    def __init__(self) -> None:
        super().__init__(_spec("spi", "spi-flash"), Access.RW)
        self.seen: list[Sequence[SPIXfer]] = []

    def do_message(self, xfers: Sequence[SPIXfer]) -> list[bytes]:
        self.seen.append(xfers)
        return [b"\xaa" * x.length for x in xfers]

    def read_settings(self) -> dict[str, int | bool]:
        return {}

    def write_setting(self, name: str, value: int) -> None:
        pass


def test_default_shortcuts_build_the_general_request() -> None:
    i2c = _RecordingI2C()
    assert i2c.read_register(0x48, b"\x01\x02", 3) == bytes(3)
    assert i2c.write_register(0x50, b"\x10", b"\x01\x02") is None
    assert [list(m) for m in i2c.seen] == [
        [I2CMsg(0x48, 0, b"\x01\x02", 2), I2CMsg(0x48, I2C_M_RD, b"", 3)],
        [I2CMsg(0x50, 0, b"\x10\x01\x02", 3)],
    ]
    spi = _RecordingSPI()
    assert spi.transfer([[b"\x9f\x00", 2]]) == [b"\xaa\xaa"]
    assert [list(x) for x in spi.seen] == [[SPIXfer(b"\x9f\x00", 2)]]
