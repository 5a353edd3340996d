# User-described devices (sim = "file"): TOML register maps for I2C and SPI, a dialog
# instrument with a binary frame, a delay and unsolicited output, and a Python model file,
# each served by a real server process and driven through the normal client proxies.
from __future__ import annotations

import errno
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import bridge
from bridge.testing import ServerProc

BME280 = """
kind = "i2c"
description = "a BME280's identity and control registers"

[targets."0x76"]
registers = { "0xD0" = 0x60, "0xF2" = 0x00, "0xF4" = 0x00, "0xF5" = 0x00 }
read_only = ["0xD0"]
"""

SPI_SENSOR = """
kind = "spi"
read_bit = 0x80
registers = { "0x00" = 0xE5, "0x2D" = 0x00, "0x2E" = 0x00 }
read_only = ["0x00"]
"""

PSU = """
kind = "serial"
eol = "\\r\\n"
error = "ERR"

[[dialogs]]
q = "*IDN?"
r = "ACME,PSU-1,42,2.0"

[[dialogs]]
q = "VOLT?"
r = "12.000"
delay = 0.05

[[dialogs]]
q_hex = "aa0102"
r_hex = "bb00ff"

[[unsolicited]]
every = 0.05
r = "ALIVE"
"""

COUNTER_PY = '''
from bridge.sim.serial import DialogInstrument

class Counter(DialogInstrument):
    def __init__(self, spec):
        super().__init__(spec, {})
        self.n = 0

    def respond(self, request):
        if request == "NEXT?":
            self.n += 1
            return str(self.n * int(self.spec.options.get("step", 1))), 0.0
        return "ERR", 0.0

def model(spec):
    return Counter(spec)
'''

MANIFEST = """
[devices.env]
kind = "i2c"
sim = "file"
model = "devices/bme280.toml"

[devices.accel]
kind = "spi"
sim = "file"
model = "devices/sensor.toml"

[devices.psu]
kind = "serial"
sim = "file"
model = "devices/psu.toml"

[devices.counter]
kind = "serial"
sim = "file"
model = "devices/counter.py"
step = 5
"""


@pytest.fixture
def server(tmp_path: Path, make_server: Callable[..., ServerProc]) -> ServerProc:
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "bme280.toml").write_text(BME280)
    (devices / "sensor.toml").write_text(SPI_SENSOR)
    (devices / "psu.toml").write_text(PSU)
    (devices / "counter.py").write_text(COUNTER_PY)
    return make_server(MANIFEST)


def test_i2c_register_map_from_a_file(server: ServerProc) -> None:
    with bridge.connect(server.url) as host, host.open("env") as bus:
        assert bus.read_register(0x76, 0xD0, 1) == b"\x60"
        bus.write_register(0x76, 0xF4, b"\x27")
        assert bus.read_register(0x76, 0xF4, 1) == b"\x27"
        bus.write_register(0x76, 0xD0, b"\x00")  # read-only: acknowledged, ignored
        assert bus.read_register(0x76, 0xD0, 1) == b"\x60"
        with pytest.raises(OSError) as nobody:
            bus.read_register(0x77, 0xD0, 1)
        assert nobody.value.errno == errno.ENXIO


def test_spi_register_map_from_a_file(server: ServerProc) -> None:
    with bridge.connect(server.url) as host, host.open("accel") as spi:
        assert spi.transfer(b"\x80\x00") == b"\xff\xe5"  # read bit + register 0x00
        spi.transfer(b"\x2d\x08")                         # write 0x08 to 0x2D
        assert spi.transfer(b"\xad\x00") == b"\xff\x08"


def test_dialog_instrument_from_a_file(server: ServerProc) -> None:
    with bridge.connect(server.url) as host, host.open("psu") as psu:
        psu.timeout = 5.0
        psu.reset_input_buffer()
        psu.write(b"*IDN?\r\n")
        answers = [psu.read_until(b"\r\n") for _ in range(20)]
        assert b"ACME,PSU-1,42,2.0\r\n" in answers
        assert b"ALIVE\r\n" in answers  # unsolicited output arrives on its own
        psu.write(b"NOPE\r\n")
        assert b"ERR\r\n" in [psu.read_until(b"\r\n") for _ in range(20)]
        psu.write(b"VOLT?\r\n")
        assert b"12.000\r\n" in [psu.read_until(b"\r\n") for _ in range(20)]
        psu.write(bytes.fromhex("aa0102"))
        got = b""
        for _ in range(40):
            got += psu.read(64)
            if b"\xbb\x00\xff" in got:
                break
        assert b"\xbb\x00\xff" in got


def test_python_model_file(server: ServerProc) -> None:
    with bridge.connect(server.url) as host, host.open("counter") as c:
        c.timeout = 5.0
        c.write(b"NEXT?\n")
        assert c.readline() == b"5\n"
        c.write(b"NEXT?\n")
        assert c.readline() == b"10\n"


def test_a_bad_description_stops_the_server_at_start(
        tmp_path: Path, make_server: Callable[..., ServerProc]) -> None:
    (tmp_path / "wrong.toml").write_text(textwrap.dedent(BME280))
    with pytest.raises(RuntimeError, match="describes a i2c device"):
        make_server('[devices.x]\nkind = "spi"\nsim = "file"\nmodel = "wrong.toml"\n')
    with pytest.raises(RuntimeError, match="kind must be one of"):
        (tmp_path / "nokind.toml").write_text("registers = {}\n")
        make_server('[devices.x]\nkind = "spi"\nsim = "file"\nmodel = "nokind.toml"\n')
