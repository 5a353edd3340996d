# The RFC 2217 export (`hwbridge serve --rfc2217 DEVICE=HOST:PORT`) driven by pyserial's own
# rfc2217:// client: negotiation, every byte value both ways (IAC escaping), settings and
# modem lines; on the sim loopback and on a real pty (emulated modem lines).
from __future__ import annotations

import os
import select
import socket
import termios
import time
from collections.abc import Callable

import serial

from bridge.testing import ServerProc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_master(fd: int, n: int) -> bytes:
    out = b""
    end = time.monotonic() + 5
    while len(out) < n and time.monotonic() < end:
        if select.select([fd], [], [], 0.1)[0]:
            out += os.read(fd, n - len(out))
    return out


def test_rfc2217_client_on_the_loopback(make_server: Callable[..., ServerProc]) -> None:
    port = _free_port()
    make_server(None, "--rfc2217", f"uart0=127.0.0.1:{port}")
    ser = serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", baudrate=115200, timeout=5)
    try:
        data = bytes(range(256)) * 4  # 0xff is IAC, 0x00 after CR matters to telnet
        ser.write(data)
        assert ser.read(len(data)) == data
        ser.baudrate = 57600
        ser.parity = serial.PARITY_EVEN
        ser.rts = False
        ser.write(b"\r\x00\r\n")
        assert ser.read(4) == b"\r\x00\r\n"
    finally:
        ser.close()


def test_rfc2217_on_a_pty_negotiates_with_emulated_lines(
        make_server: Callable[..., ServerProc]) -> None:
    master, slave_fd = os.openpty()
    slave = os.ttyname(slave_fd)
    port = _free_port()
    try:
        make_server(f'[devices.tty]\nkind = "serial"\npath = "{slave}"\n',
                    "--rfc2217", f"tty={port}")
        ser = serial.serial_for_url(f"rfc2217://127.0.0.1:{port}", baudrate=115200, timeout=5)
        try:
            assert termios.tcgetattr(slave_fd)[5] == termios.B115200
            assert ser.cts and ser.dsr and ser.cd and not ser.ri
            data = bytes(range(256))
            ser.write(data)
            assert _read_master(master, 256) == data
            os.write(master, data[::-1])
            assert ser.read(256) == data[::-1]
        finally:
            ser.close()
    finally:
        os.close(slave_fd)
        os.close(master)


def test_rfc2217_connection_ends_when_the_port_goes_away(
        make_server: Callable[..., ServerProc]) -> None:
    """The pty's far end closes (a USB adapter unplugged): the export sends what the port
    received, then closes the RFC 2217 connection, as a serial server does when its port
    vanishes."""
    master, slave_fd = os.openpty()
    port = _free_port()
    try:
        make_server(f'[devices.tty]\nkind = "serial"\npath = "{os.ttyname(slave_fd)}"\n',
                    "--rfc2217", f"tty={port}")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.recv(4096)  # the export's telnet negotiation: it serves this connection now
            os.write(master, b"last words")
            got = b""
            while b"last words" not in got:
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
            os.close(master)
            master = -1
            while chunk := s.recv(4096):  # until the export closes it (else: timeout)
                got += chunk
    finally:
        os.close(slave_fd)
        if master >= 0:
            os.close(master)
