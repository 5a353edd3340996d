"""A host that runs out of file descriptors keeps serving the clients it has, does not spin
on the failing accept (one warning, not one per poll), and accepts again once descriptors
are free. Both ways in: the event loop (plain TCP) and the thread per TLS connection. The
host runs with a small RLIMIT_NOFILE; the test fills it with real connections. Out of
threads, a TLS host closes the new connection and serves on (the event loop's side of
running out of threads: tests/test_loop.py)."""
from __future__ import annotations

import os
import ssl
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import bridge
from bridge.host import Host
from bridge.manifest import parse
from bridge.server import Server

from .conftest import NoHostThread, ServerProc, start_server
from .security_helpers import Pki, make_pki

PLAIN = """
[devices.null]
kind = "node"
sim = "null"
"""

ROOM = 12  # connections that fit under the limit, above what the host itself holds


def _cpu_seconds(pid: int) -> float:
    """User plus system time of process ``pid`` so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _alive(c: bridge.Client) -> None:
    with c.open("null") as dev:
        assert dev.write(b"here") == 4


Connect = Callable[[float], bridge.Client]


@pytest.fixture(params=["plain", "tls"])
def host(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, Connect]]:
    if request.param == "plain":
        probe = start_server(PLAIN)
    else:
        pki: Pki = make_pki(tmp_path_factory.mktemp("pki"))
        probe = start_server(pki.manifest(), workdir=pki.dir)
    base = probe.fd_count()  # what the host holds before any client, at its normal limit
    probe.stop()
    manifest = PLAIN if request.param == "plain" else pki.manifest()
    workdir = None if request.param == "plain" else pki.dir
    # Python's own later opens (imports, the loop's pipes) are counted in ``base`` already.
    with start_server(manifest, workdir=workdir, nofile=base + ROOM) as s:
        def connect(timeout: float) -> bridge.Client:
            if request.param == "plain":
                return bridge.connect(s.url, timeout=timeout)
            return bridge.connect(s.url, timeout=timeout, **pki.client("alice"))
        yield s, connect


def test_running_out_of_descriptors_pauses_accepting_only(
        host: tuple[ServerProc, Connect]) -> None:
    srv, connect = host
    clients: list[bridge.Client] = []
    try:
        for _ in range(4 * ROOM):  # fill the host up: the first connect that is not served
            try:
                clients.append(connect(2.0))
            except (TimeoutError, ConnectionError, OSError):
                break
        else:
            pytest.fail(f"{len(clients)} connections and the host still accepts")
        assert clients, "no connection fitted under the limit"
        # At the limit: the host does not spin on the accept that fails meanwhile.
        before, t = _cpu_seconds(srv.proc.pid), time.monotonic()
        time.sleep(1.0)
        busy = _cpu_seconds(srv.proc.pid) - before
        assert busy < 0.5 * (time.monotonic() - t), f"host busy {busy:.2f} s while idle"
        for c in clients[:3]:  # those it has are served as before
            _alive(c)
        for c in clients[:2]:
            c.close()
        with connect(10.0) as fresh:  # a descriptor is free again: accepted
            _alive(fresh)
        _alive(clients[-1])
    finally:
        for c in clients:
            c.close()
    code = srv.stop()
    out = srv.output()
    assert code == 0, out
    # Warned when it ran out (again: the accept after the last free descriptor fails too,
    # queue or no queue), not once per poll: that would be thousands of lines.
    assert 1 <= out.count("accept failed") <= 5, out
    assert "Too many open files" in out and "accepting connections again" in out, out


def test_a_tls_host_out_of_threads_closes_new_connections_and_serves_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TLS connections have a thread each: with none to be had, the new connection is
    closed at accept, the clients the host has are served, and once threads come back new
    ones are accepted again."""
    pki = make_pki(tmp_path)
    host = Host(parse(tomllib.loads(pki.manifest())))
    host.prepare()
    server = Server(host)
    _, port = server.listen_tcp("127.0.0.1", 0)
    server.start()
    url = f"hwbridges://127.0.0.1:{port}"
    try:
        with bridge.connect(url, **pki.client("alice")) as before:
            with monkeypatch.context() as m:
                m.setattr(threading, "Thread", NoHostThread)
                with pytest.raises((ConnectionError, ssl.SSLError, TimeoutError)):
                    bridge.connect(url, timeout=5, **pki.client("alice")).close()
                _alive(before)
            with bridge.connect(url, timeout=10, **pki.client("alice")) as after:
                _alive(after)
    finally:
        server.shutdown()
