# Resource limits of a device host: what one connection or one principal may hold, and the
# deadlines that end slow or idle peers (slowloris). Owns the [limits] manifest table and
# its safe defaults, and the receive deadlines of a connection (kernel SO_RCVTIMEO, so a
# receive on the hot path costs no extra system call). Must not know about devices or the
# protocol's messages.
from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Per-connection and per-principal limits; every field is a [limits] key.

    Bytes buffered per connection are bounded by the frame limit (``[server] max_frame``):
    the host reads one frame at a time, plus at most one 64 KiB receive.
    """

    #: open handles per connection
    max_handles: int = 1024
    #: operations of one connection waiting for a device at once (requests in flight)
    max_in_flight: int = 64
    #: connections of one principal at once (anonymous clients share one principal)
    max_connections_per_principal: int = 256
    #: connections in the TLS or hello handshake at once; more are closed at accept
    max_handshakes: int = 512
    #: seconds from accept to a finished hello (TLS handshake included), in total
    handshake_timeout: float = 10.0
    #: seconds a frame that has started arriving may take to arrive completely
    frame_timeout: float = 30.0
    #: seconds with no byte from a client before the host closes it; 0 disables. A
    #: connection with an operation waiting on a device is never idle.
    idle_timeout: float = 3600.0


def parse_limits(table: Mapping[str, Any] | None, where: str) -> Limits:
    """Validate a [limits] table; ValueError naming the key."""
    if table is None:
        return Limits()
    if not isinstance(table, dict):
        raise ValueError(f"{where}: [limits] must be a table")
    known = {f.name: f for f in fields(Limits)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        f = known.get(key)
        if f is None:
            raise ValueError(f"{where}: [limits] has no key {key!r}; known: "
                             f"{', '.join(sorted(known))}")
        if f.type == "int":
            if type(value) is not int or value < 1:
                raise ValueError(f"{where}: [limits] {key} must be a positive integer")
        elif type(value) not in (int, float) or value < 0 or (value == 0 and
                                                             key != "idle_timeout"):
            raise ValueError(f"{where}: [limits] {key} must be a positive number of seconds")
        values[key] = value
    return Limits(**values)


class Deadlines:
    """The receive deadlines of one server connection.

    Before the hello, the whole handshake must finish within ``handshake_timeout``; once a
    frame has started arriving, all of it within ``frame_timeout``; between frames, the
    client may be silent for ``idle_timeout``. A receive that misses its deadline raises
    BlockingIOError (or ssl.SSLWantReadError on TLS); the server then ends the connection.
    The socket option changes only when the kind of wait changes, not per receive.
    """

    def __init__(self, sock: socket.socket, limits: Limits) -> None:
        self.sock = sock
        self.limits = limits
        self.frame_started: float | None = None
        self.idle = False
        self.handshake_end = time.monotonic() + limits.handshake_timeout
        # The server's bookkeeping of this connection's place in the counters.
        self.handshake_done = False
        self.admitted = False

    def handshake(self) -> None:
        """Before each receive of the handshake: the time left of the whole handshake."""
        self._set(self.handshake_end - time.monotonic())

    def greeted(self, buffered: int) -> None:
        """After the hello or a receive: frame deadline if a frame is part-way, else idle."""
        if buffered:
            now = time.monotonic()
            if self.frame_started is None:
                self.frame_started = now
            self.idle = False
            self._set(self.frame_started + self.limits.frame_timeout - now)
        elif not self.idle or self.frame_started is not None:
            self.frame_started = None
            self.idle = True
            self._set(self.limits.idle_timeout)

    def _set(self, seconds: float) -> None:
        if seconds == 0 and self.idle:
            tv = struct.pack("ll", 0, 0)  # no idle deadline
        else:
            seconds = max(seconds, 0.001)
            tv = struct.pack("ll", int(seconds), int(seconds % 1 * 1e6))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
