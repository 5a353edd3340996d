# Shared fixtures: a real `hwbridge serve` process on loopback (bridge.testing), started from
# a manifest text or serving the built-in simulated lab.
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.testing import ServerProc, start_server

__all__ = ["NoHostThread", "ServerProc", "start_server"]


class NoHostThread(threading.Thread):
    """For a host in the test's process that cannot start threads (a pid or memory limit):
    patched in for threading.Thread, the host's own threads ("hwbridge-...") fail."""

    def start(self) -> None:
        if self.name.startswith("hwbridge-"):
            raise RuntimeError("can't start new thread")
        super().start()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProc]]:
    """Factory: make_server(manifest_text=None, *extra_args, env=None) -> ServerProc."""
    started: list[ServerProc] = []

    def make(manifest: str | None = None, *extra: str,
             env: dict[str, str] | None = None) -> ServerProc:
        s = start_server(manifest, *extra, workdir=tmp_path, env=env)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One server process serving the built-in simulated lab, shared by the test session."""
    s = start_server(workdir=tmp_path_factory.mktemp("lab"))
    yield s
    s.stop()
