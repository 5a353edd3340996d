# The posix I2C backend: /dev/i2c-N through i2c-dev's I2C_RDWR and I2C_FUNCS ioctls.
#
# Owns: the ctypes images of struct i2c_msg and struct i2c_rdwr_ioctl_data, and the pointer
# fix-ups: clients send data and lengths, never addresses; this module allocates the
# buffers, points each i2c_msg at its own, and reads the read messages back after the
# ioctl. Must not know about the wire or sessions (bridge/bushost.py owns the operations).
from __future__ import annotations

import ctypes
import errno
import fcntl
import threading
from collections.abc import Sequence
from typing import Any

from .backend import Access
from .bushost import I2CHandle, I2CMsg
from .ioctl import BUILTIN, I2C_M_RD, I2C_M_RECV_LEN
from .manifest import DeviceSpec
from .posix import FdOwner, PosixBackend, open_fd

I2C_RDWR = BUILTIN["I2C_RDWR"].request
I2C_FUNCS = BUILTIN["I2C_FUNCS"].request


class i2c_msg(ctypes.Structure):
    """struct i2c_msg, include/uapi/linux/i2c.h (16 bytes on 64-bit, 12 on 32-bit)."""

    _fields_ = [
        ("addr", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("len", ctypes.c_uint16),
        ("buf", ctypes.POINTER(ctypes.c_uint8)),
    ]


class i2c_rdwr_ioctl_data(ctypes.Structure):
    """struct i2c_rdwr_ioctl_data, include/uapi/linux/i2c-dev.h: the I2C_RDWR argument."""

    _fields_ = [
        ("msgs", ctypes.POINTER(i2c_msg)),
        ("nmsgs", ctypes.c_uint32),
    ]


def build_rdwr(msgs: Sequence[I2CMsg]) -> tuple[i2c_rdwr_ioctl_data, list[Any], Any]:
    """The I2C_RDWR argument for ``msgs``, its message buffers and the i2c_msg array.

    Every buffer is owned by this process; the caller must keep the returned objects alive
    across the ioctl, since the kernel follows the pointers.
    """
    array = (i2c_msg * len(msgs))()
    bufs: list[Any] = []
    for i, m in enumerate(msgs):
        size = m.length
        if m.flags & I2C_M_RECV_LEN:
            # The first byte read is the count (SMBus block read): room for 32 more.
            size = max(size, 1 + 32)
        buf = (ctypes.c_uint8 * max(size, 1))()
        if not m.read:
            ctypes.memmove(buf, m.data, len(m.data))
        elif m.flags & I2C_M_RECV_LEN:
            buf[0] = m.length  # i2c-dev needs the initial length in buf[0]
        bufs.append(buf)
        array[i].addr = m.addr
        array[i].flags = m.flags
        array[i].len = m.length
        array[i].buf = ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint8))
    return i2c_rdwr_ioctl_data(array, len(msgs)), bufs, array


class PosixI2C(FdOwner, I2CHandle):
    """An open /dev/i2c-N."""

    def __init__(self, spec: DeviceSpec, access: Access, fd: int) -> None:
        super().__init__(spec, access)
        self.fd = fd
        self._lock = threading.Lock()

    def do_transfer(self, msgs: Sequence[I2CMsg]) -> list[bytes]:
        arg, bufs, array = build_rdwr(msgs)
        with self._lock:
            self._check_open()
            fcntl.ioctl(self.fd, I2C_RDWR, arg, True)
        out = []
        for i, m in enumerate(msgs):
            if m.read:
                n = array[i].len  # I2C_M_RECV_LEN: the kernel stores the real length
                out.append(ctypes.string_at(bufs[i], n))
        return out

    def do_funcs(self) -> int:
        value = ctypes.c_ulong(0)
        with self._lock:
            self._check_open()
            fcntl.ioctl(self.fd, I2C_FUNCS, value, True)
        return int(value.value)



def open_device(backend: PosixBackend, spec: DeviceSpec, access: Access) -> PosixI2C:
    """Open the manifest's /dev/i2c-N with the rights the connection asked for."""
    if not access & Access.READ:
        raise PermissionError(errno.EACCES, "an I2C adapter needs read access")
    fd = open_fd(spec, backend.path(spec), access)
    return PosixI2C(spec, access, fd)


__all__ = ["I2C_FUNCS", "I2C_M_RD", "I2C_RDWR", "PosixI2C", "build_rdwr", "i2c_msg",
           "i2c_rdwr_ioctl_data", "open_device"]
