# The client side imports on Windows: in a fresh interpreter where fcntl, termios and
# resource cannot be imported, bridge, its client-side modules and every driver module in
# drivers/ (globbed, so drivers added later are covered) import cleanly.
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bridge.drivers
import pytest

CLIENT_MODULES = ["bridge", "bridge.client", "bridge.connect", "bridge.batch", "bridge.protocol",
                  "bridge.messages", "bridge.url", "bridge.timeout", "bridge.ioctl",
                  "bridge.leaseclient", "bridge.reader"]
DRIVERS = sorted(p.stem for p in Path(bridge.drivers.__file__).parent.glob("*.py")
                 if p.stem != "__init__")
BLOCKED = ("fcntl", "termios", "resource")
# Third-party dependencies that pick their platform backend at import time: on Windows
# pyserial loads serialwin32, here it loads serialposix (which needs fcntl), so they are
# imported before the block goes up. Only our own modules are under test.
THIRD_PARTY = ("serial",)

PROLOGUE = (
    "import sys\n"
    f"for name in {THIRD_PARTY!r}:\n"
    "    try:\n"
    "        __import__(name)\n"
    "    except ImportError:\n"
    "        pass\n"
    f"for name in {BLOCKED!r}:\n"
    "    sys.modules[name] = None  # import raises ImportError, as on Windows\n"
    "import importlib\n"
)


def _import_without_posix(modules: list[str]) -> subprocess.CompletedProcess[str]:
    code = PROLOGUE + "".join(f"importlib.import_module({m!r})\n" for m in modules) + (
        f"assert all(sys.modules.get(n) is None for n in {BLOCKED!r})\n"
        "print('ok')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_the_block_works() -> None:
    """The same prologue does make a POSIX-only module fail (so the test below can fail)."""
    r = _import_without_posix(["tty"])
    assert r.returncode != 0 and "halted; None in sys.modules" in r.stderr


def test_drivers_are_found() -> None:
    assert "node" in DRIVERS


@pytest.mark.parametrize("module", CLIENT_MODULES + [f"bridge.drivers.{d}" for d in DRIVERS])
def test_imports_without_fcntl_termios_resource(module: str) -> None:
    r = _import_without_posix([module])
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_all_client_modules_together() -> None:
    r = _import_without_posix(CLIENT_MODULES + [f"bridge.drivers.{d}" for d in DRIVERS])
    assert r.returncode == 0, r.stderr
