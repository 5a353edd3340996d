"""Shared by the umockdev kernel-interface tiers (tests/test_umockdev_*.py): loading umockdev's
GI bindings (or skipping with the reason), the GLib loop that answers a child's ioctls, and
running a child process under libumockdev-preload.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PRELOAD = "libumockdev-preload.so.0"
_LIBDIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
ROOT = Path(__file__).resolve().parent.parent


def load_umockdev() -> Any:
    """(GLib, UMockdev) from PyGObject, or skip the calling test with what is missing."""
    if sys.platform != "linux":
        pytest.skip("umockdev is Linux-only")
    if not any(os.path.exists(os.path.join(d, PRELOAD)) for d in _LIBDIRS):
        pytest.skip(f"{PRELOAD} not installed (Debian: umockdev; `make test-deps` as root)")
    if "/usr/lib/python3/dist-packages" not in sys.path:
        sys.path.append("/usr/lib/python3/dist-packages")  # PyGObject from python3-gi
    try:
        import gi  # type: ignore[import-not-found]

        gi.require_version("UMockdev", "1.0")
        from gi.repository import GLib, UMockdev  # type: ignore[import-not-found]
    except (ImportError, ValueError) as e:
        pytest.skip(f"PyGObject with UMockdev-1.0 not available ({e}); Debian: python3-gi "
                    "gir1.2-umockdev-1.0, or `make test-deps` as root")
    return GLib, UMockdev


@contextmanager
def serving(glib: Any) -> Iterator[None]:
    """Run a GLib main loop on a thread: umockdev delivers each ioctl/read to it."""
    loop = glib.MainLoop()
    thread = threading.Thread(target=loop.run, daemon=True, name="umockdev-ioctl")
    thread.start()
    try:
        yield
    finally:
        loop.quit()
        thread.join(10)


def run_child(testbed: Any, argv: list[str], started: Callable[[int], None] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python argv...`` from the repository root inside ``testbed``; ``started(pid)``
    is called as soon as the child exists."""
    env = {**os.environ, "LD_PRELOAD": PRELOAD, "UMOCKDEV_DIR": testbed.get_root_dir()}
    with subprocess.Popen([sys.executable, *argv], env=env, cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        if started is not None:
            started(proc.pid)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"umockdev child timed out; stderr: {err[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
