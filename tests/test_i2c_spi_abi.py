"""The posix backends' ctypes images of the kernel structs, checked against the uapi headers
with the C compiler (sizes and offsets), and the pointer fix-ups they build.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.bushost import I2CMsg, SPIXfer
from bridge.ioctl import I2C_M_RD

if sys.platform != "linux":
    pytest.skip("the posix I2C/SPI backends are Linux-only", allow_module_level=True)

from bridge.posix_i2c import build_rdwr, i2c_msg, i2c_rdwr_ioctl_data  # noqa: E402
from bridge.posix_spi import build_message, spi_ioc_transfer  # noqa: E402

_LAYOUTS: dict[str, tuple[type[ctypes.Structure], list[str]]] = {
    "struct i2c_msg": (i2c_msg, ["addr", "flags", "len", "buf"]),
    "struct i2c_rdwr_ioctl_data": (i2c_rdwr_ioctl_data, ["msgs", "nmsgs"]),
    "struct spi_ioc_transfer": (spi_ioc_transfer, [
        "tx_buf", "rx_buf", "len", "speed_hz", "delay_usecs", "bits_per_word", "cs_change",
        "tx_nbits", "rx_nbits", "word_delay_usecs", "pad"]),
}


def test_layouts_match_kernel_headers(tmp_path: Path) -> None:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) on PATH")
    lines = []
    for cname, (_, fields) in _LAYOUTS.items():
        lines.append(f'printf("{cname} size %zu\\n", sizeof({cname}));')
        for f in fields:
            lines.append(f'printf("{cname} {f} %zu\\n", offsetof({cname}, {f}));')
    src = tmp_path / "abi.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/i2c.h>\n"
                   "#include <linux/i2c-dev.h>\n#include <linux/spi/spidev.h>\n"
                   "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    built = subprocess.run(["cc", "-o", str(tmp_path / "abi"), str(src)],
                           capture_output=True, text=True, check=False)
    if built.returncode != 0:
        pytest.skip(f"kernel headers unavailable: {built.stderr.strip()[:200]}")
    out = subprocess.run([str(tmp_path / "abi")], capture_output=True, text=True, check=True)
    checked = 0
    for line in out.stdout.splitlines():
        *name, what, value = line.split()
        ctype = _LAYOUTS[" ".join(name)][0]
        expected = ctypes.sizeof(ctype) if what == "size" else getattr(ctype, what).offset
        assert expected == int(value), line
        checked += 1
    assert checked == sum(len(f) + 1 for _, f in _LAYOUTS.values())
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert ctypes.sizeof(i2c_msg) == 16 and ctypes.sizeof(spi_ioc_transfer) == 32


def test_rdwr_points_each_message_at_its_own_buffer() -> None:
    msgs = [I2CMsg(0x50, 0, b"\x10\x20", 2), I2CMsg(0x50, I2C_M_RD, b"", 3)]
    arg, bufs, array = build_rdwr(msgs)
    assert arg.nmsgs == 2
    assert ctypes.addressof(arg.msgs.contents) == ctypes.addressof(array)
    assert (array[0].addr, array[0].flags, array[0].len) == (0x50, 0, 2)
    assert (array[1].addr, array[1].flags, array[1].len) == (0x50, I2C_M_RD, 3)
    assert ctypes.string_at(array[0].buf, 2) == b"\x10\x20"
    assert ctypes.cast(array[1].buf, ctypes.c_void_p).value == ctypes.addressof(bufs[1])
    assert ctypes.cast(array[0].buf, ctypes.c_void_p).value != \
        ctypes.cast(array[1].buf, ctypes.c_void_p).value


def test_spi_message_fixups() -> None:
    xfers = [SPIXfer(b"\x9f", 1, speed_hz=1000, cs_change=True), SPIXfer(None, 3)]
    array, bufs = build_message(xfers)
    assert ctypes.sizeof(array) == 64
    assert array[0].len == 1 and array[0].speed_hz == 1000 and array[0].cs_change == 1
    assert ctypes.string_at(array[0].tx_buf, 1) == b"\x9f"
    assert array[1].tx_buf == 0  # NULL: spidev clocks out zeros
    assert array[0].rx_buf == ctypes.addressof(bufs[0])
    assert array[1].rx_buf == ctypes.addressof(bufs[1])
