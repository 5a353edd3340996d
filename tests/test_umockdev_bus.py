"""Kernel-interface tier: the posix I2C and SPI backends' real ioctl path, on /dev/i2c-1 and
/dev/spidev0.0 emulated by umockdev, compared byte for byte with the sim backend.

umockdev's preload library diverts /dev and ioctl() of a child process into a testbed that
this process owns; its GI API (UMockdev.IoctlBase) lets this process answer each ioctl. The
answers here decode the kernel's structs independently (struct module, the uapi layouts:
struct i2c_rdwr_ioctl_data -> struct i2c_msg[] -> buffers, struct spi_ioc_transfer[] ->
tx/rx buffers), follow the pointers through umockdev, and feed fresh sim models. The child
runs bridge.posix_i2c / bridge.posix_spi handles on those nodes; the same operation list
then runs on the sim handles, and both outputs must be equal.

The child opens the node with os.open: the server's hardened open uses the openat2 system
call directly, which umockdev (a libc interposer) cannot see.

Needs the Debian packages umockdev, gir1.2-umockdev-1.0 and python3-gi (`make test-deps`
installs them when run as root); skips with the reason otherwise.
"""

from __future__ import annotations

import errno
import json
import struct
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from bridge.sim.i2c import EEPROM24C02, TMP102, I2CBus, SimI2C
from bridge.sim.spi import W25Q128, SimSPI, SPIController

from bridge.bushost import I2C_FUNC_I2C, I2C_FUNC_NOSTART, I2CMsg, SPIXfer
from bridge.ioctl import BUILTIN, ioc_nr, ioc_size, ioc_type
from bridge.manifest import DeviceSpec

from .umockdev_common import load_umockdev, run_child, serving

I2C_RDWR = BUILTIN["I2C_RDWR"].request
I2C_FUNCS = BUILTIN["I2C_FUNCS"].request
SPI_RD = {BUILTIN[f"SPI_IOC_RD_{n}"].request: n for n in
          ("MODE", "LSB_FIRST", "BITS_PER_WORD", "MAX_SPEED_HZ")}
SPI_WR = {BUILTIN[f"SPI_IOC_WR_{n}"].request: n for n in
          ("MODE", "LSB_FIRST", "BITS_PER_WORD", "MAX_SPEED_HZ")}


class Kernel:
    """What i2c-dev and spidev do with each ioctl, answered from fresh sim models."""

    def __init__(self) -> None:
        self.bus = I2CBus()
        self.bus.attach(0x48, TMP102())
        self.bus.attach(0x50, EEPROM24C02())
        self.spi = SPIController(W25Q128())
        self.spi_state = {"MODE": 0, "BITS_PER_WORD": 8, "MAX_SPEED_HZ": 50_000_000}
        self.seen: list[int] = []

    def ioctl(self, client: Any) -> bool:
        request = client.get_request()
        self.seen.append(request)
        try:
            result = self._dispatch(request, client.get_arg())
        except OSError as e:
            client.complete(-1, e.errno or errno.EIO)
        else:
            client.complete(result, 0)
        return True

    def _dispatch(self, request: int, arg: Any) -> int:
        if request == I2C_RDWR:
            return self._rdwr(arg)
        if request == I2C_FUNCS:
            arg.resolve(0, 8).update(0, list(struct.pack("=Q", I2C_FUNC_I2C | I2C_FUNC_NOSTART)))
            return 0
        if ioc_type(request) == ord("k") and ioc_nr(request) == 0:
            return self._spi_message(arg, ioc_size(request) // 32)
        if request in SPI_RD:
            return self._spi_read(SPI_RD[request], arg)
        if request in SPI_WR:
            return self._spi_write(SPI_WR[request], arg)
        raise OSError(errno.ENOTTY, "not an i2c-dev or spidev ioctl")

    def _rdwr(self, arg: Any) -> int:
        data = arg.resolve(0, 16)  # struct i2c_rdwr_ioctl_data { i2c_msg *msgs; __u32 n; }
        (nmsgs,) = struct.unpack_from("=I", bytes(data.retrieve()), 8)
        if not 0 < nmsgs <= 42:
            raise OSError(errno.EINVAL, "nmsgs")
        table = data.resolve(0, 16 * nmsgs)
        raw = bytes(table.retrieve())
        msgs, bufs = [], []
        for i in range(nmsgs):
            addr, flags, length = struct.unpack_from("=HHH", raw, 16 * i)  # then 2 pad, buf*
            if length > 8192:
                raise OSError(errno.EINVAL, "len")
            buf = table.resolve(16 * i + 8, length) if length else None
            bufs.append(buf)
            payload = b"" if flags & 1 or buf is None else bytes(buf.retrieve())
            msgs.append(I2CMsg(addr, flags, payload, length))
        reads = iter(self.bus.transfer(msgs))
        for m, buf in zip(msgs, bufs, strict=True):
            if m.read:
                got = next(reads)
                if buf is not None:
                    buf.update(0, list(got))
        return nmsgs

    def _spi_message(self, arg: Any, n: int) -> int:
        table = arg.resolve(0, 32 * n)
        raw = bytes(table.retrieve())
        xfers, rx_bufs = [], []
        for i in range(n):
            tx_buf, rx_buf, length, speed, delay, bpw, cs_change, txn, rxn, wdelay, _ = \
                struct.unpack_from("=QQIIHBBBBBB", raw, 32 * i)
            tx = bytes(table.resolve(32 * i, length).retrieve()) if tx_buf and length else None
            rx_bufs.append(table.resolve(32 * i + 8, length) if rx_buf and length else None)
            xfers.append(SPIXfer(tx, length, speed, delay, bpw, bool(cs_change), txn, rxn,
                                 wdelay))
        total = sum(x.length for x in xfers)
        if total > 4096:
            raise OSError(errno.EMSGSIZE, "bufsiz")
        for rb, got in zip(rx_bufs, self.spi.message(xfers), strict=True):
            if rb is not None:
                rb.update(0, list(got))
        return total

    def _spi_read(self, name: str, arg: Any) -> int:
        st = self.spi_state
        value = {"MODE": st["MODE"], "LSB_FIRST": int(bool(st["MODE"] & 0x08)),
                 "BITS_PER_WORD": st["BITS_PER_WORD"], "MAX_SPEED_HZ": st["MAX_SPEED_HZ"]}[name]
        size = 4 if name == "MAX_SPEED_HZ" else 1
        arg.resolve(0, size).update(0, list(value.to_bytes(size, sys.byteorder)))
        return 0

    def _spi_write(self, name: str, arg: Any) -> int:
        size = 4 if name == "MAX_SPEED_HZ" else 1
        value = int.from_bytes(bytes(arg.resolve(0, size).retrieve()), sys.byteorder)
        st = self.spi_state
        if name == "LSB_FIRST":
            st["MODE"] = (st["MODE"] & ~0x08) | (0x08 if value else 0)
        else:
            st[name] = value
        self.spi.settings["lsb_first"] = bool(st["MODE"] & 0x08)
        return 0


# Runs in both places: on posix handles in the umockdev child, on sim handles here.
RUNNER = r'''
import time

def _dec(v):
    if isinstance(v, dict) and "hex" in v:
        return bytes.fromhex(v["hex"])
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v

def _enc(v):
    if isinstance(v, bytes | bytearray):
        return {"hex": bytes(v).hex()}
    if isinstance(v, list | tuple):
        return [_enc(x) for x in v]
    if isinstance(v, dict):
        return {k: _enc(x) for k, x in v.items()}
    return v

def run(i2c, spi, ops):
    out = []
    for kind, name, *args in ops:
        try:
            if name == "wait_ready":
                for _ in range(2000):
                    if not spi.transfer([[b"\x05\x00", 2]])[0][1] & 1:
                        break
                    time.sleep(0.002)
                out.append(["ok", None])
                continue
            handle = i2c if kind == "i2c" else spi
            out.append(["ok", _enc(getattr(handle, name)(*_dec(args)))])
        except OSError as e:
            out.append(["error", e.errno])
    return out
'''

CHILD = RUNNER + r'''
import json, os, sys
from bridge.backend import Access
from bridge.manifest import DeviceSpec
from bridge.posix_i2c import PosixI2C
from bridge.posix_spi import PosixSPI

ops = json.load(open(sys.argv[1]))
i2c = PosixI2C(DeviceSpec("i2c-1", "i2c", "posix", path="/dev/i2c-1"), Access.RW,
               os.open("/dev/i2c-1", os.O_RDWR))
spi = PosixSPI(DeviceSpec("spidev0.0", "spi", "posix", path="/dev/spidev0.0"), Access.RW,
               os.open("/dev/spidev0.0", os.O_RDWR))
print(json.dumps(run(i2c, spi, ops)))
'''


def H(b: bytes) -> dict[str, str]:
    return {"hex": b.hex()}


def _pp(addr: int, data: bytes) -> list[Any]:
    return ["spi", "transfer", [[H(b"\x02" + addr.to_bytes(3, "big") + data),
                                 4 + len(data)]]]


OPS: list[list[Any]] = [
    ["i2c", "transfer", 0x48, [[0, H(b"\x00")], [1, 2]]],
    ["i2c", "read_register", 0x48, H(b"\x01"), 2],
    ["i2c", "write_register", 0x48, H(b"\x02"), H(b"\x12\x30")],
    ["i2c", "read_register", 0x48, H(b"\x02"), 4],
    ["i2c", "write_register", 0x50, H(b"\x1d"), H(bytes(range(0xA0, 0xA6)))],
    ["i2c", "read_register", 0x50, H(b"\x18"), 8],
    ["i2c", "read_register", 0x50, H(b"\xfc"), 8],
    ["i2c", "transfer", 0x50, [[1, 3], [1, 2]]],
    ["i2c", "transfer", 0x33, [[1, 1]]],
    ["i2c", "transfer", 0x50, [[0, H(b"\x00")], [1, 0]]],
    ["i2c", "funcs"],
    ["spi", "transfer", [[H(b"\x9f\x00\x00\x00"), 4]]],
    ["spi", "transfer", [[H(b"\x9f"), 1], [None, 3]]],
    ["spi", "transfer", [[H(b"\x06"), 1]]],
    ["spi", "transfer", [[H(b"\x05\x00"), 2]]],
    ["spi", "transfer", [[H(b"\x20\x00\x10\x00"), 4]]],
    ["spi", "wait_ready"],
    ["spi", "transfer", [[H(b"\x06"), 1]]],
    _pp(0x1000, b"\xf0\x0f\x55"),
    ["spi", "wait_ready"],
    ["spi", "transfer", [[H(b"\x06"), 1]]],
    _pp(0x10FE, b"\x3c\x3c\x3c\x3c"),
    ["spi", "wait_ready"],
    ["spi", "transfer", [[H(b"\x03\x00\x10\x00"), 4], [None, 4]]],
    ["spi", "transfer", [[H(b"\x03\x00\x10\xfc\x00\x00\x00\x00\x00\x00"), 10]]],
    ["spi", "transfer", [[H(b"\x9f"), 1, 0, 0, 0, 1], [H(b"\x9f\x00"), 2]]],
    ["spi", "transfer", [[None, 4097]]],
    ["spi", "settings"],
    ["spi", "configure", {"mode": 3, "max_speed": 1_000_000}],
    ["spi", "configure", {"lsb_first": True}],
    ["spi", "transfer", [[H(b"\xf9\x00\x00\x00"), 4]]],
    ["spi", "configure", {"lsb_first": False, "bits_per_word": 8}],
]


@pytest.fixture(scope="module")
def umockdev_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[list[Any], Kernel]]:
    GLib, UMockdev = load_umockdev()
    testbed = UMockdev.Testbed.new()
    for sysname, node, subsystem, dev in (("i2c-1", "i2c-1", "i2c-dev", "89:1"),
                                          ("spi0.0", "spidev0.0", "spidev", "153:0")):
        ok = testbed.add_from_string(f"P: /devices/{sysname}\nN: {node}\nE: SUBSYSTEM="
                                     f"{subsystem}\nE: DEVNAME=/dev/{node}\nA: dev={dev}\n\n")
        assert ok, f"umockdev could not add {node}"
    kernel = Kernel()
    handler = UMockdev.IoctlBase()
    handler.connect("handle-ioctl", lambda _h, client: kernel.ioctl(client))
    assert testbed.attach_ioctl("/dev/i2c-1", handler)
    assert testbed.attach_ioctl("/dev/spidev0.0", handler)
    tmp = tmp_path_factory.mktemp("umockdev")
    (tmp / "ops.json").write_text(json.dumps(OPS))
    (tmp / "child.py").write_text(CHILD)
    with serving(GLib):
        done = run_child(testbed, [str(tmp / "child.py"), str(tmp / "ops.json")])
    assert done.returncode == 0, done.stderr[-3000:]
    yield json.loads(done.stdout.strip().splitlines()[-1]), kernel


def _sim_results() -> list[Any]:
    ns: dict[str, Any] = {}
    exec(compile(RUNNER, "<runner>", "exec"), ns)  # noqa: S102 - our own constant source
    i2c = SimI2C(DeviceSpec("umockdev-cmp-i2c", "i2c", "sim", sim="i2c-bus"))
    spi = SimSPI(DeviceSpec("umockdev-cmp-spi", "spi", "sim", sim="spi-flash"))
    results: list[Any] = ns["run"](i2c, spi, OPS)
    return results


def test_posix_path_went_through_the_kernel_interface(
        umockdev_run: tuple[list[Any], Kernel]) -> None:
    _, kernel = umockdev_run
    seen = set(kernel.seen)
    assert {I2C_RDWR, I2C_FUNCS} <= seen
    assert BUILTIN["SPI_IOC_WR_MODE"].request in seen
    assert 0x40206B00 in seen and 0x40406B00 in seen  # SPI_IOC_MESSAGE(1) and (2)


def test_posix_over_umockdev_matches_sim(umockdev_run: tuple[list[Any], Kernel]) -> None:
    posix, _ = umockdev_run
    sim = _sim_results()
    assert len(posix) == len(sim) == len(OPS)
    for op, p, s in zip(OPS, posix, sim, strict=True):
        assert p == s, f"{op[:2]}: posix {p} != sim {s}"


def test_expected_bytes_from_datasheets(umockdev_run: tuple[list[Any], Kernel]) -> None:
    posix, _ = umockdev_run
    by = dict(enumerate(posix))
    assert by[0] == ["ok", [H(b"\x19\x00")]]  # TMP102 25.0 degC
    assert by[1] == ["ok", H(b"\x60\xa0")]  # TMP102 configuration after power-on
    assert by[3] == ["ok", H(b"\x12\x30\x12\x30")]  # TLOW written, read twice
    # 24C02 page write from 0x1D wraps to 0x18 within the 8-byte page
    assert by[5] == ["ok", H(bytes([0xA3, 0xA4, 0xA5, 0xFF, 0xFF, 0xA0, 0xA1, 0xA2]))]
    assert by[8] == ["error", errno.ENXIO]
    assert by[11] == ["ok", [H(b"\xff\xef\x40\x18")]]
    assert by[12] == ["ok", [H(b"\xff"), H(b"\xef\x40\x18")]]
    # program ANDs: 0x1000.. = F0 0F 55 then 3C 3C wrapped from 0x10FE onto 0x1000, 0x1001
    assert by[23] == ["ok", [H(b"\xff" * 4), H(bytes([0x30, 0x0C, 0x55, 0xFF]))]]
    assert by[26] == ["error", errno.EMSGSIZE]
    assert by[28][1]["mode"] == 3 and by[28][1]["max_speed"] == 1_000_000
