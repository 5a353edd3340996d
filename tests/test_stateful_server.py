"""A hypothesis state machine driving a real `hwbridge serve` process over real loopback
connections: open (valid and invalid names and access), read, write, ioctl (allowed, not
allowed, wrong size), close (valid, twice, forged numbers, another connection's handles),
batches with references, abrupt and mid-frame disconnects, raw half-frames, reconnects.

A model holds what each connection has open and what the pty holds. Expected outcomes of
real nodes come from the kernel itself (the same operation on a local fd), never from the
code under test. Invariants: every result and errno matches the model; only OSError
subclasses and ProtocolError ever reach the client; a handle the model says is not open on a
connection gives EBADF there; the host's fd count equals baseline + live connections + open
real-node handles, so it returns to its baseline once every connection is gone.
The model's pieces (devices, the kernel oracle, expected outcomes) are tests/stateful_model.py.
Fast profile in `make test`; HWBRIDGE_FUZZ=long (`make fuzz`) runs many more steps."""
from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
import termios
import time
import tty
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import bridge
from bridge.protocol import HEADER, Call, Hello, ProtocolError, Ref
from bridge.testing import start_server
from bridge.url import parse_url

from .stateful_model import (
    CODES,
    DEVICES,
    PATHS,
    SIZES,
    Bench,
    Conn,
    Err,
    Ok,
    Pty,
    eq,
    fionread,
    frames,
    is_handle,
    kernel,
    manifest,
    settle,
)

LONG = os.environ.get("HWBRIDGE_FUZZ") == "long"
PROFILE = settings(max_examples=1000 if LONG else 100, stateful_step_count=60 if LONG else 30,
                   deadline=None, suppress_health_check=list(HealthCheck))
MAX_CONNS = 3
SEEN: Counter[str] = Counter()  # outcomes met, printed at the end: what the run covered



@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    master, slave = os.openpty()
    tty.setraw(slave)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    os.set_blocking(master, False)
    pty = Pty(master, slave, os.ttyname(slave))
    with start_server(manifest(pty.path), workdir=tmp_path_factory.mktemp("stateful")) as s:
        with bridge.connect(s.url) as warm:  # every backend loaded, every path pinned
            for name in DEVICES:
                warm.call("close", [warm.call("open", [name])])
        yield Bench(s, pty, settle(s, lambda: None, None))
    os.close(master)
    os.close(slave)


class ServerMachine(RuleBasedStateMachine):
    """Model: live connections, each one's open handles, the pty's unread input."""

    bench: Bench

    def __init__(self) -> None:
        super().__init__()
        self.conns: list[Conn] = []
        self.retired: list[int] = []  # numbers closed or from gone connections
        self.pending = b""  # written to the pty master, not yet read through the host
        self.to_master = b""  # written to the pty slave through the host, not yet checked
        self._connect()

    # -- the model ----------------------------------------------------------------------

    def _connect(self) -> None:
        self.conns.append(Conn(bridge.connect(self.bench.server.url)))

    def expect(self, conn: Conn, op: str, args: list[Any]) -> Ok | Err:
        """The outcome the model predicts; Ok.check also applies the effect."""
        if op == "open":
            name, access = args[0], args[1] if len(args) > 1 else None
            if name not in DEVICES or not isinstance(name, str):
                return Err(errno.ENOENT)
            granted = DEVICES[name][1]
            if access is not None and str(access) not in ("r", "w", "rw", "wr", ""):
                return Err(errno.EINVAL)
            want = granted if access is None else str(access)
            if not set(want) <= set(granted):
                return Err(errno.EACCES)

            def opened(got: Any) -> None:
                is_handle(got)
                assert got not in conn.handles and got not in conn.closed, "number reused"
                conn.handles[got] = (name, want)
            return Ok(opened)
        h = args[0] if args else None
        if op == "close":
            if type(h) is not int or h not in conn.handles:
                return Err(errno.EBADF)

            def closed(got: Any) -> None:
                eq(got, None)
                del conn.handles[h]
                conn.closed.add(h)
                self.retired.append(h)
            return Ok(closed)
        if type(h) is not int:
            return Err(errno.EINVAL)
        if h not in conn.handles:
            return Err(errno.EBADF)
        name, access = conn.handles[h]
        if op == "read":
            return self._read(name, access, args[1], args[2])
        if op == "write":
            return self._write(name, access, args[1])
        if op == "ioctl":
            return self._ioctl(name, access, args[1], args[2])
        raise AssertionError(op)

    def _read(self, name: str, access: str, n: Any, timeout: Any) -> Ok | Err:
        if "r" not in access:
            return Err(errno.EACCES)
        if type(n) is not int or n < 0:
            return Err(errno.EINVAL)
        if name in PATHS:
            return kernel(name, access, lambda fd: os.read(fd, n))
        if name == "simzero":
            return Ok(lambda got: eq(got, bytes(n)))
        if name == "simnull":
            return Ok(lambda got: eq(got, b""))
        if n and not self.pending:
            return Err(errno.ETIMEDOUT)  # only ever asked with timeout 0 then

        def consumed(got: Any) -> None:
            eq(got, self.pending[:n])
            self.pending = self.pending[len(got):]
        return Ok(consumed)

    def _write(self, name: str, access: str, data: Any) -> Ok | Err:
        if "w" not in access:
            return Err(errno.EACCES)
        if not isinstance(data, bytes):
            return Err(errno.EINVAL)
        if name in PATHS:
            return kernel(name, access, lambda fd: os.write(fd, data))
        if name != "pty":
            return Ok(lambda got: eq(got, len(data)))

        def wrote(got: Any) -> None:
            eq(got, len(data))
            self.to_master += data
        return Ok(wrote)

    def _ioctl(self, name: str, access: str, request: Any, arg: Any) -> Ok | Err:
        allowed = DEVICES[name][2]
        req = next((k for k, v in CODES.items() if request in (k, v)), None)
        if req is None or req not in allowed:
            return Err(errno.EACCES)
        size = SIZES[req]
        if arg is not None and not isinstance(arg, bytes):
            return Err(errno.EINVAL)
        if arg is not None and len(arg) != size:
            return Err(errno.EINVAL)
        if name in PATHS:
            return kernel(name, access, lambda fd: [
                0, bytes(fcntl.ioctl(fd, CODES[req], bytes(size)))])
        if name != "pty":
            return Err(errno.ENOTTY)  # the sim nodes, like /dev/null
        if req == "FIONREAD":
            want = [0, struct.pack("i", len(self.pending))]
        else:
            want = [0, bytes(fcntl.ioctl(self.bench.pty.slave, CODES[req], bytes(size)))]
        return Ok(lambda got: eq(got, want))

    def run(self, conn: Conn, op: str, args: list[Any]) -> None:
        """One call on ``conn``, checked against the model."""
        want = self.expect(conn, op, args)
        dev = conn.handles.get(args[0], ("?",))[0] if args and type(args[0]) is int else "-"
        what = errno.errorcode.get(want.errno, "?") if isinstance(want, Err) else "ok"
        SEEN[f"{op} {dev if op != 'open' else args[0]} {what}"] += 1
        try:
            got = conn.client.call(op, args)
        except (OSError, ProtocolError) as e:
            assert isinstance(want, Err), f"{op}{args}: model says success, host said {e!r}"
            assert isinstance(e, OSError) and e.errno == want.errno, \
                f"{op}{args}: expected errno {want.errno}, got {e!r}"
            assert not isinstance(e, ConnectionError | ProtocolError), e
            return
        assert isinstance(want, Ok), f"{op}{args}: model says errno {want}, host said {got!r}"
        want.check(got)

    # -- choices --------------------------------------------------------------------------

    def handle_choices(self, conn: Conn) -> list[Any]:
        mine = list(conn.handles)
        return mine * 4 + self.forged(conn)

    def forged(self, conn: Conn) -> list[Any]:
        """Numbers that are not open on ``conn``: others', closed ones, made-up ones."""
        others = [h for c in self.conns if c is not conn for h in c.handles]
        # (floats: see test_float_handle_is_not_a_handle)
        made_up = [0, -1, 2**31, 10**6, "1", None]
        return [h for h in others + self.retired[-5:] if h not in conn.handles] + made_up

    def pick(self, data: st.DataObject, with_handles: bool = False) -> Conn:
        conns = [c for c in self.conns if c.handles or not with_handles]
        return conns[data.draw(st.integers(0, len(conns) - 1), label="conn")]

    def mine(self, data: st.DataObject) -> tuple[Conn, int]:
        conn = self.pick(data, with_handles=True)
        return conn, data.draw(st.sampled_from(sorted(conn.handles)), label="handle")

    def timeout_for(self, data: st.DataObject) -> Any:
        # Never a wait that could block: the pty with nothing pending is polled (timeout 0).
        if not self.pending:
            return data.draw(st.sampled_from([0, 0.0]))
        return data.draw(st.sampled_from([0, 1.0, None]))

    def has_handles(self) -> bool:
        return any(c.handles for c in self.conns)

    # -- rules ----------------------------------------------------------------------------

    @initialize(names=st.lists(st.sampled_from(list(DEVICES)), max_size=4))
    def open_some(self, names: list[str]) -> None:
        """Start with a few handles open, so the handle rules have work from step one."""
        for name in names:
            self.run(self.conns[0], "open", [name])

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), name=st.sampled_from([*DEVICES, *DEVICES, "nope", "", 5]),
          access=st.sampled_from([None, None, "r", "w", "rw", "x", 7]))
    def open(self, data: st.DataObject, name: Any, access: Any) -> None:
        self.run(self.pick(data), "open", [name] if access is None else [name, access])

    @precondition(has_handles)
    @rule(data=st.data(), n=st.sampled_from([0, 1, 7, 100, 100, -1, "4"]))
    def read(self, data: st.DataObject, n: Any) -> None:
        conn, h = self.mine(data)
        self.run(conn, "read", [h, n, self.timeout_for(data)])

    @precondition(has_handles)
    @rule(data=st.data(), payload=st.one_of(st.binary(max_size=64), st.just("text")))
    def write(self, data: st.DataObject, payload: Any) -> None:
        conn, h = self.mine(data)
        self.run(conn, "write", [h, payload, 5.0])
        self.check_master()

    @precondition(has_handles)
    @rule(data=st.data(),
          request=st.sampled_from(["FIONREAD", "TCGETS", "TIOCGWINSZ", "TIOCSWINSZ",
                                   "BOGUS", termios.TCGETS, 0x1234]),
          arg=st.sampled_from([None, None, None, bytes(4), bytes(8), bytes(7), bytes(36), 5]))
    def ioctl(self, data: st.DataObject, request: Any, arg: Any) -> None:
        conn, h = self.mine(data)
        self.run(conn, "ioctl", [h, request, arg])

    @precondition(has_handles)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        conn, h = self.mine(data)
        self.run(conn, "close", [h])

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), op=st.sampled_from(["read", "write", "ioctl", "close"]))
    def forged_handle(self, data: st.DataObject, op: str) -> None:
        """A number this connection does not hold: EBADF (or EINVAL if not a number)."""
        conn = self.pick(data)
        h = data.draw(st.sampled_from(self.forged(conn)), label="handle")
        args = {"read": [h, 4, 0], "write": [h, b"x", 0], "ioctl": [h, "FIONREAD", None],
                "close": [h]}[op]
        self.run(conn, op, args)

    @rule(payload=st.binary(min_size=1, max_size=32))
    def feed_pty(self, payload: bytes) -> None:
        """The far side of the pty sends bytes; wait until the slave holds all of them."""
        os.write(self.bench.pty.master, payload)
        self.pending += payload
        end = time.monotonic() + 5
        while fionread(self.bench.pty.slave) < len(self.pending) and time.monotonic() < end:
            time.sleep(0.001)
        assert fionread(self.bench.pty.slave) == len(self.pending)

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), ops=st.lists(st.tuples(
        st.sampled_from(["open", "read", "write", "close", "ioctl"]),
        st.integers(0, 7), st.integers(0, 10**6)), min_size=1, max_size=5))
    def batch(self, data: st.DataObject, ops: list[tuple[str, int, int]]) -> None:
        """A batch whose operations refer to earlier results (Ref), or to later ones."""
        conn = self.pick(data)
        names = list(DEVICES)
        handles = self.handle_choices(conn)
        wire: list[tuple[str, list[Any]]] = []
        for i, (op, ref, salt) in enumerate(ops):
            h: Any = Ref(ref) if ref <= i or ref == 7 else handles[salt % len(handles)]
            if op == "open":
                wire.append((op, [names[salt % len(names)]]))
            elif op == "read":
                wire.append((op, [h, salt % 9, 0]))
            elif op == "write":
                wire.append((op, [h, bytes([salt % 256]) * (salt % 5), 5.0]))
            elif op == "ioctl":
                wire.append((op, [h, ["FIONREAD", "TCGETS"][salt % 2], None]))
            else:
                wire.append((op, [h]))
        done: list[Any] = []
        failed: OSError | None = None
        try:
            with conn.client.batch():
                deferred = [conn.client.call(op, args) for op, args in wire]
        except OSError as e:
            assert not isinstance(e, ConnectionError), e
            failed = e
        for i, (op, args) in enumerate(wire):
            bad_ref = [a for a in args if isinstance(a, Ref) and not 0 <= a.index < i]
            real = [done[a.index] if isinstance(a, Ref) and not bad_ref else a for a in args]
            want = Err(errno.EINVAL) if bad_ref else self.expect(conn, op, real)
            SEEN[f"batch {op} {'ok' if isinstance(want, Ok) else want.errno}"] += 1
            if isinstance(want, Err):
                assert failed is not None and failed.errno == want.errno, \
                    f"batch op {i} {op}{args}: expected errno {want.errno}, got {failed!r}"
                assert f"(batch operation {i})" in str(failed), failed
                break
            got = deferred[i].result()
            want.check(got)
            done.append(got)
        else:
            assert failed is None, f"batch {wire} failed unexpectedly: {failed!r}"
        self.check_master()

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), how=st.sampled_from(["close", "reset", "half-close", "half-reset"]))
    def disconnect(self, data: st.DataObject, how: str) -> None:
        """A client goes away: cleanly, by TCP reset, or in the middle of a frame."""
        conn = self.conns.pop(data.draw(st.integers(0, len(self.conns) - 1), label="conn"))
        sock = conn.client._sock
        if how.startswith("half"):
            frame = frames(Call(99, "write", [next(iter(conn.handles), 1), b"lost", None]))
            sock.sendall(frame[: data.draw(st.integers(1, len(frame) - 1), label="cut")])
        if how.endswith("reset"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.client.close()
        self.retired.extend(conn.handles)

    @rule(data=st.data(), reset=st.booleans())
    def raw_half_frame(self, data: st.DataObject, reset: bool) -> None:
        """A raw peer says hello, sends part of a frame and vanishes."""
        u = parse_url(self.bench.server.url)
        with socket.create_connection((u.host, u.port), timeout=10) as s:
            frame = frames(Call(1, "open", ["null"])) + HEADER.pack(50, 0)
            cut = data.draw(st.integers(0, len(frame) - 1), label="cut")
            s.sendall(frames(Hello()) + frame[:cut])
            if reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    @precondition(lambda self: len(self.conns) < MAX_CONNS)
    @rule()
    def reconnect(self) -> None:
        self._connect()

    @rule()
    def fds_match_model(self) -> None:
        """baseline + one socket per live connection + one fd per open real-node handle."""
        want = self.bench.baseline + len(self.conns) + sum(
            DEVICES[name][0] == "posix" for c in self.conns for name, _ in c.handles.values())
        got = settle(self.bench.server, lambda: None, want)
        assert got == want, f"host holds {got} fds, the model says {want}"

    # -- invariants and teardown ----------------------------------------------------------

    @invariant()
    def host_alive(self) -> None:
        assert self.bench.server.proc.poll() is None, "the host process died"

    def check_master(self) -> None:
        """What the host wrote to the pty slave arrives on the master exactly once."""
        got = b""
        end = time.monotonic() + 5
        while len(got) < len(self.to_master) and time.monotonic() < end:
            if select.select([self.bench.pty.master], [], [], 0.05)[0]:
                got += os.read(self.bench.pty.master, 4096)
        if select.select([self.bench.pty.master], [], [], 0)[0]:
            got += os.read(self.bench.pty.master, 4096)
        assert got == self.to_master, f"master got {got!r}, expected {self.to_master!r}"
        self.to_master = b""

    def teardown(self) -> None:
        for c in self.conns:
            c.client.close()
        self.conns.clear()
        termios.tcflush(self.bench.pty.slave, termios.TCIOFLUSH)
        while select.select([self.bench.pty.master], [], [], 0)[0]:
            os.read(self.bench.pty.master, 4096)
        self.pending = self.to_master = b""
        base = self.bench.baseline
        got = settle(self.bench.server, lambda: None, base)
        assert got == base, f"host holds {got} fds after every connection left ({base} before)"


def test_stateful_server_matches_model(bench: Bench) -> None:
    ServerMachine.bench = bench
    SEEN.clear()
    run_state_machine_as_test(ServerMachine, settings=PROFILE)
    print(f"\nstateful outcomes ({sum(SEEN.values())} checked calls):",
          dict(sorted(SEEN.items())))


def test_float_handle_is_not_a_handle(bench: Bench) -> None:
    with bridge.connect(bench.server.url) as c:
        h = c.call("open", ["simzero"])
        assert h == 1
        with pytest.raises(OSError) as e:
            c.call("read", [float(h), 4, 0])
        assert e.value.errno in (errno.EINVAL, errno.EBADF)
