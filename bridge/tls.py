# TLS for hwbridges:// — ssl contexts for the device host and the client (TLS 1.3 only,
# mutual authentication), the principal names a client certificate carries, and the rule
# that plain TCP listens on loopback only. Stdlib ssl only, so the client side imports
# anywhere (Windows too). Must not know about the protocol, grants or devices.
from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class TlsFiles:
    """The host's certificate chain and key, and the CA whose client certificates it trusts."""

    cert: str
    key: str
    ca: str


def server_context(files: TlsFiles, require_client_cert: bool = True) -> ssl.SSLContext:
    """A TLS 1.3 server context; client certificates must chain to ``files.ca``.

    ``require_client_cert=False`` lets a client without a certificate finish the handshake
    (it must then present a token in its hello, or be refused there).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    try:
        ctx.load_cert_chain(files.cert, files.key)
        ctx.load_verify_locations(cafile=files.ca)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"TLS: cannot load {files.cert} / {files.key} / {files.ca}: {e}"
                         ) from None
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: str | None = None, cert: str | None = None,
                   key: str | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context that checks the host against ``ca`` (the system store if
    None) and presents ``cert``/``key`` when given."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"TLS: cannot load client certificate {cert}: {e}") from None
    return ctx


def peer_names(peercert: dict[str, Any] | None) -> list[str]:
    """Identities of a verified peer certificate: the subject CN first, then every SAN.

    An empty list when the peer sent no certificate. SAN values keep no prefix (a DNS name,
    an e-mail address, a URI or an IP address as text).
    """
    if not peercert:
        return []
    names: list[str] = []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(value)
    for _kind, value in peercert.get("subjectAltName", ()):
        if value not in names:
            names.append(value)
    return names


def is_loopback(host: str) -> bool:
    """True for a listen address that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(host: str, tls: bool, allow_insecure: bool) -> None:
    """Refuse a plain-TCP listen beyond loopback unless the manifest says so explicitly."""
    if tls or allow_insecure or is_loopback(host):
        return
    raise ValueError(
        f"refusing to serve plain TCP on {host}: anyone on that network could use the "
        "devices. Configure [server] tls = {cert, key, ca} (see `hwbridge ca --help`), listen "
        "on 127.0.0.1, or set [server] allow_insecure = true to accept the risk")
