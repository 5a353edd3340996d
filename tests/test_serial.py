# The serial devices of the simulated lab (uart0 loopback, instr0 SCPI multimeter) through a
# real server, via host.open() and via pyserial's serial_for_url(); the dialog instrument
# described by a plain table (inline in a manifest); error cases.
from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
import serial

import bridge
from bridge.testing import ServerProc


def test_uart0_loopback_through_host_open(lab: ServerProc) -> None:
    with bridge.connect(lab.url) as host, host.open("uart0") as port:
        assert isinstance(port, serial.SerialBase)
        port.timeout = 5
        data = bytes(range(256))
        port.write(data + b"\n")
        assert port.readline() == data[:11]  # 0x0a ends the first line
        assert port.read(257 - 11) == data[11:] + b"\n"
        port.write(b"hold")
        port.timeout = 0.05
        assert port.read(100) == b"hold"
        port.baudrate = 921600
        port.parity = serial.PARITY_ODD
        assert port.get_settings()["baudrate"] == 921600
        assert host.info("uart0")["kind"] == "serial"


def test_uart0_loopback_wires_modem_lines(lab: ServerProc) -> None:
    with bridge.connect(lab.url) as host, host.open("uart0") as port:
        port.rts, port.dtr = False, True
        assert (port.cts, port.dsr, port.cd, port.ri) == (False, True, True, False)
        port.rts, port.dtr = True, False
        assert (port.cts, port.dsr, port.cd) == (True, False, False)


def test_serial_for_url_opens_its_own_connection(lab: ServerProc) -> None:
    port = serial.serial_for_url(f"{lab.url}/uart0", baudrate=115200, timeout=5)
    try:
        assert port.baudrate == 115200 and port.is_open
        assert port.get_settings()["baudrate"] == 115200
        port.write(b"over the url\n")
        assert port.readline() == b"over the url\n"
        assert port.status()["overflow"] == 0
        client = port.client
    finally:
        port.close()
    assert client is not None and client.closed
    port.open()  # pyserial: a closed port opens again with the same settings
    try:
        port.write(b"again")
        assert port.read(5) == b"again"
    finally:
        port.close()


def test_serial_for_url_errors_are_clear(lab: ServerProc) -> None:
    with pytest.raises(serial.SerialException) as e:
        serial.serial_for_url(f"{lab.url}/nosuch")
    assert e.value.errno == errno.ENOENT and "nosuch" in str(e.value)
    with pytest.raises(serial.SerialException, match="names no device"):
        serial.serial_for_url(lab.url)
    port = serial.serial_for_url(f"{lab.url}/uart0", do_not_open=True)
    with pytest.raises(serial.PortNotOpenError):
        port.read(1)


def test_instr0_scpi_dialog(lab: ServerProc) -> None:
    with bridge.connect(lab.url) as host, host.open("instr0") as dmm:
        dmm.timeout = 5
        dmm.write(b"*IDN?\n")
        assert dmm.readline() == b"HWBRIDGE,SIM-DMM,0001,1.0\n"
        dmm.write(b"SYST:ERR?\n")
        assert dmm.readline() == b'0,"No error"\n'
        dmm.write(b"BOGUS:CMD\nSYST:ERR?\nSYST:ERR?\n")
        assert dmm.readline() == b'-113,"Undefined header"\n'
        assert dmm.readline() == b'0,"No error"\n'
        dmm.write(b"MEAS:VOLT?\n")
        volts = float(dmm.readline())
        assert 0 < volts < 100
        dmm.write(b"NOPE\n*RST\nSYST:ERR?\n")  # *RST clears the error queue
        assert dmm.readline() == b'0,"No error"\n'


DIALOG = '''
[devices.psu]
kind = "serial"
sim = "dialog"
eol = "\\r\\n"
error = "ERR"
dialogs = [
  { q = "VER?", r = "PSU 2.1" },
  { q = "SLOW?", r = "late", delay = 0.05 },
  { q = "QUIET" },
  { q_hex = "aa0102", r_hex = "bb00ff0d0a" },
]
unsolicited = [ { every = 0.02, r = "TICK" } ]
'''


def test_dialog_instrument_from_a_table(make_server: Callable[..., ServerProc]) -> None:
    srv = make_server(DIALOG)
    with bridge.connect(srv.url) as host, host.open("psu") as psu:
        psu.timeout = 5
        # unsolicited output arrives without asking
        assert psu.read_until(b"TICK\r\n").endswith(b"TICK\r\n")
        psu.write(b"VER?\r\nQUIET\r\nWHAT?\r\nSLOW?\r\n")
        replies = []
        while len(replies) < 3:
            line = psu.read_until(b"\r\n")
            assert line.endswith(b"\r\n")
            if line != b"TICK\r\n":
                replies.append(line)
        assert replies == [b"PSU 2.1\r\n", b"ERR\r\n", b"late\r\n"]  # in order, QUIET silent
        psu.write(bytes.fromhex("aa01"))
        psu.write(bytes.fromhex("02"))  # a binary frame split across writes
        got = b""
        while not got.endswith(bytes.fromhex("bb00ff0d0a")):
            chunk = psu.read_until(b"\r\n")
            assert chunk.endswith(b"\r\n")
            got += chunk
        assert b"ERR" not in got


def test_bad_dialog_table_fails_at_open(make_server: Callable[..., ServerProc]) -> None:
    srv = make_server('[devices.x]\nkind = "serial"\nsim = "dialog"\n'
                      'unsolicited = [ { every = 0, r = "T" } ]\n')
    with bridge.connect(srv.url) as host, pytest.raises(OSError) as e:
        host.open("x")
    assert e.value.errno == errno.EINVAL and "every" in str(e.value)
