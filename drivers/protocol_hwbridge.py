# pyserial's URL handler for hwbridge://HOST[:PORT]/DEVICE: serial.serial_for_url() imports
# `protocol_<scheme>` from the packages in serial.protocol_handler_packages (bridge/__init__
# adds "bridge.drivers") and uses its `Serial` class. Client side; must not know about sockets.
from __future__ import annotations

from .serial import URLSerial as Serial

__all__ = ["Serial"]
