# One driver-level serial suite run over two links: a simulated pair of cross-wired UARTs
# (sim backend) and a REAL pty through the posix backend (the test holds the master end).
# Both go through a real `hwbridge serve` process and the pyserial-shaped client.
from __future__ import annotations

import errno
import os
import select
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import serial

import bridge
from bridge.testing import ServerProc


@dataclass
class Link:
    """The port under test and a way to act as the device at its far end."""

    port: Any
    send: Callable[[bytes], None]
    recv: Callable[[int], bytes]  # exactly n bytes, or fewer after 5 s
    kind: str
    slave: str = ""
    open_again: Callable[[], Any] | None = None
    far: Any = None  # the far end's own port, when it is one


def _until(pred: Callable[[], bool], seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


@pytest.fixture(params=["sim", "pty"])
def link(request: pytest.FixtureRequest,
         make_server: Callable[..., ServerProc]) -> Iterator[Link]:
    if request.param == "sim":
        srv = make_server('[devices.a]\nkind = "serial"\nsim = "uart-pair"\npeer = "b"\n'
                          '[devices.b]\nkind = "serial"\nsim = "uart-pair"\npeer = "a"\n')
        with bridge.connect(srv.url) as host:
            far = host.open("b")
            far.timeout = 5

            def recv(n: int) -> bytes:
                return bytes(far.read(n))

            port = host.open("a")
            yield Link(port, far.write, recv, "sim", open_again=lambda: host.open("a"),
                       far=far)
            port.close()
            far.close()
        return
    master, slave_fd = os.openpty()
    slave = os.ttyname(slave_fd)
    os.set_blocking(master, False)
    srv = make_server(f'[devices.tty]\nkind = "serial"\npath = "{slave}"\n')

    def recv_master(n: int) -> bytes:
        out = b""
        end = time.monotonic() + 5
        while len(out) < n and time.monotonic() < end:
            if select.select([master], [], [], 0.1)[0]:
                out += os.read(master, n - len(out))
        return out

    def send_master(data: bytes) -> None:
        view = memoryview(data)
        while view:
            select.select([], [master], [], 1)
            view = view[os.write(master, view):]

    try:
        with bridge.connect(srv.url) as host:
            port = host.open("tty")
            yield Link(port, send_master, recv_master, "pty", slave,
                       open_again=lambda: host.open("tty"))
            port.close()
    finally:
        os.close(slave_fd)
        os.close(master)


def test_proxy_is_a_pyserial_port(link: Link) -> None:
    assert isinstance(link.port, serial.SerialBase)
    assert link.port.is_open
    if link.kind == "pty":  # the port adopts the tty's settings as they are
        assert getattr(termios, f"B{link.port.baudrate}") == _termios_of(link.slave)[5]
    else:
        assert link.port.baudrate == 9600


def test_all_byte_values_both_ways(link: Link) -> None:
    data = bytes(range(256)) * 8
    link.port.timeout = 5
    assert link.port.write(data) == len(data)
    assert link.recv(len(data)) == data
    link.send(data[::-1])
    assert link.port.read(len(data)) == data[::-1]


def test_data_sent_before_the_first_read_is_kept(link: Link) -> None:
    link.send(b"boot banner\r\n")
    assert _until(lambda: link.port.in_waiting == 13)
    link.port.timeout = 5
    assert link.port.read_until(b"\r\n") == b"boot banner\r\n"


def test_timeouts_as_pyserial(link: Link) -> None:
    link.port.timeout = 0
    assert link.port.read(10) == b""
    link.send(b"abc")
    assert _until(lambda: link.port.in_waiting == 3)
    link.port.timeout = 0.2
    assert link.port.read(10) == b"abc"  # fewer than asked once the timeout passes
    link.port.timeout = 5
    link.port.inter_byte_timeout = 0.1
    link.send(b"xy")
    assert link.port.read(100) == b"xy"  # the gap after the last byte ends the read


def test_readline_and_read_until(link: Link) -> None:
    link.port.timeout = 5
    link.send(b"one\ntwo\nthr")
    assert link.port.readline() == b"one\n"
    assert link.port.read_until(b"o\n") == b"two\n"
    assert link.port.read_until(b"\n", size=2) == b"th"
    link.port.timeout = 0.1
    assert link.port.readline() == b"r"  # a partial line on timeout


def test_reset_input_buffer_drops_what_arrived(link: Link) -> None:
    link.send(b"stale")
    assert _until(lambda: link.port.in_waiting == 5)
    link.port.reset_input_buffer()
    assert link.port.in_waiting == 0
    link.send(b"fresh")
    link.port.timeout = 5
    assert link.port.read(5) == b"fresh"


def test_output_side_operations(link: Link) -> None:
    link.port.write(b"q")
    link.port.flush()
    assert link.port.out_waiting >= 0
    link.port.reset_output_buffer()
    link.port.send_break(0.01)
    link.port.break_condition = True
    link.port.break_condition = False
    assert link.recv(1) in (b"q", b"")  # break may or may not flush what was sent


def test_modem_lines(link: Link) -> None:
    p = link.port
    p.dtr, p.rts = True, True
    lines = (p.cts, p.dsr, p.ri, p.cd)
    assert all(type(v) is bool for v in lines)
    p.rts = False
    p.dtr = False
    if link.kind == "sim":  # cross-wired: RTS to the other's CTS, DTR to its DSR and CD
        far = link.far
        assert lines == (True, True, False, True)
        assert (far.cts, far.dsr, far.cd) == (False, False, False)
        far.rts = False
        assert (p.cts, p.dsr) == (False, True)
        far.dtr = False
        assert (p.cts, p.dsr, p.ri, p.cd) == (False, False, False, False)
        p.rts = True
        assert far.cts
    else:  # a pty has no modem lines: emulated, the peer always ready
        assert (p.cts, p.dsr, p.ri, p.cd) == (True, True, False, True)


def _kernel_takes(slave: str, cflag_bits: int) -> bool:
    """Does this kernel's pty accept these c_cflag bits (some refuse CS7/PARENB)?"""
    fd = os.open(slave, os.O_RDWR | os.O_NOCTTY)
    try:
        attrs = termios.tcgetattr(fd)
        attrs[2] = (attrs[2] & ~termios.CSIZE) | cflag_bits
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        return True
    except termios.error:
        return False
    finally:
        os.close(fd)


def _termios_of(slave: str) -> list[Any]:
    fd = os.open(slave, os.O_RDWR | os.O_NOCTTY)
    try:
        return termios.tcgetattr(fd)
    finally:
        os.close(fd)


def test_settings_round_trip(link: Link) -> None:
    p = link.port
    p.baudrate = 115200
    p.stopbits = serial.STOPBITS_TWO
    p.rtscts = True
    assert p.get_settings()["baudrate"] == 115200
    assert link.open_again is not None
    again = link.open_again()
    try:  # a second handle adopts the port's settings (a real tty shares them)
        if link.kind == "pty":
            assert (again.baudrate, again.stopbits, again.rtscts) == (115200, 2, True)
    finally:
        again.close()
    if link.kind != "pty":
        return
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = _termios_of(link.slave)
    assert ospeed == termios.B115200 and ispeed == termios.B115200
    assert cflag & termios.CSIZE == termios.CS8
    assert cflag & termios.CSTOPB and cflag & termios.CRTSCTS
    assert not lflag & (termios.ICANON | termios.ECHO)  # raw mode
    assert not oflag & termios.OPOST


def test_bytesize_and_parity_reach_the_tty(link: Link) -> None:
    p = link.port
    if link.kind == "pty" and not _kernel_takes(link.slave, termios.CS7 | termios.PARENB):
        with pytest.raises(OSError) as e:  # the kernel's refusal, with its errno
            p.bytesize = serial.SEVENBITS
        assert e.value.errno == errno.EINVAL and "configure" in str(e.value)
        return
    p.bytesize = serial.SEVENBITS
    p.parity = serial.PARITY_EVEN
    assert (p.bytesize, p.parity) == (7, "E")
    if link.kind == "pty":
        cflag = _termios_of(link.slave)[2]
        assert cflag & termios.CSIZE == termios.CS7
        assert cflag & termios.PARENB and not cflag & termios.PARODD


def test_exclusive_is_refused_to_a_second_holder(link: Link) -> None:
    assert link.open_again is not None
    link.port.exclusive = True
    other = link.open_again()
    try:
        with pytest.raises(OSError) as e:
            other.exclusive = True
        assert e.value.errno == errno.EBUSY
        link.port.exclusive = False
        other.exclusive = True
    finally:
        other.close()


def test_clear_errors(link: Link) -> None:
    with pytest.raises(ValueError, match="fast"):
        link.port.baudrate = "fast"
    with pytest.raises(ValueError, match="Not a valid baudrate"):
        link.port.baudrate = -5
    with pytest.raises(OSError) as e:
        link.port.client.call("configure", [link.port._hid, {"bytesize": 9}])
    assert e.value.errno == errno.EINVAL and "configure" in str(e.value)
    with pytest.raises(OSError) as e:
        link.port.client.call("configure", [link.port._hid, {"speed": 9600}])
    assert e.value.errno == errno.EINVAL and "unknown serial settings" in str(e.value)
    link.port.close()
    with pytest.raises(serial.PortNotOpenError):
        link.port.read(1)
    with pytest.raises(serial.PortNotOpenError):
        link.port.write(b"x")


def test_a_port_that_goes_away_fails_reads_after_its_last_bytes(
        make_server: Callable[..., ServerProc]) -> None:
    """The far end of a real pty closes (as a USB adapter is unplugged): the bytes it sent
    are still read, then reads fail as pyserial's do on a vanished port (SerialException,
    EIO), writes fail, and the host serves on."""
    master, slave_fd = os.openpty()
    try:
        srv = make_server(f'[devices.tty]\nkind = "serial"\npath = "{os.ttyname(slave_fd)}"\n')
        with bridge.connect(srv.url) as host, host.open("tty") as port:
            port.timeout = 5
            os.write(master, b"last words")
            assert _until(lambda: port.in_waiting == 10)  # the host has them
            os.close(master)
            master = -1
            assert port.read(10) == b"last words"
            with pytest.raises(serial.SerialException) as info:
                port.read(1)
            assert info.value.errno == errno.EIO
            assert "tty: the port is gone" in str(info.value), info.value
            with pytest.raises(OSError) as written:
                port.write(b"x")
            assert written.value.errno == errno.EIO
            assert port.read(0) == b""
            assert host.info("tty")["kind"] == "serial"  # the host serves on
    finally:
        os.close(slave_fd)
        if master >= 0:
            os.close(master)
