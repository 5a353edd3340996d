# Connecting: a hwbridge URL becomes a socket (TCP, Unix-domain, or TLS 1.3 with client
# certificates or a token) and a Client speaking over it. Client side, pure Python; must
# import on Windows. Must not know about devices beyond opening one by URL.
from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator
from typing import Any

from .client import Client
from .url import parse_url


def connect(url: str, timeout: float | None = 10.0, max_frame: int | None = None, *,
            tls: ssl.SSLContext | None = None, ca: str | None = None, cert: str | None = None,
            key: str | None = None, token: str | None = None) -> Client:
    """Connect to a device host: ``hwbridge://HOST[:PORT]`` (or ``hwbridge+unix:///path``).

    ``hwbridges://`` is TLS 1.3: the host is checked against ``ca`` and this client shows
    ``cert``/``key`` (or a ready ``tls`` context); a ``token`` is an alternative identity,
    sent only over TLS. Unset, they come from HWBRIDGE_CA, HWBRIDGE_CERT, HWBRIDGE_KEY and
    HWBRIDGE_TOKEN.
    """
    u = parse_url(url)
    if token is not None and u.scheme != "hwbridges":
        raise ValueError("a token is sent only over TLS: use a hwbridges:// URL")
    if token is None and u.scheme == "hwbridges":
        token = os.environ.get("HWBRIDGE_TOKEN")
    if u.scheme == "hwbridge+unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(u.path)
    else:
        sock = socket.create_connection((u.host, u.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        if u.scheme == "hwbridges":
            if tls is None:
                from .tls import client_context

                env = os.environ.get
                cert = cert or env("HWBRIDGE_CERT")
                tls = client_context(ca or env("HWBRIDGE_CA"), cert,
                                     key or env("HWBRIDGE_KEY") or None)
            sock = tls.wrap_socket(sock, server_hostname=u.host)
        client = Client(u, sock, max_frame or 64 * 1024 * 1024, token)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return client


@contextlib.contextmanager
def open_device(url: str) -> Iterator[Any]:
    """``hwbridge://HOST:PORT/DEVICE`` -> (connected, opened proxy); closes both after."""
    u = parse_url(url)
    if not u.device:
        raise ValueError(f"{url!r} names no device")
    with connect(u.host_url) as host, host.open(u.device) as dev:
        yield dev
