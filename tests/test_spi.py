"""SPI end to end: bridge.drivers.spi against the lab's spi0 flash through a real server.

Command codes and expected bytes are the W25Q128JV datasheet's. The lab server is shared by
the session, so every test works in its own flash sector.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterator

import pytest
from bridge.drivers.spi import SPI, SPIError

import bridge
from bridge.client import Client
from bridge.testing import ServerProc

READ, WREN, WRDI, RDSR, PP, SE, JEDEC = 0x03, 0x06, 0x04, 0x05, 0x02, 0x20, 0x9F
BUSY, WEL = 0x01, 0x02


@pytest.fixture
def host(lab: ServerProc) -> Iterator[Client]:
    with bridge.connect(lab.url) as c:
        yield c


@pytest.fixture
def spi(host: Client) -> Iterator[SPI]:
    dev = host.open("spi0")
    assert isinstance(dev, SPI)
    yield dev
    dev.close()


def a24(addr: int) -> bytes:
    return addr.to_bytes(3, "big")


def status(spi: SPI) -> int:
    return int(spi.transfer(bytes([RDSR, 0]))[1])


def wait_ready(spi: SPI) -> None:
    """Poll BUSY like a flash driver does (bounded in count and time)."""
    end = time.monotonic() + 5.0
    for _ in range(10_000):
        if not status(spi) & BUSY or time.monotonic() > end:
            break
        time.sleep(0.002)
    assert not status(spi) & BUSY


def read(spi: SPI, addr: int, n: int) -> bytes:
    return bytes(spi.transfer(bytes([READ]) + a24(addr) + bytes(n))[4:])


def erase(spi: SPI, addr: int) -> None:
    spi.transfer([WREN])
    spi.transfer(bytes([SE]) + a24(addr))
    wait_ready(spi)


def program(spi: SPI, addr: int, data: bytes) -> None:
    spi.transfer([WREN])
    spi.transfer(bytes([PP]) + a24(addr) + data)
    wait_ready(spi)


def test_jedec_id(spi: SPI) -> None:
    assert spi.transfer(bytes([JEDEC, 0, 0, 0])) == b"\xff\xef\x40\x18"
    assert spi.transfer([JEDEC, 0, 0, 0])[1:] == [0xEF, 0x40, 0x18]  # periphery: same type


def test_erase_sets_sector_to_ff(spi: SPI) -> None:
    base = 0x010000
    program(spi, base + 100, b"\x00\x12")
    assert read(spi, base + 100, 2) == b"\x00\x12"
    erase(spi, base + 0x123)  # any address inside the 4 KiB sector
    # spidev moves at most 4096 bytes per message: command + address + 4092 data bytes.
    assert read(spi, base, 4092) + read(spi, base + 4092, 4) == b"\xff" * 4096


def test_program_only_clears_bits_and_wraps_in_page(spi: SPI) -> None:
    base = 0x011000
    erase(spi, base)
    program(spi, base, b"\xf0\x0f\xaa")
    program(spi, base, b"\x3c\x3c\xff")  # ANDed into what is there
    assert read(spi, base, 3) == bytes([0xF0 & 0x3C, 0x0F & 0x3C, 0xAA])
    program(spi, base + 0xFE, b"\x01\x02\x03\x04")  # crosses the 256-byte page end
    assert read(spi, base + 0xFE, 2) == b"\x01\x02"
    assert read(spi, base + 0x100, 2) == b"\xff\xff"  # the next page is untouched
    # 0x03 and 0x04 wrapped to the page start, ANDed into what the first programs left.
    assert read(spi, base, 3) == bytes([0xF0 & 0x3C & 0x03, 0x0F & 0x3C & 0x04, 0xAA])


def test_write_enable_latch_required(spi: SPI) -> None:
    base = 0x012000
    erase(spi, base)
    spi.transfer([WREN])
    assert status(spi) & WEL
    spi.transfer([WRDI])
    assert not status(spi) & WEL
    spi.transfer(bytes([PP]) + a24(base) + b"\x00")  # no WEL: ignored
    spi.transfer(bytes([SE]) + a24(base))
    assert not status(spi) & BUSY
    assert read(spi, base, 1) == b"\xff"
    program(spi, base, b"\x00")
    assert read(spi, base, 1) == b"\x00"
    assert not status(spi) & WEL  # program cleared the latch


def test_busy_after_erase(host: Client, spi: SPI) -> None:
    base = 0x013000
    # One batch: the status read follows the erase within the same host loop iteration.
    with host.batch():
        spi.transfer([WREN])
        spi.transfer(bytes([SE]) + a24(base))
        st = spi.transfer(bytes([RDSR, 0, 0]))
        during = spi.transfer(bytes([READ]) + a24(base) + bytes(2))
    s = st.result()
    assert s[1] & BUSY and s[1] & WEL and s[2] == s[1]  # status repeats while CS is low
    assert during.result()[4:] == b"\xff\xff"  # the chip ignores reads while busy
    wait_ready(spi)
    assert not status(spi) & WEL


def test_transfer_message_under_one_chip_select(spi: SPI) -> None:
    rx = spi.transfer_message([SPI.Transfer([JEDEC]), SPI.Transfer(3)])
    assert rx == [[0xFF], b"\xef\x40\x18"]
    # cs_change between transfers ends the first command: the second is a new one.
    rx = spi.transfer_message([SPI.Transfer([JEDEC], cs_change=True),
                               SPI.Transfer(bytes([JEDEC, 0]))])
    assert rx[1] == b"\xff\xef"


def test_settings_round_trip(spi: SPI) -> None:
    try:
        spi.mode = 3
        spi.max_speed = 1_000_000
        spi.bits_per_word = 8
        assert (spi.mode, spi.max_speed, spi.bits_per_word) == (3, 1_000_000, 8)
        fresh = spi.settings()  # from the host, not the cache
        assert (fresh["mode"] & 3, fresh["max_speed"]) == (3, 1_000_000)
    finally:
        spi.mode = 0
        spi.max_speed = 50_000_000
    assert spi.mode == 0


def test_lsb_first_mirrors_bits_on_the_wire(spi: SPI) -> None:
    spi.lsb_first = True
    try:
        assert spi.lsb_first is True
        assert spi.settings()["mode"] & 0x08  # SPI_LSB_FIRST shows in SPI_IOC_RD_MODE
        # The chip receives 0x9F bit-reversed (0xF9, no command) and answers 0xFF.
        assert spi.transfer(bytes([JEDEC, 0, 0, 0])) == b"\xff" * 4
        # Sending the reversed code makes the chip see 0x9F; its answer comes back reversed.
        rx = spi.transfer(bytes([0xF9, 0, 0, 0]))
        assert rx[1:] == bytes([0xF7, 0x02, 0x18])  # EF 40 18 with bits mirrored
    finally:
        spi.lsb_first = False
    assert spi.transfer(bytes([JEDEC, 0, 0, 0]))[1:] == b"\xef\x40\x18"


def test_spidev_bufsiz_limit(spi: SPI) -> None:
    with pytest.raises(SPIError) as info:
        spi.transfer(bytes(4097))  # spidev's default bufsiz is 4096
    assert info.value.errno == errno.EMSGSIZE
    assert len(spi.transfer(bytes([READ, 0, 0, 0]) + bytes(4092))) == 4096


@pytest.mark.parametrize("call", [
    lambda d: d.transfer("text"),
    lambda d: d.transfer([256]),
    lambda d: d.transfer_message([]),
    lambda d: d.transfer_message([b"\x00"]),
    lambda d: setattr(d, "mode", 4),
    lambda d: setattr(d, "max_speed", 0),
    lambda d: setattr(d, "bits_per_word", 33),
    lambda d: setattr(d, "lsb_first", 1),
    lambda d: SPI.Transfer(b"", speed_hz=-1),
])
def test_arguments_checked_before_any_io(lab: ServerProc,
                                         call: Callable[[SPI], object]) -> None:
    c = bridge.connect(lab.url)
    dev = c.open("spi0")
    c.close()  # any I/O now fails with ConnectionAbortedError, so only validation can raise
    with pytest.raises((ValueError, TypeError)):
        call(dev)


def test_host_rejects_malformed_transfers(host: Client, spi: SPI) -> None:
    h = spi.handle
    for bad in ([], [[b"\x00", 2]], [[b"\x00\x00", 1]], [[b"\x00", True]], [["x", 1]],
                [[None]], [[b"\x00", -1]], "nope"):
        with pytest.raises(OSError) as info:
            host.call("transfer", [h, bad])
        assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        host.call("configure", [h, {"speed": 1}])
    assert info.value.errno == errno.EINVAL
    assert host.call("transfer", [h, [[None, 2]]]) == [b"\xff\xff"]  # tx_buf NULL: zeros out
    with pytest.raises(OSError) as info:
        host.call("transfer", [h, [[bytes(4097), 4097]]])
    assert info.value.errno == errno.EMSGSIZE
