"""The audit log end to end: a real host with `[server] audit` appends one JSON line per
admission or refusal, open, ioctl, library call, lease event, capability event and denial;
the test reads the file the server process wrote."""
from __future__ import annotations

import datetime
import errno
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bridge

from .conftest import ServerProc
from .security_helpers import DEVICES

FIELDS = {"ts", "principal", "peer", "event", "device", "op", "detail", "allowed", "errno"}


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _find(path: Path, **want: Any) -> dict[str, Any]:
    """The first record with these fields; waits (bounded) for events the host logs on its
    own threads, such as a disconnect."""
    end = time.monotonic() + 10
    while True:
        for r in _records(path):
            if all(r.get(k) == v for k, v in want.items()):
                return r
        if time.monotonic() > end:
            raise AssertionError(f"no audit record with {want}: {_records(path)}")
        time.sleep(0.02)


@pytest.fixture
def audited(make_server: Callable[..., ServerProc], tmp_path: Path) -> tuple[ServerProc, Path]:
    text = ('[server]\naudit = "audit.jsonl"\n[limits]\nmax_connections_per_principal = 3\n'
            + DEVICES.replace('[devices.zero]\nkind = "node"\nsim = "zero"\n',
                              '[devices.zero]\nkind = "node"\nsim = "zero"\naccess = "r"\n'))
    return make_server(text), tmp_path / "audit.jsonl"


def test_every_kind_of_event_is_one_json_line(audited: tuple[ServerProc, Path]) -> None:
    server, log = audited
    with bridge.connect(server.url) as c:
        peer = _find(log, event="connect", op="admit")["peer"]
        dev = c.open("null")
        with pytest.raises(OSError) as exc:
            dev.ioctl("FIONREAD")  # allowed by the manifest; the sim null says ENOTTY
        assert exc.value.errno == errno.ENOTTY
        with pytest.raises(PermissionError):
            dev.ioctl("TIOCGWINSZ")  # not in the manifest
        with pytest.raises(PermissionError):
            c.open("zero", "rw")
        ro = c.open("zero")
        with pytest.raises(PermissionError):
            c.call("write", [ro.handle, b"x", None])
        lib = c.call("open", ["vendorlib"])
        assert c.call("call", [lib, "dev_add", [1, 2], None]) == [3]
        with pytest.raises(PermissionError):
            c.call("call", [lib, "no_such_function", [], None])
        with c.lease("uart0", renew=False):
            pass
        token = dev.share(access="r")
        with bridge.connect(server.url) as other:
            other.adopt(token)
        dev.revoke(token)

    recs = _records(log)
    assert all(set(r) == FIELDS for r in recs)
    for r in recs:
        ts = datetime.datetime.fromisoformat(r["ts"])
        assert ts.utcoffset() == datetime.timedelta(0)
    assert _find(log, event="connect", op="admit")["principal"] == "anonymous"
    opened = _find(log, event="open", device="null", allowed=True)
    assert opened["peer"] == peer and opened["detail"] == "access=rw"
    assert _find(log, event="ioctl", device="null", detail="FIONREAD")["errno"] == errno.ENOTTY
    denied = _find(log, event="ioctl", device="null", allowed=False)
    assert "TIOCGWINSZ" in denied["detail"] and denied["errno"] == errno.EACCES
    refused_open = _find(log, event="open", device="zero", allowed=False)
    assert refused_open["errno"] == errno.EACCES and "rw" in refused_open["detail"]
    assert _find(log, event="open", device="zero", allowed=True)["detail"] == "access=r"
    assert _find(log, event="op", op="write", device="zero")["allowed"] is False
    assert _find(log, event="call", detail="dev_add")["allowed"] is True
    assert _find(log, event="call", allowed=False)["detail"].startswith("no_such_function")
    for what in ("acquire", "release"):
        assert _find(log, event="lease", op=what)["device"] == "uart0"
    assert _find(log, event="share", op="share")["detail"] == "access=r"
    assert _find(log, event="adopt", op="adopt")["device"] == "null"
    assert "revoked" in _find(log, event="revoke")["detail"]
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_refused_connections_and_disconnect_releases(audited: tuple[ServerProc, Path]
                                                     ) -> None:
    server, log = audited
    held = [bridge.connect(server.url) for _ in range(3)]
    try:
        with pytest.raises(ConnectionRefusedError):
            bridge.connect(server.url)
        refused = _find(log, event="connect", op="refuse")
        assert refused["allowed"] is False and refused["errno"] == errno.ECONNREFUSED
        assert "limit 3" in refused["detail"]
        held[0].lease("uart0", renew=False)
        held[0].close()
        assert "disconnected" in _find(log, event="lease", op="release")["detail"]
    finally:
        for c in held:
            c.close()


def test_no_log_without_the_setting(make_server: Callable[..., ServerProc],
                                    tmp_path: Path) -> None:
    server = make_server(DEVICES)
    with bridge.connect(server.url) as c, c.open("null") as dev:
        dev.write(b"x")
    assert not list(tmp_path.glob("*.jsonl"))


def test_a_full_disk_loses_records_not_operations(
        make_server: Callable[..., ServerProc]) -> None:
    """The log on a disk with no space (the kernel's /dev/full): connections, opens and
    operations work as before, and the host says once that records are being lost."""
    server = make_server('[server]\naudit = "/dev/full"\n' + DEVICES.replace(
        '[devices.zero]\nkind = "node"\nsim = "zero"\n',
        '[devices.zero]\nkind = "node"\nsim = "zero"\naccess = "r"\n'))
    for _ in range(2):
        with bridge.connect(server.url) as c, c.open("null") as dev:
            assert dev.write(b"abc") == 3
            with pytest.raises(PermissionError):
                c.open("zero", "w")  # a denial: logged (lost) and refused as ever
    server.proc.send_signal(15)
    assert server.proc.wait(timeout=20) == 0
    out = server.output()
    assert out.count("records are lost") == 1, out
    assert "/dev/full: No space left on device" in out, out


# A host process whose audit file may grow to LIMIT bytes, then to any size: the records
# past the limit are lost, one of them cut short, and those after it are whole again.
_FSIZE = r"""
import json, logging, resource, signal, sys
from bridge.audit import AuditLog
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death, past the limit
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
log = AuditLog(sys.argv[1])
for i in range(40):
    log.write("open", device=f"dev{i}")
lost = log.lost
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
for i in range(40, 43):
    log.write("open", device=f"dev{i}")
print(json.dumps({"lost": lost, "after": log.lost}))
"""


def test_records_lost_past_a_file_size_limit_and_whole_again_after(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    r = subprocess.run([sys.executable, "-c", _FSIZE, str(path), "4000"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    counts = json.loads(lines[-1])
    assert counts["lost"] > 0 and counts["after"] == 0, r.stdout
    assert sum("records are lost" in line for line in lines) == 1, r.stdout
    assert f"{counts['lost']} records were lost" in r.stdout
    text = path.read_text()
    assert len(text.encode()) > 4000  # grew past the limit once it was lifted
    whole, torn = [], []
    for line in text.splitlines():
        try:
            whole.append(json.loads(line)["device"])
        except json.JSONDecodeError:
            torn.append(line)
    assert len(torn) <= 1, torn  # at most the record the limit cut
    assert whole[-3:] == ["dev40", "dev41", "dev42"]  # each on a line of its own
    kept = 40 - counts["lost"]
    assert whole[:kept] == [f"dev{i}" for i in range(kept)]
