# Manifest validation: every bad manifest is a ManifestError that names the file and the
# entry; good manifests give the DeviceSpecs their text describes.
from __future__ import annotations

from pathlib import Path

import pytest

from bridge.backend import Access
from bridge.ioctl import Direction
from bridge.manifest import ManifestError, load

BAD = {
    "not toml": ("[devices.a\nkind = 1", None),
    "unknown top-level table": ("[serverz]\nlisten = ':1'\n", "serverz"),
    "server not a table": ("server = 3\n", "[server]"),
    "listen not a string": ("[server]\nlisten = 7420\n", "[server]"),
    "max_frame too small": ("[server]\nmax_frame = 10\n", "[server]"),
    "max_frame not an int": ("[server]\nmax_frame = \"big\"\n", "[server]"),
    "devices not a table": ("devices = [1]\n", "[devices]"),
    "device not a table": ("[devices]\ntty0 = 3\n", "devices.tty0"),
    "no kind": ("[devices.tty0]\npath = \"/dev/null\"\n", "devices.tty0"),
    "unknown kind": ("[devices.tty0]\nkind = \"teapot\"\npath = \"/dev/null\"\n",
                     "devices.tty0"),
    "posix without path": ("[devices.tty0]\nkind = \"node\"\n", "devices.tty0"),
    "sim without model": ("[devices.s]\nkind = \"node\"\nbackend = \"sim\"\n", "devices.s"),
    "relative path": ("[devices.tty0]\nkind = \"node\"\npath = \"dev/null\"\n", "devices.tty0"),
    "dotdot path": ("[devices.tty0]\nkind = \"node\"\npath = \"/dev/../etc/shadow\"\n",
                    "devices.tty0"),
    "dot path": ("[devices.tty0]\nkind = \"node\"\npath = \"/dev/./null\"\n", "devices.tty0"),
    "path not a string": ("[devices.tty0]\nkind = \"node\"\npath = 5\n", "devices.tty0"),
    "bad access": ("[devices.tty0]\nkind = \"node\"\npath = \"/dev/null\"\naccess = \"rwx\"\n",
                   "devices.tty0"),
    "unknown ioctl": ("[devices.tty0]\nkind = \"node\"\npath = \"/dev/null\"\n"
                      "ioctls = [\"TCGETZ\"]\n", "devices.tty0"),
    "ioctl size too big": ("[devices.tty0]\nkind = \"node\"\npath = \"/dev/null\"\n"
                           "ioctls = [{name = \"X\", request = 1, size = 100000, "
                           "direction = \"out\"}]\n", "devices.tty0"),
    "ioctl bad direction": ("[devices.tty0]\nkind = \"node\"\npath = \"/dev/null\"\n"
                            "ioctls = [{name = \"X\", request = 1, size = 4, "
                            "direction = \"sideways\"}]\n", "devices.tty0"),
    "ioctl not a name or table": ("[devices.tty0]\nkind = \"node\"\npath = \"/dev/null\"\n"
                                  "ioctls = [5]\n", "devices.tty0"),
    "bad file_type": ("[devices.tty0]\nkind = \"node\"\npath = \"/dev/null\"\n"
                      "file_type = \"directory\"\n", "devices.tty0"),
    "bad device name": ("[devices.\"a b\"]\nkind = \"node\"\npath = \"/dev/null\"\n",
                        "devices.a b"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifest_names_file_and_entry(tmp_path: Path, case: str) -> None:
    text, entry = BAD[case]
    f = tmp_path / "host.toml"
    f.write_text(text)
    with pytest.raises(ManifestError) as info:
        load(f)
    msg = str(info.value)
    assert str(f) in msg
    if entry is not None:
        assert entry in msg, msg


def test_manifest_error_is_a_value_error() -> None:
    assert issubclass(ManifestError, ValueError)  # the CLI reports ValueErrors as messages


def test_a_good_manifest(tmp_path: Path) -> None:
    f = tmp_path / "host.toml"
    f.write_text("""
[server]
listen = "0.0.0.0:7000"
max_frame = 65536

[devices.tty0]
kind = "node"
path = "/dev/pts/5"
access = "r"
ioctls = ["TCGETS", {name = "MYIOC", request = 0x80044d01, size = 4, direction = "out"}]
description = "a terminal"
baud = 115200

[devices.sim0]
kind = "node"
sim = "zero"
""")
    m = load(f)
    assert m.listen == "0.0.0.0:7000" and m.max_frame == 65536 and m.source == str(f)
    tty = m.devices["tty0"]
    assert (tty.kind, tty.backend, tty.path, tty.access) == ("node", "posix", "/dev/pts/5",
                                                             Access.READ)
    assert tty.ioctls["TCGETS"].request == 0x5401 and tty.ioctls["TCGETS"].size == 36
    my = tty.find_ioctl(0x80044D01)
    assert (my.name, my.size, my.direction) == ("MYIOC", 4, Direction.OUT)
    assert tty.options == {"baud": 115200}
    assert tty.public()["description"] == "a terminal" and "path" not in tty.public()
    sim = m.devices["sim0"]
    assert (sim.backend, sim.sim, sim.access) == ("sim", "zero", Access.RW)
    with pytest.raises(PermissionError):
        tty.find_ioctl("TCSETS")


def test_merged_refuses_duplicate_names(tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    a.write_text('[devices.zero]\nkind = "node"\nsim = "zero"\n')
    with pytest.raises(ManifestError, match="zero"):
        load(a).merged(load(a))
