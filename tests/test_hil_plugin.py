# The pytest plugin: the same test runs against the sim lab by default and against a URL
# given with --hwbridge; hil-marked tests skip without a rig. Driven with pytester-like
# subprocess runs of pytest so the plugin is exercised exactly as users load it.
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import ServerProc

SUITE = '''
import pytest

def test_zero(hwbridge_device):
    dev = hwbridge_device("zero")
    assert dev.read(4) == bytes(4)

@pytest.mark.hil
def test_needs_rig(hwbridge_host):
    assert hwbridge_host.devices()
'''


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_rig.py").write_text(SUITE)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path / "test_rig.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_plugin_runs_against_the_sim_lab_and_skips_hil(tmp_path: Path) -> None:
    r = _pytest(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout


def test_plugin_runs_against_a_given_host_with_a_rig_file(tmp_path: Path,
                                                          lab: ServerProc) -> None:
    rig = tmp_path / "rig.toml"
    rig.write_text('[devices]\nzero = "zero"\n')
    r = _pytest(tmp_path, "--hwbridge", lab.url, "--hwbridge-rig", str(rig))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
