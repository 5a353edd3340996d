# Path escapes by mount: a file or device bind-mounted over a manifest path after the
# server started is refused (the host pins what each path was at start). Needs a mount
# namespace of the test's own (unshare -m), so nothing outside this test sees the mount;
# skips, with the reason, where mounting is not permitted.
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent.parent


def _can_mount(tmp_path: Path) -> str | None:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return "needs root and unshare(1) for a private mount namespace"
    a, b = tmp_path / "probe-a", tmp_path / "probe-b"
    a.write_text("a")
    b.write_text("b")
    r = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {a} {b}"],
                       capture_output=True, text=True, timeout=30)
    return None if r.returncode == 0 else f"bind mounts are not permitted here: {r.stderr}"


SCRIPT = r"""
import errno, os, subprocess, sys
import bridge
from bridge.testing import start_server
node, other, chardev = sys.argv[1], sys.argv[2], sys.argv[3]
manifest = f'''
[devices.plain]
kind = "node"
path = "{node}"
file_type = "file"
[devices.nul]
kind = "node"
path = "{chardev}"
'''
srv = start_server(manifest)
try:
    with bridge.connect(srv.url) as host:
        with host.open("plain") as f:
            assert f.read(5) == b"plain"
        with host.open("nul") as n:
            assert n.write(b"x") == 1
        # the mounts happen in this process's private namespace, which the server shares
        subprocess.run(["mount", "--bind", other, node], check=True)
        subprocess.run(["mount", "--bind", "/dev/zero", chardev], check=True)
        for name in ("plain", "nul"):
            try:
                host.open(name)
            except PermissionError as e:
                assert e.errno == errno.EACCES and "mounted over" in str(e), e
            else:
                raise AssertionError(f"{name}: opened through a bind mount")
        subprocess.run(["umount", node], check=True)
        subprocess.run(["umount", chardev], check=True)
        with host.open("plain") as f:  # the original is back: allowed again
            assert f.read(5) == b"plain"
    print("OK")
finally:
    srv.stop()
"""


def test_bind_mount_over_a_manifest_path_is_refused(tmp_path: Path) -> None:
    why = _can_mount(tmp_path)
    if why:
        pytest.skip(why)
    node, other = tmp_path / "node", tmp_path / "other"
    node.write_bytes(b"plain file")
    other.write_bytes(b"secret file")
    chardev = tmp_path / "nulldev"
    os.mknod(chardev, 0o600 | 0o020000, os.makedev(1, 3))  # a /dev/null node of our own
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                        SCRIPT, str(node), str(other), str(chardev)],
                       capture_output=True, text=True, timeout=120, cwd=HERE)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr
