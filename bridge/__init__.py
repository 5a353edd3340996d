# hwbridge: remote hardware access. The client API lives here (pure Python, imports on
# Windows); the device host (server, backends) is imported only by `hwbridge serve`.
from __future__ import annotations

__version__ = "0.1.0"

from .batch import Deferred  # noqa: E402
from .client import Client, DeviceInfo  # noqa: E402
from .connect import connect, open_device  # noqa: E402
from .protocol import ProtocolError  # noqa: E402
from .timeout import Deadline  # noqa: E402
from .url import URL, parse_url  # noqa: E402

__all__ = [
    "URL",
    "Client",
    "Deadline",
    "Deferred",
    "DeviceInfo",
    "ProtocolError",
    "__version__",
    "connect",
    "open_device",
    "parse_url",
]


def _register_serial_urls() -> None:
    """Let pyserial's serial_for_url() open hwbridge://HOST:PORT/DEVICE: it imports
    `protocol_<scheme>` from each package in serial.protocol_handler_packages."""
    try:
        import serial
    except ImportError:  # pyserial is a dependency, but the core works without it
        return
    if "bridge.drivers" not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append("bridge.drivers")


_register_serial_urls()
