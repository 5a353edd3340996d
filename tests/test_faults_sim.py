# Fault injection through a real server: rules from the manifest, and at run time through
# the simctl device; on sim and posix devices alike. The client must see what real hardware
# gives: the same OSError subclasses and errno values.
from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
from bridge.sim.faults import Rule, SimControl

import bridge
from bridge.testing import ServerProc

FAULTY = """
[devices.zeros]
kind = "node"
sim = "zero"
faults = [{op = "read", nth = 2, errno = "EIO"}, {op = "read", short = 4}]

[devices.nul]
kind = "node"
path = "/dev/null"
faults = [{op = "write", nth = 1, count = 2, errno = "EAGAIN"},
          {op = "open", nth = 3, errno = "EBUSY"}]

[devices.simctl]
kind = "node"
sim = "simctl"
"""


@pytest.fixture
def faulty(make_server: Callable[..., ServerProc]) -> ServerProc:
    return make_server(FAULTY, "--sim")


def test_manifest_faults_on_a_sim_node(faulty: ServerProc) -> None:
    with bridge.connect(faulty.url) as host, host.open("zeros") as zero:
        assert zero.read(16) == bytes(4)  # short read: at most 4 bytes
        with pytest.raises(OSError) as info:
            zero.read(16)
        assert type(info.value) is OSError and info.value.errno == errno.EIO
        assert "zeros: read" in str(info.value)
        assert zero.read(2) == bytes(2)


def test_manifest_faults_on_a_posix_node(faulty: ServerProc) -> None:
    with bridge.connect(faulty.url) as host:
        with host.open("nul") as nul:
            for _ in range(2):
                with pytest.raises(BlockingIOError) as info:
                    nul.write(b"abc")
                assert info.value.errno == errno.EAGAIN
            assert nul.write(b"abc") == 3
        host.open("nul").close()
        with pytest.raises(OSError) as busy:
            host.open("nul")
        assert busy.value.errno == errno.EBUSY


def test_i2c_nak_and_stuck_bus_at_run_time(faulty: ServerProc) -> None:
    with bridge.connect(faulty.url) as host, host.open("i2c1") as bus:
        ctl = SimControl(host)
        before = bus.read_register(0x48, 0x00, 2)
        ctl.inject("i2c1", op="read_register", nth=2, nak=True)  # counted from now
        assert bus.read_register(0x48, 0x00, 2) == before
        with pytest.raises(OSError) as nak:
            bus.read_register(0x48, 0x00, 2)
        assert nak.value.errno == errno.ENXIO
        assert bus.read_register(0x48, 0x00, 2) == before
        ctl.inject("i2c1", stuck=True)
        with pytest.raises(TimeoutError) as stuck:
            bus.transfer(0x50, [bus.Message(1, read=True)])
        assert stuck.value.errno == errno.ETIMEDOUT
        ctl.clear("i2c1")
        assert bus.read_register(0x48, 0x00, 2) == before


def test_unplug_and_come_back(faulty: ServerProc) -> None:
    with bridge.connect(faulty.url) as host:
        ctl = SimControl(host)
        old = host.open("uart0")
        ctl.unplug("uart0")
        with pytest.raises(OSError) as gone:
            old.write(b"x")
        assert gone.value.errno == errno.ENODEV
        with pytest.raises(OSError) as no_open:
            host.open("uart0")
        assert no_open.value.errno == errno.ENODEV
        assert ctl.status("uart0")["plugged"] is False
        ctl.plug("uart0")
        with pytest.raises(OSError) as stale:  # a handle from before the unplug stays dead
            old.write(b"x")
        assert stale.value.errno == errno.ENODEV
        with host.open("uart0") as fresh:
            fresh.timeout = 5.0
            fresh.write(b"back\n")
            assert fresh.readline() == b"back\n"


def test_timed_unplug_follows_the_manual_clock(make_server: Callable[..., ServerProc]) -> None:
    srv = make_server(FAULTY, "--sim", env={"HWBRIDGE_SIM_CLOCK": "manual"})
    with bridge.connect(srv.url) as host:
        ctl = SimControl(host)
        start = ctl.now()
        ctl.unplug("zeros", seconds=2.0)
        ctl.advance(1.5)
        assert ctl.now() == start + 1.5
        with pytest.raises(OSError) as gone:
            host.open("zeros")
        assert gone.value.errno == errno.ENODEV
        ctl.advance(0.5)
        with host.open("zeros") as zero:
            assert zero.read(3) == bytes(3)


def test_simctl_reaches_only_the_manifest(faulty: ServerProc,
                                          make_server: Callable[..., ServerProc]) -> None:
    with bridge.connect(faulty.url) as host:
        ctl = SimControl(host)
        with pytest.raises(OSError) as unknown:
            ctl.unplug("/dev/sda")
        assert unknown.value.errno == errno.EINVAL and "no device" in str(unknown.value)
        with pytest.raises(OSError) as clock:
            ctl.advance(1.0)  # real time: only a manual clock can be driven
        assert clock.value.errno == errno.EINVAL
    limited = make_server(FAULTY.replace('sim = "simctl"', 'sim = "simctl"\ntargets = ["zeros"]'))
    with bridge.connect(limited.url) as host:
        ctl = SimControl(host)
        ctl.inject("zeros", op="read", errno="EIO")
        with pytest.raises(PermissionError):
            ctl.unplug("nul")


def test_bad_fault_rules_stop_the_server(make_server: Callable[..., ServerProc]) -> None:
    with pytest.raises(RuntimeError, match="unknown fault keys: bogus"):
        make_server('[devices.z]\nkind = "node"\nsim = "zero"\nfaults = [{bogus = 1}]\n')
    with pytest.raises(RuntimeError, match="errno must be a name"):
        make_server('[devices.z]\nkind = "node"\nsim = "zero"\nfaults = [{errno = "EWHAT"}]\n')


def test_rule_windows() -> None:
    r = Rule.parse({"op": "read", "nth": 3, "count": 2, "errno": "EIO"})
    assert [k for k in range(1, 8) if r.applies(k)] == [3, 4]
    assert Rule.parse({"op": "read", "nth": 2}).count == 1
    assert Rule.parse({"latency": 0.5}).count is None
    assert Rule.parse({"nak": True}).errno == errno.ENXIO
    assert Rule.parse({"errno": "EREMOTEIO"}).errno == errno.EREMOTEIO
