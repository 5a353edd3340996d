"""bridge.gpio_uapi against the kernel's own header: sizes, field offsets and flag values.

This machine's kernel has no GPIO support (CONFIG_GPIOLIB unset, no gpio-sim), so the
posix ioctl path cannot run against a chip here; the ctypes structures it passes to the
kernel are instead compared with <linux/gpio.h> through the C compiler.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import gpio_uapi as u
from bridge.ioctl import BUILTIN

# (ctypes structure, C struct, [(python field path, C member path)])
_LAYOUTS: list[tuple[type[ctypes.Structure], str, list[tuple[str, str]]]] = [
    (u.GpiochipInfo, "struct gpiochip_info", [("name", "name"), ("label", "label"),
                                              ("lines", "lines")]),
    (u.LineValues, "struct gpio_v2_line_values", [("bits", "bits"), ("mask", "mask")]),
    (u.LineAttribute, "struct gpio_v2_line_attribute", [("id", "id"), ("u", "flags")]),
    (u.LineConfigAttribute, "struct gpio_v2_line_config_attribute",
     [("attr", "attr"), ("mask", "mask")]),
    (u.LineConfig, "struct gpio_v2_line_config",
     [("flags", "flags"), ("num_attrs", "num_attrs"), ("padding", "padding"),
      ("attrs", "attrs")]),
    (u.LineRequest, "struct gpio_v2_line_request",
     [("offsets", "offsets"), ("consumer", "consumer"), ("config", "config"),
      ("num_lines", "num_lines"), ("event_buffer_size", "event_buffer_size"),
      ("padding", "padding"), ("fd", "fd")]),
    (u.LineInfo, "struct gpio_v2_line_info",
     [("name", "name"), ("consumer", "consumer"), ("offset", "offset"),
      ("num_attrs", "num_attrs"), ("flags", "flags"), ("attrs", "attrs"),
      ("padding", "padding")]),
    (u.LineEvent, "struct gpio_v2_line_event",
     [("timestamp_ns", "timestamp_ns"), ("id", "id"), ("offset", "offset"),
      ("seqno", "seqno"), ("line_seqno", "line_seqno"), ("padding", "padding")]),
]

_CONSTANTS = {**{f"GPIO_V2_LINE_FLAG_{f.name}": int(f) for f in u.LineFlag},
              **{f"GPIO_V2_LINE_ATTR_ID_{a.name}": int(a) for a in u.AttrId},
              **{f"GPIO_V2_LINE_EVENT_{e.name}": int(e) for e in u.EventId},
              "GPIO_MAX_NAME_SIZE": u.GPIO_MAX_NAME_SIZE,
              "GPIO_V2_LINES_MAX": u.GPIO_V2_LINES_MAX,
              "GPIO_V2_LINE_NUM_ATTRS_MAX": u.GPIO_V2_LINE_NUM_ATTRS_MAX}


def test_sizes_match_the_ioctl_table() -> None:
    assert ctypes.sizeof(u.LineEvent) == 48
    assert ctypes.sizeof(u.GpiochipInfo) == BUILTIN["GPIO_GET_CHIPINFO_IOCTL"].size
    assert ctypes.sizeof(u.LineInfo) == BUILTIN["GPIO_V2_GET_LINEINFO_IOCTL"].size
    assert ctypes.sizeof(u.LineRequest) == BUILTIN["GPIO_V2_GET_LINE_IOCTL"].size
    assert ctypes.sizeof(u.LineConfig) == BUILTIN["GPIO_V2_LINE_SET_CONFIG_IOCTL"].size
    assert ctypes.sizeof(u.LineValues) == BUILTIN["GPIO_V2_LINE_GET_VALUES_IOCTL"].size


def test_layout_matches_linux_gpio_h(tmp_path: Path) -> None:
    if shutil.which("cc") is None or sys.platform != "linux":
        pytest.skip("needs a C compiler and the Linux uAPI headers")
    lines = []
    expected = []
    for cls, cname, fields in _LAYOUTS:
        lines.append(f'printf("%lu\\n", (unsigned long)sizeof({cname}));')
        expected.append(ctypes.sizeof(cls))
        for py, c in fields:
            lines.append(f'printf("%lu\\n", (unsigned long)offsetof({cname}, {c}));')
            expected.append(getattr(cls, py).offset)
    for name, value in _CONSTANTS.items():
        lines.append(f'printf("%lu\\n", (unsigned long)({name}));')
        expected.append(value)
    src = tmp_path / "gpio.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <linux/gpio.h>\n"
                   "int main(void) {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    built = subprocess.run(["cc", "-o", str(tmp_path / "gpio"), str(src)],
                           capture_output=True, text=True, check=False)
    if built.returncode != 0 and "gpio.h" in built.stderr:
        pytest.skip(f"no <linux/gpio.h>: {built.stderr.strip()[:200]}")
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(tmp_path / "gpio")], capture_output=True, text=True, check=True)
    assert [int(x) for x in out.stdout.split()] == expected


def test_wire_config_to_kernel_struct() -> None:
    c = u.config_struct(int(u.LineFlag.OUTPUT), [(u.AttrId.OUTPUT_VALUES, 0b10, 0b11),
                                                 (u.AttrId.DEBOUNCE, 500, 0b100)])
    raw = bytes(c)
    assert int.from_bytes(raw[0:8], "little") == u.LineFlag.OUTPUT
    assert int.from_bytes(raw[8:12], "little") == 2  # num_attrs
    # attrs[0] starts after flags, num_attrs and padding[5]: 8 + 4 + 20 = 32
    assert int.from_bytes(raw[32:36], "little") == u.AttrId.OUTPUT_VALUES
    assert int.from_bytes(raw[40:48], "little") == 0b10
    assert int.from_bytes(raw[48:56], "little") == 0b11
    assert int.from_bytes(raw[56:60], "little") == u.AttrId.DEBOUNCE
    assert int.from_bytes(raw[64:68], "little") == 500


@pytest.mark.parametrize("flags", [
    u.LineFlag.INPUT, u.LineFlag.OUTPUT,
    u.LineFlag.INPUT | u.LineFlag.EDGE_RISING | u.LineFlag.EDGE_FALLING,
    u.LineFlag.INPUT | u.LineFlag.BIAS_PULL_UP | u.LineFlag.ACTIVE_LOW,
    u.LineFlag.OUTPUT | u.LineFlag.OPEN_DRAIN | u.LineFlag.BIAS_DISABLED,
    u.LineFlag.INPUT | u.LineFlag.EDGE_RISING | u.LineFlag.EVENT_CLOCK_REALTIME,
    0,  # "as is": no direction given
])
def test_flags_the_kernel_accepts(flags: int) -> None:
    u.validate_flags(int(flags))


def test_first_matching_attribute_wins() -> None:
    attrs = [(1, int(u.LineFlag.OUTPUT), 0b01), (1, int(u.LineFlag.INPUT), 0b11),
             (2, 0b10, 0b10)]
    assert u.line_flags(int(u.LineFlag.INPUT), attrs, 0) == u.LineFlag.OUTPUT
    assert u.line_flags(int(u.LineFlag.INPUT), attrs, 1) == u.LineFlag.INPUT
    assert u.line_flags(int(u.LineFlag.OUTPUT), attrs, 2) == u.LineFlag.OUTPUT
    assert u.line_attr(attrs, 2, 1) == 1 and u.line_attr(attrs, 2, 0) is None
