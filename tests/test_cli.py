# The `hwbridge` command line as a user runs it: --help everywhere, ls/info/read/write/ioctl
# against a real server process, errors that exit non-zero with a message, and a clean stop
# of `hwbridge serve` on SIGTERM and SIGINT while a client holds open handles.
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import bridge

from .conftest import ServerProc
from .nodes_helpers import Pty, node_manifest, node_server, shared_pty

__all__ = ["node_server", "shared_pty"]

_SCRIPT = Path(sys.executable).parent / "hwbridge"
HWBRIDGE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "bridge.cli"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*HWBRIDGE, *args], input=stdin, capture_output=True, timeout=60)


def _subcommands() -> list[str]:
    out = run("--help").stdout.decode()
    m = re.search(r"\{([a-z0-9,-]+)\}", out)
    assert m, out
    return m.group(1).split(",")


def test_help() -> None:
    r = run("--help")
    assert r.returncode == 0
    text = r.stdout.decode()
    assert "usage: hwbridge" in text
    assert set(_subcommands()) >= {"serve", "ls", "info", "read", "write", "ioctl"}


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command: str) -> None:
    r = run(command, "--help")
    assert r.returncode == 0, r.stderr
    assert f"usage: hwbridge {command}" in r.stdout.decode()


@pytest.fixture
def url(node_server: tuple[ServerProc, Pty], shared_pty: Pty) -> str:
    return node_server[0].url


def test_ls(url: str) -> None:
    r = run("ls", url)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in r.stdout.decode().splitlines()}
    assert rows == {"pty": ["node", "rw"], "null": ["node", "rw"], "zero": ["node", "r"],
                    "full": ["node", "rw"]}
    j = run("ls", "--json", url)
    assert j.returncode == 0
    assert {d["name"] for d in json.loads(j.stdout)} == set(rows)


def test_info(url: str) -> None:
    r = run("info", f"{url}/pty")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["name"] == "pty" and info["kind"] == "node"
    assert {i["name"] for i in info["ioctls"]} == {"TCGETS", "TCSETS", "TIOCGWINSZ",
                                                  "TIOCSWINSZ", "FIONREAD"}


def test_read_hex(url: str) -> None:
    r = run("read", "-n", "8", "--hex", f"{url}/zero")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "00" * 8


def test_read_raw_from_the_pty(url: str, shared_pty: Pty) -> None:
    os.write(shared_pty.master, b"raw bytes\x00\xff")
    shared_pty.wait_pending(11)
    r = run("read", "-n", "11", "-t", "5", f"{url}/pty")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"raw bytes\x00\xff"


def test_write(url: str, shared_pty: Pty) -> None:
    assert run("write", f"{url}/null", "data").returncode == 0
    r = run("write", f"{url}/pty", "hello")
    assert r.returncode == 0, r.stderr
    assert shared_pty.read_master(5) == b"hello"
    assert run("write", "--hex", f"{url}/pty", "00ff10").returncode == 0
    assert shared_pty.read_master(3) == b"\x00\xff\x10"
    assert run("write", f"{url}/pty", stdin=b"from stdin").returncode == 0
    assert shared_pty.read_master(10) == b"from stdin"


def test_ioctl(url: str, shared_pty: Pty) -> None:
    fcntl.ioctl(shared_pty.slave, termios.TIOCSWINSZ, struct.pack("4H", 25, 81, 3, 4))
    r = run("ioctl", f"{url}/pty", "TIOCGWINSZ")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == struct.pack("4H", 25, 81, 3, 4).hex()
    r = run("ioctl", "--hex", f"{url}/pty", "TIOCSWINSZ", struct.pack("4H", 9, 8, 7, 6).hex())
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "0"
    got = fcntl.ioctl(shared_pty.slave, termios.TIOCGWINSZ, bytes(8))
    assert struct.unpack("4H", got) == (9, 8, 7, 6)


@pytest.mark.parametrize(("args", "needle"), [
    (["read", "{url}/nosuch"], "nosuch"),
    (["ioctl", "{url}/pty", "TIOCEXCL"], "TIOCEXCL"),
    (["ioctl", "--hex", "{url}/pty", "TIOCSWINSZ", "0011"], "8-byte"),
    (["write", "{url}/zero", "x"], "zero"),
    (["write", "{url}/full", "x"], "No space"),
    (["read", "{url}"], "names no device"),
    (["read", "http://example.com/x"], "scheme"),
    (["ls", "hwbridge://127.0.0.1:1"], "refused"),
    (["write", "--hex", "{url}/null", "zz"], "hex"),
])
def test_errors_exit_non_zero_with_a_message(url: str, args: list[str], needle: str) -> None:
    r = run(*[a.format(url=url) for a in args])
    assert r.returncode != 0
    err = r.stderr.decode()
    assert err.startswith("hwbridge: ") and needle.lower() in err.lower(), err
    assert "Traceback" not in err


def test_usage_errors() -> None:
    for args in ([], ["nosuchcommand"], ["read"], ["read", "-n", "x", "hwbridge://h/d"]):
        r = run(*args)
        assert r.returncode == 2 and b"usage:" in r.stderr


def test_serve_with_a_bad_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[devices.x]\nkind = "teapot"\n')
    r = run("serve", "--config", str(bad), "--listen", "127.0.0.1:0")
    assert r.returncode != 0
    err = r.stderr.decode()
    assert str(bad) in err and "devices.x" in err and "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_with_open_handles(sig: int, pty_for_serve: Pty,
                                               make_server: Callable[..., ServerProc]) -> None:
    server = make_server(node_manifest(pty_for_serve))
    client = bridge.connect(server.url)
    try:
        devs = [client.open(name) for name in ("pty", "null", "zero")]
        assert devs[2].read(4) == bytes(4)
        server.proc.send_signal(sig)
        assert server.proc.wait(timeout=20) == 0
        out = server.output()
        assert "hwbridge: stopped" in out and "Traceback" not in out
        with pytest.raises(OSError):  # the host really went away
            for _ in range(3):
                devs[2].read(4)
    finally:
        client.close()


def test_sigterm_given_to_another_thread_stops_the_host(
        make_server: Callable[..., ServerProc]) -> None:
    """The kernel may hand a process's SIGTERM to any of its threads (it did, to a host
    whose lane threads came and went), and Python runs the handler only in the main thread,
    once that runs Python code: a main thread waiting with no end never stopped. Here the
    signal goes to a thread other than the main one on purpose (tgkill)."""
    tgkill = getattr(ctypes.CDLL(None, use_errno=True), "tgkill", None)
    if tgkill is None:
        pytest.skip("this C library has no tgkill()")
    server = make_server('[devices.null]\nkind = "node"\nsim = "null"\n')
    pid = server.proc.pid
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert others, "the host runs no thread besides its main one"
    assert tgkill(pid, others[0], signal.SIGTERM) == 0, os.strerror(ctypes.get_errno())
    assert server.proc.wait(timeout=20) == 0
    assert "hwbridge: stopped" in server.output()


@pytest.fixture
def pty_for_serve() -> Pty:
    master, slave = os.openpty()
    pty = Pty(master, slave, os.ttyname(slave))
    yield pty  # type: ignore[misc]
    os.close(master)
    os.close(slave)


def test_serve_default_is_the_lab_on_a_port() -> None:
    """`hwbridge serve --listen` alone serves the simulated lab there."""
    proc = subprocess.Popen([*HWBRIDGE, "serve", "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        out = b""
        end = time.monotonic() + 30
        while b"hwbridge://" not in out and time.monotonic() < end:
            if select.select([proc.stdout], [], [], 1)[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
        m = re.search(rb"(hwbridge://\S+)", out)
        assert m, out
        with bridge.connect(m.group(1).decode()) as host:
            assert {"null", "zero"} <= {d.name for d in host.devices()}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_serve_on_a_unix_socket(tmp_path: Path, make_server: Callable[..., ServerProc]) -> None:
    path = tmp_path / "hw.sock"
    make_server('[devices.zero]\nkind = "node"\npath = "/dev/zero"\n', "--unix", str(path))
    assert oct(path.stat().st_mode & 0o777) == oct(0o660)
    with bridge.connect(f"hwbridge+unix://{path}") as host, host.open("zero") as z:
        assert z.read(5) == bytes(5)
    r = run("read", "-n", "2", "--hex", f"hwbridge+unix://{path}#zero")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == "0000"


def test_hex_flag_may_follow_the_positionals(url: str) -> None:
    assert run("write", f"{url}/null", "--hex", "00ff10").returncode == 0
    r = run("ioctl", f"{url}/pty", "TIOCSWINSZ", "--hex", struct.pack("4H", 1, 2, 3, 4).hex())
    assert r.returncode == 0, r.stderr
    r = run("ioctl", f"{url}/pty", "TIOCGWINSZ")
    assert r.stdout.decode().strip() == struct.pack("4H", 1, 2, 3, 4).hex()


def test_serve_on_a_port_in_use_names_the_address(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    config.write_text('[devices.zero]\nkind = "node"\nsim = "zero"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run("serve", "--config", str(config), "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in err, err
    assert "Traceback" not in err
