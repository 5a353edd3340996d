"""bridge.ioctl: request encoding, the built-in table, manifest entry validation.

The table is cross-checked against the kernel headers with a C compiler when one is there,
and a few codes are exercised for real on a pty pair.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import ioctl
from bridge.ioctl import (
    _IO,
    _IOC,
    _IOR,
    _IOW,
    _IOWR,
    BUILTIN,
    SPI_IOC_MESSAGE,
    Direction,
    IoctlSpec,
    ioc_dir,
    ioc_nr,
    ioc_size,
    ioc_type,
    resolve,
)

# --- encoding -------------------------------------------------------------------------


def test_known_codes() -> None:
    assert _IOR("T", 0x30, 4) == 0x80045430  # TIOCGPTN
    assert _IOW("T", 0x31, 4) == 0x40045431  # TIOCSPTLCK
    assert SPI_IOC_MESSAGE(1) == 0x40206B00
    assert SPI_IOC_MESSAGE(2) == 0x40406B00
    assert _IOWR(0xB4, 0x07, 592) == 0xC250B407  # GPIO_V2_GET_LINE_IOCTL
    assert _IOR(0xB4, 0x01, 68) == 0x8044B401  # GPIO_GET_CHIPINFO_IOCTL
    assert _IOR(0x12, 114, 8) == 0x80081272  # BLKGETSIZE64
    assert _IO("T", 0x01) == 0x5401
    assert _IO(ord("T"), 0x01) == _IO("T", 0x01)
    assert BUILTIN["I2C_SLAVE"].request == 0x0703
    assert BUILTIN["I2C_SLAVE_FORCE"].request == 0x0706
    assert BUILTIN["I2C_FUNCS"].request == 0x0705
    assert BUILTIN["I2C_RDWR"].request == 0x0707
    assert BUILTIN["GPIO_V2_GET_LINE_IOCTL"].request == 0xC250B407


def test_decoders() -> None:
    code = _IOWR(0xB4, 0x07, 592)
    assert (ioc_dir(code), ioc_type(code), ioc_nr(code), ioc_size(code)) == (3, 0xB4, 7, 592)


@given(st.integers(0, 3), st.integers(0, 255), st.integers(0, 255), st.integers(0, ioctl.MAX_SIZE))
def test_encode_decode_roundtrip(d: int, t: int, nr: int, size: int) -> None:
    code = _IOC(d, t, nr, size)
    assert 0 <= code <= 0xFFFFFFFF
    assert (ioc_dir(code), ioc_type(code), ioc_nr(code), ioc_size(code)) == (d, t, nr, size)


@pytest.mark.parametrize(
    "args", [(4, "T", 0, 0), (0, 256, 0, 0), (0, "T", 256, 0), (0, "T", 0, 16384), (0, "T", -1, 0)]
)
def test_ioc_rejects_out_of_range(args: tuple[int, str | int, int, int]) -> None:
    with pytest.raises(ValueError):
        _IOC(*args)


# --- the table and resolve ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_resolve_builtin(name: str) -> None:
    spec = resolve(name)
    assert spec is BUILTIN[name]
    assert spec.name == name
    assert IoctlSpec.from_wire(spec.to_wire()) == spec
    assert resolve(spec.to_wire()) == spec
    if spec.by_value:
        assert spec.direction is Direction.NONE and spec.size == 0
    # Codes built with _IOC must agree with their own direction and size bits.
    d = ioc_dir(spec.request)
    if d:
        expected = {1: Direction.IN, 2: Direction.OUT, 3: Direction.INOUT}[d]
        assert spec.direction is expected
        assert spec.size == ioc_size(spec.request)


def test_alias_and_sizes() -> None:
    assert BUILTIN["TIOCINQ"].request == BUILTIN["FIONREAD"].request
    assert BUILTIN["TCGETS"].size == 36  # kernel struct termios, not glibc's 60
    assert BUILTIN["TCGETS2"].size == 44
    assert BUILTIN["TIOCGWINSZ"].size == 8


def test_resolve_spi_message() -> None:
    spec = resolve("SPI_IOC_MESSAGE(3)")
    assert spec.request == SPI_IOC_MESSAGE(3)
    assert (spec.size, spec.direction) == (96, Direction.IN)
    for bad in ("SPI_IOC_MESSAGE(0)", "SPI_IOC_MESSAGE(512)"):
        with pytest.raises(ValueError, match="transfer count"):
            resolve(bad)


def test_resolve_inline() -> None:
    spec = resolve({"name": "MYGET", "request": 0x80046D01, "size": 4, "direction": "out"})
    assert spec == IoctlSpec("MYGET", 0x80046D01, 4, Direction.OUT)
    spec = resolve({"name": "MYSET", "request": 0x6D02, "size": 0, "direction": "none",
                    "by_value": True})  # fmt: skip
    assert spec.by_value and spec.direction is Direction.NONE
    assert resolve({"name": "X", "request": 0, "size": 16383, "direction": "inout"}).size == 16383


def test_to_wire_shape() -> None:
    assert BUILTIN["TCFLSH"].to_wire() == {
        "name": "TCFLSH",
        "request": 0x540B,
        "size": 0,
        "direction": "none",
        "by_value": True,
    }


def test_unknown_name_suggests() -> None:
    with pytest.raises(ValueError, match="TCGETZ") as info:
        resolve("TCGETZ")
    assert "TCGETS" in str(info.value)


_GOOD: dict[str, object] = {"name": "MYIOC", "request": 0x1234, "size": 4, "direction": "in"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size": -1}, "size"),
        ({"size": 16384}, "size"),
        ({"size": "4"}, "integer"),
        ({"size": True}, "integer"),
        ({"request": -1}, "request"),
        ({"request": 0x1_0000_0000}, "request"),
        ({"request": 1.5}, "integer"),
        ({"direction": "sideways"}, "direction"),
        ({"direction": None}, "direction"),
        ({"direction": "none"}, "none"),
        ({"size": 0}, "size > 0"),
        ({"size": 0, "direction": "out"}, "size > 0"),
        ({"by_value": "yes"}, "by_value"),
        ({"by_value": True}, "by-value"),
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
        ({"extra": 1}, "unknown keys"),
    ],
)
def test_resolve_inline_errors(change: dict[str, object], message: str) -> None:
    entry = {**_GOOD, **change}
    with pytest.raises(ValueError, match=message) as info:
        resolve(entry)
    assert "ioctl entry" in str(info.value)
    if isinstance(entry["name"], str) and entry["name"]:
        assert "MYIOC" in str(info.value)


@pytest.mark.parametrize("missing", ["request", "size", "direction", "name"])
def test_resolve_inline_missing(missing: str) -> None:
    entry = {k: v for k, v in _GOOD.items() if k != missing}
    with pytest.raises(ValueError, match="ioctl entry"):
        resolve(entry)


def test_resolve_rejects_other_types() -> None:
    with pytest.raises(ValueError):
        resolve(42)  # type: ignore[arg-type]


def test_no_platform_imports() -> None:
    code = (
        "import sys\n"
        "for m in ('fcntl', 'termios', 'resource'):\n"
        "    sys.modules[m] = None\n"
        "import bridge.ioctl\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --- cross-check against the kernel headers ------------------------------------------------

_HEADERS = [
    "asm/termios.h",
    "asm/ioctls.h",
    "linux/serial.h",
    "linux/random.h",
    "linux/fs.h",
    "linux/i2c.h",
    "linux/i2c-dev.h",
    "linux/spi/spidev.h",
    "linux/gpio.h",
]

# The C type behind each argument buffer; every sized built-in must be listed.
_C_SIZE = {
    "TCGETS": "struct termios",
    "TCSETS": "struct termios",
    "TCSETSW": "struct termios",
    "TCSETSF": "struct termios",
    "TIOCGPGRP": "int",  # pid_t, 4 bytes on Linux
    "TIOCOUTQ": "int",
    "TIOCGWINSZ": "struct winsize",
    "TIOCSWINSZ": "struct winsize",
    "TIOCMGET": "int",
    "TIOCMBIS": "int",
    "TIOCMBIC": "int",
    "TIOCMSET": "int",
    "FIONREAD": "int",
    "TIOCINQ": "int",
    "TIOCGSERIAL": "struct serial_struct",
    "FIONBIO": "int",
    "TCGETS2": "struct termios2",
    "TCSETS2": "struct termios2",
    "TIOCGPTN": "unsigned int",
    "TIOCSPTLCK": "int",
    "RNDGETENTCNT": "int",
    "RNDADDTOENTCNT": "int",
    "BLKGETSIZE64": "__u64",
    "I2C_FUNCS": "unsigned long",
    "I2C_RDWR": "struct i2c_rdwr_ioctl_data",
    "SPI_IOC_RD_MODE": "__u8",
    "SPI_IOC_WR_MODE": "__u8",
    "SPI_IOC_RD_LSB_FIRST": "__u8",
    "SPI_IOC_WR_LSB_FIRST": "__u8",
    "SPI_IOC_RD_BITS_PER_WORD": "__u8",
    "SPI_IOC_WR_BITS_PER_WORD": "__u8",
    "SPI_IOC_RD_MAX_SPEED_HZ": "__u32",
    "SPI_IOC_WR_MAX_SPEED_HZ": "__u32",
    "SPI_IOC_RD_MODE32": "__u32",
    "SPI_IOC_WR_MODE32": "__u32",
    "GPIO_GET_CHIPINFO_IOCTL": "struct gpiochip_info",
    "GPIO_V2_GET_LINEINFO_IOCTL": "struct gpio_v2_line_info",
    "GPIO_V2_GET_LINE_IOCTL": "struct gpio_v2_line_request",
    "GPIO_V2_LINE_SET_CONFIG_IOCTL": "struct gpio_v2_line_config",
    "GPIO_V2_LINE_GET_VALUES_IOCTL": "struct gpio_v2_line_values",
    "GPIO_V2_LINE_SET_VALUES_IOCTL": "struct gpio_v2_line_values",
}


def _compile(tmp: Path, body: str, name: str) -> subprocess.CompletedProcess[str]:
    includes = "".join(f"#include <{h}>\n" for h in _HEADERS)
    src = tmp / f"{name}.c"
    src.write_text(f"#include <stdio.h>\n{includes}\nint main(void) {{\n{body}\nreturn 0;\n}}\n")
    return subprocess.run(
        ["cc", "-o", str(tmp / name), str(src)], capture_output=True, text=True, check=False
    )


@pytest.fixture
def c_program(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) on PATH")
    if sys.platform != "linux":
        pytest.skip("kernel headers are Linux-only")
    probe = _compile(tmp_path, "", "probe")
    if probe.returncode != 0:
        pytest.skip(f"kernel headers unavailable: {probe.stderr.strip()[:200]}")
    yield tmp_path


def test_table_matches_kernel_headers(c_program: Path) -> None:
    if struct.calcsize("P") != 8:
        pytest.skip("table sizes are for 64-bit hosts")
    sized = {name for name, spec in BUILTIN.items() if spec.size}
    assert sized == set(_C_SIZE), "every sized built-in needs its C type in _C_SIZE"
    lines = []
    for name in sorted(BUILTIN):
        size = f"sizeof({_C_SIZE[name]})" if name in _C_SIZE else "0"
        lines.append(f'printf("%s %lu %lu\\n", "{name}", (unsigned long)({name}), '
                     f"(unsigned long)({size}));")  # fmt: skip
    for n in (1, 2, 511):
        lines.append(f'printf("SPI_IOC_MESSAGE({n}) %lu %lu\\n", '
                     f"(unsigned long)SPI_IOC_MESSAGE({n}), (unsigned long)({n} * "
                     "sizeof(struct spi_ioc_transfer)));")  # fmt: skip
    built = _compile(c_program, "\n".join(lines), "check")
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(c_program / "check")], capture_output=True, text=True, check=True)
    seen = 0
    for line in out.stdout.splitlines():
        name, code, size = line.split()
        spec = resolve(name)
        assert (spec.request, spec.size) == (int(code), int(size)), name
        seen += 1
    assert seen == len(BUILTIN) + 3


# --- real ioctls on a pty pair ---------------------------------------------------------


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    if sys.platform != "linux":
        pytest.skip("built-in codes are the Linux ones")
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def test_tcgets_on_pty(pty_pair: tuple[int, int]) -> None:
    import fcntl
    import termios

    _, slave = pty_pair
    spec = BUILTIN["TCGETS"]
    buf = fcntl.ioctl(slave, spec.request, bytes(spec.size))
    assert len(buf) == spec.size
    iflag, oflag, cflag, lflag = struct.unpack("=4I", buf[:16])
    assert [iflag, oflag, cflag, lflag] == termios.tcgetattr(slave)[:4]


def test_tiocgwinsz_on_pty(pty_pair: tuple[int, int]) -> None:
    import fcntl

    _, slave = pty_pair
    fcntl.ioctl(slave, BUILTIN["TIOCSWINSZ"].request, struct.pack("=4H", 24, 80, 0, 0))
    spec = BUILTIN["TIOCGWINSZ"]
    buf = fcntl.ioctl(slave, spec.request, bytes(spec.size))
    assert len(buf) == 8
    assert struct.unpack("=4H", buf)[:2] == (24, 80)


def test_fionread_on_pty(pty_pair: tuple[int, int]) -> None:
    import fcntl
    import select
    import time
    import tty

    master, slave = pty_pair
    tty.setraw(slave)
    os.write(master, b"hello")
    spec = BUILTIN["FIONREAD"]
    deadline = time.monotonic() + 5.0
    count = 0
    while time.monotonic() < deadline:
        select.select([slave], [], [], 0.1)
        (count,) = struct.unpack("=i", fcntl.ioctl(slave, spec.request, bytes(spec.size)))
        if count == 5:
            break
    assert count == 5
    assert os.read(slave, 16) == b"hello"
