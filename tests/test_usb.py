# pyusb's own high-level API against the simulated usb0 of the lab, through a real
# `hwbridge serve` process, the wire and bridge.drivers.usb's remote backend.
from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import usb.core
import usb.util
from bridge.drivers.usb import USBDevice, get_backend

import bridge
from bridge.client import Client
from bridge.protocol import Batch, Call, Connection, Message, Role
from bridge.testing import ServerProc
from bridge.url import parse_url

VID, PID = 0x1209, 0x0001


@pytest.fixture
def host(lab: ServerProc) -> Iterator[Client]:
    with bridge.connect(lab.url) as c:
        yield c


@pytest.fixture
def dev(host: Client) -> Iterator[Any]:
    d = usb.core.find(idVendor=VID, idProduct=PID, backend=get_backend(host))
    assert d is not None
    d.reset()  # the lab's usb0 is shared by the test session: start from an empty loopback
    d.set_configuration()
    yield d
    usb.util.dispose_resources(d)


def test_find_by_vid_pid(host: Client) -> None:
    backend = get_backend(host)
    assert get_backend(host) is backend
    found = list(usb.core.find(find_all=True, idVendor=VID, backend=backend))
    assert [(d.idVendor, d.idProduct) for d in found] == [(VID, PID)]
    assert usb.core.find(idVendor=VID, idProduct=0xBEEF, backend=backend) is None
    assert usb.core.find(idVendor=0xDEAD, backend=backend) is None


def test_strings(dev: Any) -> None:
    assert dev.langids == (0x0409,)
    assert usb.util.get_string(dev, dev.iManufacturer) == "hwbridge"
    assert usb.util.get_string(dev, dev.iProduct) == "sim-loopback"
    serial = usb.util.get_string(dev, dev.iSerialNumber)
    assert isinstance(serial, str) and serial
    assert (dev.manufacturer, dev.product, dev.serial_number) == ("hwbridge", "sim-loopback",
                                                                  serial)
    with pytest.raises(usb.core.USBError) as e:
        usb.util.get_string(dev, 200)  # no such string: the device stalls
    assert e.value.errno == errno.EPIPE


def test_descriptor_walk(dev: Any) -> None:
    assert (dev.bLength, dev.bDescriptorType, dev.bcdUSB, dev.bNumConfigurations) == \
        (18, 1, 0x0200, 1)
    cfg = dev.get_active_configuration()
    assert (cfg.bConfigurationValue, cfg.bNumInterfaces, cfg.bLength) == (1, 1, 9)
    assert cfg.bmAttributes & 0x80  # reserved bit 7 is always set
    intf = cfg[(0, 0)]
    assert (intf.bInterfaceNumber, intf.bAlternateSetting, intf.bInterfaceClass) == (0, 0, 0xFF)
    eps = {e.bEndpointAddress: e for e in intf}
    assert set(eps) == {0x01, 0x81, 0x82}
    assert usb.util.endpoint_type(eps[0x01].bmAttributes) == usb.util.ENDPOINT_TYPE_BULK
    assert usb.util.endpoint_type(eps[0x81].bmAttributes) == usb.util.ENDPOINT_TYPE_BULK
    assert usb.util.endpoint_type(eps[0x82].bmAttributes) == usb.util.ENDPOINT_TYPE_INTR
    out = usb.util.find_descriptor(intf, custom_match=lambda e: usb.util.endpoint_direction(
        e.bEndpointAddress) == usb.util.ENDPOINT_OUT)
    assert out.bEndpointAddress == 0x01 and out.wMaxPacketSize == 64


def test_raw_descriptors_follow_the_usb2_layouts(host: Client) -> None:
    with host.open("usb0") as proxy:
        assert isinstance(proxy, USBDevice)
        bundle = proxy.descriptors()
    device, (config,) = bundle["device"], bundle["configs"]
    fields = struct.unpack("<BBHBBBBHHHBBBB", device)
    assert fields[:2] == (18, 1) and fields[7:9] == (VID, PID)
    assert struct.unpack_from("<BBH", config) == (9, 2, len(config))
    pos, kinds = 0, []
    while pos < len(config):  # each descriptor's bLength walks exactly to the end
        length, kind = config[pos], config[pos + 1]
        assert length == {2: 9, 4: 9, 5: 7}[kind]
        kinds.append(kind)
        pos += length
    assert pos == len(config) and kinds == [2, 4, 5, 5, 5]
    strings = {(i, lang): raw for i, lang, raw in bundle["strings"]}
    assert strings[(0, 0)] == bytes([4, 3, 0x09, 0x04])
    product = strings[(fields[11], 0x0409)]
    assert product[0] == len(product) and product[1] == 3
    assert product[2:].decode("utf-16-le") == "sim-loopback"


@pytest.mark.parametrize("size", [1, 2, 63, 64, 65, 512, 1000, 4095, 4096])
def test_bulk_loopback(dev: Any, size: int) -> None:
    data = os.urandom(size - 2) + b"\x00\xff" if size >= 2 else b"\xff"
    assert dev.write(0x01, data, timeout=1000) == size
    assert bytes(dev.read(0x81, size, timeout=1000)) == data


def test_bulk_read_ends_at_the_short_packet(dev: Any) -> None:
    dev.write(0x01, b"abc")
    dev.write(0x01, b"defg")
    assert bytes(dev.read(0x81, 4096)) == b"abcdefg"


def test_bulk_read_smaller_than_a_packet_overflows(dev: Any) -> None:
    dev.write(0x01, bytes(100))
    with pytest.raises(usb.core.USBError) as e:
        dev.read(0x81, 10)
    assert e.value.errno == errno.EOVERFLOW


def test_bulk_read_timeout(dev: Any) -> None:
    with pytest.raises(usb.core.USBTimeoutError) as e:
        dev.read(0x81, 64, timeout=100)
    assert e.value.errno == errno.ETIMEDOUT
    assert e.value.backend_error_code == -7  # LIBUSB_ERROR_TIMEOUT


def test_vendor_control_out_then_in(dev: Any) -> None:
    payload = b"\x00hello\xff" * 10
    assert dev.ctrl_transfer(0x40, 0x01, 0, 0, payload) == len(payload)
    assert bytes(dev.ctrl_transfer(0xC0, 0x01, 0, 0, 256)) == payload
    assert bytes(dev.ctrl_transfer(0xC0, 0x01, 0, 0, 5)) == payload[:5]


def test_unsupported_request_stalls(dev: Any) -> None:
    for args in [(0xC0, 0x7E, 0, 0, 8),  # unknown vendor request
                 (0x80, 0x06, 0x0600, 0, 10),  # device qualifier: a full-speed device stalls
                 (0xA1, 0x01, 0, 0, 8)]:  # class request
        with pytest.raises(usb.core.USBError) as e:
            dev.ctrl_transfer(*args)
        assert e.value.errno == errno.EPIPE and e.value.backend_error_code == -9


def test_standard_requests(dev: Any) -> None:
    assert bytes(dev.ctrl_transfer(0x80, 0x00, 0, 0, 2)) == b"\x00\x00"  # GET_STATUS
    assert bytes(dev.ctrl_transfer(0x80, 0x08, 0, 0, 1)) == b"\x01"  # GET_CONFIGURATION
    assert dev.ctrl_transfer(0x02, 0x03, 0, 0x81, b"") == 0  # SET_FEATURE(ENDPOINT_HALT)
    assert bytes(dev.ctrl_transfer(0x82, 0x00, 0, 0x81, 2)) == b"\x01\x00"
    with pytest.raises(usb.core.USBError) as e:
        dev.read(0x81, 64, timeout=100)
    assert e.value.errno == errno.EPIPE
    dev.clear_halt(0x81)
    assert bytes(dev.ctrl_transfer(0x82, 0x00, 0, 0x81, 2)) == b"\x00\x00"
    dev.write(0x01, b"ok")
    assert bytes(dev.read(0x81, 64)) == b"ok"


def test_interrupt_in_reports_the_loopback_state(dev: Any) -> None:
    dev.write(0x01, bytes(70))
    dev.ctrl_transfer(0x40, 0x01, 0, 0, b"abc")
    assert struct.unpack("<II", bytes(dev.read(0x82, 8))) == (70, 3)


def test_claimed_interface_is_busy_for_another_connection(lab: ServerProc, dev: Any) -> None:
    usb.util.claim_interface(dev, 0)
    with bridge.connect(lab.url) as other:
        d2 = usb.core.find(idVendor=VID, backend=get_backend(other))
        with pytest.raises(usb.core.USBError) as e:
            d2.write(0x01, b"x")
        assert e.value.errno == errno.EBUSY
        usb.util.release_interface(dev, 0)
        assert d2.write(0x01, b"x") == 1  # pyusb claims the interface for d2 now
        with pytest.raises(usb.core.USBError) as e:
            dev.read(0x81, 64)
        assert e.value.errno == errno.EBUSY
        usb.util.dispose_resources(d2)
        assert bytes(dev.read(0x81, 64)) == b"x"


def test_proxy_gives_a_pyusb_device(host: Client) -> None:
    with host.open("usb0") as proxy:
        d = proxy.device()
        assert (d.idVendor, d.idProduct, d.product) == (VID, PID, "sim-loopback")
        d.reset()
        assert d.write(0x01, b"via proxy") == 9
        assert bytes(d.read(0x81, 64)) == b"via proxy"
        assert usb.core.find(backend=proxy.backend()).idProduct == PID
        usb.util.dispose_resources(d)


class RequestCounter:
    """A loopback TCP relay in front of a server that decodes what the client sends with
    the sans-I/O protocol and keeps the requests (each one is a round trip)."""

    def __init__(self, upstream: str) -> None:
        u = parse_url(upstream)
        self.upstream = (u.host, u.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"hwbridge://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[Message] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(self.upstream)
        threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()
        self._pump(client, server, Connection(Role.SERVER))

    def _pump(self, src: socket.socket, dst: socket.socket, conn: Connection | None) -> None:
        while chunk := src.recv(65536):
            if conn is not None:
                conn.receive_data(chunk)
                while isinstance(ev := conn.next_event(), Call | Batch):
                    self.requests.append(ev)
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)


def test_find_and_strings_cost_two_round_trips(lab: ServerProc) -> None:
    relay = RequestCounter(lab.url)
    with bridge.connect(relay.url) as c:
        d = usb.core.find(idVendor=VID, idProduct=PID, backend=get_backend(c))
        assert (d.manufacturer, d.product) == ("hwbridge", "sim-loopback")
        assert d.serial_number and d.get_active_configuration().bNumInterfaces == 1
        ops = [m.op if isinstance(m, Call) else [op for op, _ in m.ops]
               for m in relay.requests]
        assert ops == ["devices", ["open", "usb_descriptors"], "usb_get_configuration"]
        assert usb.core.find(idVendor=VID, backend=get_backend(c)) is not None
        assert len(relay.requests) == 3  # enumerating again costs nothing


def test_read_only_manifest_refuses_writes(make_server: Any) -> None:
    s = make_server('[devices.ro]\nkind = "usb"\nsim = "usb-loopback"\naccess = "r"\n'
                    'serial = "RO-1"\nproduct = "read-only"\n')
    with bridge.connect(s.url) as c:
        d = usb.core.find(idVendor=VID, backend=get_backend(c))
        assert (d.serial_number, d.product) == ("RO-1", "read-only")
        with pytest.raises(usb.core.USBError) as e:
            d.write(0x01, b"x")
        assert e.value.errno == errno.EACCES
        with pytest.raises(usb.core.USBTimeoutError):
            d.read(0x81, 64, timeout=50)


def test_bad_arguments_are_einval_and_the_server_lives(host: Client) -> None:
    with host.open("usb0") as proxy:
        h = proxy.handle
        for op, args in [("usb_bulk_read", [h, "x", 10, 1.0]),
                         ("usb_bulk_read", [h, 0x01, 10, 1.0]),  # an OUT endpoint
                         ("usb_bulk_write", [h, 0x01, "text", 1.0]),
                         ("usb_bulk_read", [h, 0x81, -1, 1.0]),
                         ("usb_control_in", [h, 0x40, 1, 0, 0, 8, 1.0]),  # OUT request type
                         ("usb_control_out", [h, 0x40, 1, 0x10000, 0, b"", 1.0]),
                         ("usb_set_altsetting", [h, 0, 300])]:
            with pytest.raises(OSError) as e:
                host.call(op, args)
            assert e.value.errno == errno.EINVAL, op
        assert host.call("usb_get_configuration", [h]) in (0, 1)


def test_sim_transfers_time_out_on_the_sim_clock() -> None:
    from bridge.sim.backend import lab_manifest
    from bridge.sim.clock import clock
    from bridge.sim.usb import SimUSBHandle

    from bridge.timeout import Deadline

    spec = dataclasses.replace(lab_manifest().devices["usb0"], name="usb-clock-test")
    h = SimUSBHandle(spec)
    outcome: list[BaseException] = []
    clock.set_manual()
    try:
        t = threading.Thread(target=lambda: outcome.append(
            pytest.raises(TimeoutError, h.bulk_read, 0x81, 64, Deadline(30)).value))
        t.start()
        t.join(0.3)
        assert t.is_alive() and not outcome  # real time passes, sim time does not
        clock.advance(31)
        t.join(10)
        assert not t.is_alive() and outcome[0].errno == errno.ETIMEDOUT
    finally:
        clock.set_real()
        h.close()
