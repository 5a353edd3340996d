# pyserial's miniterm, unchanged, on a pseudo-terminal against hwbridge://.../uart0: a line
# typed on the terminal goes to the loopback and comes back to the screen.
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import termios
import time

from bridge.testing import ServerProc

# Exactly what a user types: `python -m serial.tools.miniterm hwbridge://...`. miniterm never
# imports bridge; hwbridge.pth (installed with the package) teaches pyserial the URL.
RUN = ("-m", "serial.tools.miniterm")


def _read_until(fd: int, needle: bytes, seconds: float = 10) -> bytes:
    out = b""
    end = time.monotonic() + seconds
    while needle not in out and time.monotonic() < end:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def _wait_raw(fd: int, seconds: float = 10) -> None:
    """Wait until miniterm has put its console in raw mode (so the tty stops echoing)."""
    end = time.monotonic() + seconds
    while termios.tcgetattr(fd)[3] & termios.ECHO and time.monotonic() < end:
        time.sleep(0.02)
    assert not termios.tcgetattr(fd)[3] & termios.ECHO


def test_miniterm_echoes_through_the_loopback(lab: ServerProc) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, *RUN, f"{lab.url}/uart0", "115200",
                             "--raw", "--eol", "LF"],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    try:
        banner = _read_until(master, b"Quit: Ctrl+]")
        assert b"--- Miniterm on hwbridge://" in banner
        _wait_raw(master)
        os.write(master, b"hello bridge\r")
        # what miniterm shows is what came back from uart0 (local echo is off)
        assert b"hello bridge" in _read_until(master, b"hello bridge")
        os.write(master, b"\x1d")  # Ctrl+] quits
        proc.wait(timeout=10)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_miniterm_shows_only_what_the_device_sends(lab: ServerProc) -> None:
    """The control: instr0 does not echo, so the typed request must not appear."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, *RUN, f"{lab.url}/instr0", "--raw",
                             "--eol", "LF"], stdin=slave, stdout=slave, stderr=slave,
                            close_fds=True)
    os.close(slave)
    try:
        _read_until(master, b"Quit: Ctrl+]")
        _wait_raw(master)
        os.write(master, b"*IDN?\r")
        shown = _read_until(master, b"SIM-DMM,0001,1.0")
        assert b"HWBRIDGE,SIM-DMM,0001,1.0" in shown and b"*IDN?" not in shown
        os.write(master, b"\x1d")
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_the_pth_hook_registers_hwbridge_urls_without_importing_bridge() -> None:
    code = ("import sys; assert 'bridge' not in sys.modules; import serial; "
            "print(serial.protocol_handler_packages)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "bridge.drivers" in out
