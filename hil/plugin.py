# The hwbridge pytest plugin: one test suite against the simulated lab or a real rig.
# `pytest` alone serves the built-in simulated lab from a real server process on loopback;
# `pytest --hwbridge hwbridge://rig-host:7420` (or HWBRIDGE_URL) runs the same tests against a
# hardware-in-the-loop host. A rig file (TOML) maps the names tests use to the rig's device
# names; tests marked `@pytest.mark.hil` need real hardware and skip, with the reason, on the
# simulator. Must not know about any particular device.
from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

import bridge


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hwbridge")
    group.addoption("--hwbridge", metavar="URL", default=os.environ.get("HWBRIDGE_URL"),
                    help="device host to test against (default: a local simulated lab)")
    group.addoption("--hwbridge-rig", metavar="RIG.TOML",
                    default=os.environ.get("HWBRIDGE_RIG"),
                    help="rig file mapping test names to the host's device names")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "hil: needs real hardware behind --hwbridge URL")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hwbridge"):
        return
    skip = pytest.mark.skip(reason="needs a hardware rig: pass --hwbridge URL or HWBRIDGE_URL")
    for item in items:
        if "hil" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def hwbridge_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of the device host under test: the rig's, or a fresh simulated lab's."""
    url = request.config.getoption("--hwbridge")
    if url:
        yield str(url)
        return
    from bridge.testing import start_server

    server = start_server()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hwbridge_rig(request: pytest.FixtureRequest) -> dict[str, str]:
    """Logical name -> device name, from the rig file's [devices] table (identity if none)."""
    path = request.config.getoption("--hwbridge-rig")
    if not path:
        return {}
    with open(path, "rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    devices = data.get("devices", {})
    if not isinstance(devices, dict) or not all(isinstance(v, str) for v in devices.values()):
        raise pytest.UsageError(f"{path}: [devices] maps names to device-name strings")
    return dict(devices)


@pytest.fixture
def hwbridge_host(hwbridge_url: str) -> Iterator[bridge.Client]:
    """A connection to the device host under test, closed after the test."""
    with bridge.connect(hwbridge_url) as host:
        yield host


@pytest.fixture
def hwbridge_device(hwbridge_host: bridge.Client, hwbridge_rig: dict[str, str]) -> Any:
    """``hwbridge_device("uart0")`` opens a device by its logical name (mapped by the rig)."""
    opened: list[Any] = []

    def open_(name: str) -> Any:
        dev = hwbridge_host.open(hwbridge_rig.get(name, name))
        opened.append(dev)
        return dev

    yield open_
    for dev in opened:
        if not getattr(dev, "closed", True):
            dev.close()
