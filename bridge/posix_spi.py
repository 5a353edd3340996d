# The posix SPI backend: /dev/spidevB.C through spidev's SPI_IOC_MESSAGE(n) and its
# SPI_IOC_RD_*/SPI_IOC_WR_* settings ioctls.
#
# Owns: the ctypes image of struct spi_ioc_transfer and the pointer fix-ups (tx_buf and
# rx_buf point at buffers this module allocates; clients never send addresses). Must not
# know about the wire or sessions (bridge/bushost.py owns the operations).
from __future__ import annotations

import ctypes
import errno
import fcntl
import threading
from collections.abc import Sequence
from typing import Any

from .backend import Access
from .bushost import SPIHandle, SPIXfer
from .ioctl import BUILTIN, SPI_IOC_MESSAGE
from .manifest import DeviceSpec
from .posix import FdOwner, PosixBackend, open_fd


class spi_ioc_transfer(ctypes.Structure):
    """struct spi_ioc_transfer, include/uapi/linux/spi/spidev.h (32 bytes everywhere)."""

    _fields_ = [
        ("tx_buf", ctypes.c_uint64),
        ("rx_buf", ctypes.c_uint64),
        ("len", ctypes.c_uint32),
        ("speed_hz", ctypes.c_uint32),
        ("delay_usecs", ctypes.c_uint16),
        ("bits_per_word", ctypes.c_uint8),
        ("cs_change", ctypes.c_uint8),
        ("tx_nbits", ctypes.c_uint8),
        ("rx_nbits", ctypes.c_uint8),
        ("word_delay_usecs", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


# name -> (read request, write request, C type of the argument)
_SETTINGS: dict[str, tuple[int, int, type[ctypes.c_uint8] | type[ctypes.c_uint32]]] = {
    "mode": (BUILTIN["SPI_IOC_RD_MODE"].request, BUILTIN["SPI_IOC_WR_MODE"].request,
             ctypes.c_uint8),
    "lsb_first": (BUILTIN["SPI_IOC_RD_LSB_FIRST"].request,
                  BUILTIN["SPI_IOC_WR_LSB_FIRST"].request, ctypes.c_uint8),
    "bits_per_word": (BUILTIN["SPI_IOC_RD_BITS_PER_WORD"].request,
                      BUILTIN["SPI_IOC_WR_BITS_PER_WORD"].request, ctypes.c_uint8),
    "max_speed": (BUILTIN["SPI_IOC_RD_MAX_SPEED_HZ"].request,
                  BUILTIN["SPI_IOC_WR_MAX_SPEED_HZ"].request, ctypes.c_uint32),
}


def build_message(xfers: Sequence[SPIXfer]) -> tuple[Any, list[Any]]:
    """The SPI_IOC_MESSAGE(n) argument for ``xfers`` and the rx buffers it points at.

    Keep both alive across the ioctl: the kernel follows tx_buf and rx_buf.
    """
    array = (spi_ioc_transfer * len(xfers))()
    keep: list[Any] = []
    rx: list[Any] = []
    for i, x in enumerate(xfers):
        t = array[i]
        rbuf = (ctypes.c_uint8 * max(x.length, 1))()
        rx.append(rbuf)
        t.rx_buf = ctypes.addressof(rbuf)
        if x.tx is not None:
            tbuf = ctypes.create_string_buffer(x.tx, max(x.length, 1))
            keep.append(tbuf)
            t.tx_buf = ctypes.addressof(tbuf)
        t.len = x.length
        t.speed_hz = x.speed_hz
        t.delay_usecs = x.delay_usecs
        t.bits_per_word = x.bits_per_word
        t.cs_change = int(x.cs_change)
        t.tx_nbits = x.tx_nbits
        t.rx_nbits = x.rx_nbits
        t.word_delay_usecs = x.word_delay_usecs
    keep.append(array)
    return array, rx + keep


class PosixSPI(FdOwner, SPIHandle):
    """An open /dev/spidevB.C."""

    def __init__(self, spec: DeviceSpec, access: Access, fd: int) -> None:
        super().__init__(spec, access)
        self.fd = fd
        self._lock = threading.Lock()

    def do_message(self, xfers: Sequence[SPIXfer]) -> list[bytes]:
        array, bufs = build_message(xfers)
        with self._lock:
            self._check_open()
            fcntl.ioctl(self.fd, SPI_IOC_MESSAGE(len(xfers)), array, True)
        return [ctypes.string_at(bufs[i], x.length) for i, x in enumerate(xfers)]

    def read_settings(self) -> dict[str, int | bool]:
        out: dict[str, int | bool] = {}
        with self._lock:
            self._check_open()
            for name, (rd, _, ctype) in _SETTINGS.items():
                value = ctype(0)
                fcntl.ioctl(self.fd, rd, value, True)
                out[name] = int(value.value)
        out["lsb_first"] = bool(out["lsb_first"])
        return out

    def write_setting(self, name: str, value: int) -> None:
        _, wr, ctype = _SETTINGS[name]
        with self._lock:
            self._check_open()
            fcntl.ioctl(self.fd, wr, ctype(value), True)



def open_device(backend: PosixBackend, spec: DeviceSpec, access: Access) -> PosixSPI:
    """Open the manifest's /dev/spidevB.C with the rights the connection asked for."""
    if not access:
        raise PermissionError(errno.EACCES, "opening a SPI device needs some access")
    return PosixSPI(spec, access, open_fd(spec, backend.path(spec), access))


__all__ = ["PosixSPI", "build_message", "open_device", "spi_ioc_transfer"]
