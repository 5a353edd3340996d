# USB through the bridge, with pyusb's API on the simulated usb0, each case beside a raw
# TCP echo floor measured in the same run:
#   vendor control IN (8 B)                       vs one 16 B echo round trip
#   bulk loopback 64 B (write, then read)         vs two 16 B echo round trips
#   bulk loopback 4 KiB (write, then read)        vs two 4 KiB echo round trips
#   find + manufacturer/product/serial, fresh connection  vs connect + devices()
from __future__ import annotations

import usb.core
import usb.util
from bridge.drivers.usb import get_backend

import bridge

from .common import Row, echo_client, echo_once, echo_server, per_op, start_server

VID, PID = 0x1209, 0x0001


def run() -> list[Row]:
    rows: list[Row] = []
    with start_server() as srv, echo_server() as addr, bridge.connect(srv.url) as host:
        dev = usb.core.find(idVendor=VID, idProduct=PID, backend=get_backend(host))
        dev.reset()
        dev.set_configuration()
        dev.ctrl_transfer(0x40, 0x01, 0, 0, b"12345678")
        sock = echo_client(addr)
        buf = bytearray(1 << 16)
        small, page = b"x" * 16, b"x" * 4096
        echo16 = per_op(lambda: echo_once(sock, small, buf), 2000)
        echo4k = per_op(lambda: echo_once(sock, page, buf), 1000)
        ctrl = per_op(lambda: dev.ctrl_transfer(0xC0, 0x01, 0, 0, 8), 2000)
        rows.append(Row("usb: vendor control IN 8 B (pyusb) vs TCP echo 16 B", ctrl * 1e6,
                        echo16 * 1e6, "us/op", ""))

        def loop(data: bytes) -> None:
            dev.write(0x01, data)
            dev.read(0x81, len(data))

        small64, page4k = b"y" * 64, b"z" * 4096
        bulk = per_op(lambda: loop(small64), 1000)
        rows.append(Row("usb: bulk loopback 64 B, write+read vs 2 TCP echoes", bulk * 1e6,
                        2 * echo16 * 1e6, "us/op", ""))
        bulk4k = per_op(lambda: loop(page4k), 500)
        rows.append(Row("usb: bulk loopback 4 KiB, write+read vs 2 TCP echoes 4 KiB",
                        bulk4k * 1e6, 2 * echo4k * 1e6, "us/op", ""))
        usb.util.dispose_resources(dev)
        sock.close()

        def connect_only() -> None:
            with bridge.connect(srv.url) as c:
                c.devices()

        def cold_find() -> None:
            with bridge.connect(srv.url) as c:
                d = usb.core.find(idVendor=VID, idProduct=PID, backend=get_backend(c))
                assert d.manufacturer and d.product and d.serial_number

        floor = per_op(connect_only, 50)
        cold = per_op(cold_find, 50)
        rows.append(Row("usb: connect+find+3 strings vs connect+devices()", cold * 1e6,
                        floor * 1e6, "us/op", "", note="descriptors+strings: 1 batch"))
    return rows
