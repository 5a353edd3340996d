# hwbridge: remote hardware access. The client API lives here (pure Python, imports on
# Windows); the device host (server, backends) is imported only by `hwbridge serve`.
from __future__ import annotations

__version__ = "0.1.0"

from .client import Client, Deferred, DeviceInfo, connect, open_device  # noqa: E402
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
