# I2C and SPI through the bridge, each beside a raw TCP echo of the same request size in the
# same run (issue 4: an I2C register read, write 1 byte then read 2, costs <= 1.5x the echo):
#   i2c1 read_register(0x48, 0, 2) on the simulated lab  vs raw TCP echo of its request frame
#   spi0 256-byte full-duplex transfer                   vs raw TCP echo of its request frame
from __future__ import annotations

from typing import Any

import bridge
from bridge.protocol import Call, Connection, Role

from .common import Row, echo_client, echo_once, echo_server, per_op, start_server

N = 3000


def _frame_size(op: str, args: list[Any]) -> int:
    """Bytes of the request frame the client sends for ``op`` (what the echo moves)."""
    bufs = Connection(Role.CLIENT).send(Call(1, op, args))
    return sum(len(b) for b in bufs)


def run() -> list[Row]:
    rows: list[Row] = []
    server = start_server()
    try:
        with bridge.connect(server.url) as host, echo_server() as addr:
            i2c = host.open("i2c1")
            spi = host.open("spi0")
            echo = echo_client(addr)
            buf = bytearray(1 << 16)
            payload = bytes(256)

            reg_size = _frame_size("read_register", [i2c.handle, 0x48, b"\x00", 2])
            reg_msg = b"\x00" * reg_size
            bridged = per_op(lambda: i2c.read_register(0x48, 0, 2), N)
            floor = per_op(lambda: echo_once(echo, reg_msg, buf), N)
            rows.append(Row("i2c register read (w1 r2), TMP102 on sim i2c1", bridged * 1e6,
                            floor * 1e6, "us/op", "<= 1.5x",
                            note=f"floor: TCP echo {reg_size} B"))

            spi_size = _frame_size("transfer", [spi.handle, [[payload, 256]]])
            spi_msg = b"\x00" * spi_size
            bridged = per_op(lambda: spi.transfer(payload), N)
            floor = per_op(lambda: echo_once(echo, spi_msg, buf), N)
            rows.append(Row("spi 256-byte transfer on sim spi0", bridged * 1e6, floor * 1e6,
                            "us/op", "<= 1.5x", note=f"floor: TCP echo {spi_size} B"))
            echo.close()
    finally:
        server.stop()
    return rows


if __name__ == "__main__":
    from .common import print_table

    print_table(run())
