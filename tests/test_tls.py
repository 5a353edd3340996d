"""TLS identities end to end: a real `hwbridges://` host with certificates made by
`hwbridge ca`; who gets in (certificates of the host's CA, tokens over TLS) and who is
refused (no certificate, another CA, expired, unknown names, plaintext, tokens in clear)."""
from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

import bridge
from bridge.tls import check_listen, is_loopback

from .conftest import ServerProc, start_server
from .security_helpers import TOKEN, Pki, pki

__all__ = ["pki"]

REFUSED = (ssl.SSLError, ConnectionError)


@pytest.fixture(scope="module")
def host(pki: Pki) -> Iterator[ServerProc]:
    with start_server(pki.manifest(), workdir=pki.dir) as s:
        yield s


def _tls_url(s: ServerProc) -> str:
    assert s.url.startswith("hwbridges://127.0.0.1:")
    return s.url


def test_client_certificate_names_the_principal(host: ServerProc, pki: Pki) -> None:
    with bridge.connect(_tls_url(host), **pki.client("alice")) as c:
        assert c.server_info["principal"] == "alice"
        assert isinstance(c._sock, ssl.SSLSocket) and c._sock.version() == "TLSv1.3"
        with c.open("null") as dev:
            assert dev.write(b"abc") == 3


def test_no_client_certificate_is_refused(host: ServerProc, pki: Pki) -> None:
    with pytest.raises((PermissionError, *REFUSED)) as info:
        bridge.connect(host.url, ca=pki.path("ca.pem")).close()
    if isinstance(info.value, PermissionError):  # a token host lets the handshake finish
        assert "anonymous" in str(info.value)


def test_certificate_of_another_ca_is_refused(host: ServerProc, pki: Pki) -> None:
    with pytest.raises(REFUSED):
        bridge.connect(host.url, ca=pki.path("ca.pem"), cert=pki.path("foreign.pem"),
                       key=pki.path("foreign.key")).close()


def test_expired_certificate_is_refused(host: ServerProc, pki: Pki) -> None:
    with pytest.raises(REFUSED):
        bridge.connect(host.url, ca=pki.path("ca.pem"), cert=pki.path("expired.pem"),
                       key=pki.path("expired.key")).close()


def test_certificate_naming_no_principal_is_refused(host: ServerProc, pki: Pki) -> None:
    with pytest.raises(PermissionError, match="mallory.*no principal"):
        bridge.connect(host.url, **pki.client("mallory")).close()


def test_plaintext_to_the_tls_port_is_refused_readably(host: ServerProc) -> None:
    plain = host.url.replace("hwbridges://", "hwbridge://")
    with pytest.raises(bridge.ProtocolError, match="TLS only.*hwbridges://"):
        bridge.connect(plain).close()


def test_client_refuses_a_host_its_ca_did_not_sign(host: ServerProc, pki: Pki) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        bridge.connect(host.url, ca=pki.path("other-ca.pem"), cert=pki.path("alice.pem"),
                       key=pki.path("alice.key")).close()


def test_token_over_tls_names_its_principal(host: ServerProc, pki: Pki) -> None:
    with bridge.connect(host.url, ca=pki.path("ca.pem"), token=TOKEN) as c:
        assert c.server_info["principal"] == "carol"
        assert [d.name for d in c.devices()] == ["zero"]
        with c.open("zero") as dev:
            assert dev.read(4) == b"\0\0\0\0"


def test_unknown_token_is_refused(host: ServerProc, pki: Pki) -> None:
    with pytest.raises(PermissionError, match="token is not known"):
        bridge.connect(host.url, ca=pki.path("ca.pem"), token=TOKEN + "x").close()


def test_token_is_never_sent_in_clear(lab: ServerProc) -> None:
    with pytest.raises(ValueError, match="only over TLS"):
        bridge.connect(lab.url, token=TOKEN)


def test_environment_configures_the_client(host: ServerProc, pki: Pki,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for var, name in (("CA", "ca.pem"), ("CERT", "alice.pem"), ("KEY", "alice.key")):
        monkeypatch.setenv(f"HWBRIDGE_{var}", pki.path(name))
    with bridge.connect(host.url) as c:
        assert c.server_info["principal"] == "alice"


def test_plain_tcp_beyond_loopback_needs_allow_insecure(make_server: Callable[..., ServerProc],
                                                        tmp_path: object) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    check_listen("10.1.2.3", tls=True, allow_insecure=False)
    check_listen("10.1.2.3", tls=False, allow_insecure=True)
    with pytest.raises(ValueError, match="allow_insecure"):
        check_listen("0.0.0.0", tls=False, allow_insecure=False)
    r = subprocess.run([sys.executable, "-m", "bridge.cli", "serve", "--listen", "0.0.0.0:0"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "refusing to serve plain TCP on 0.0.0.0" in r.stderr


def test_ca_refuses_to_overwrite_a_ca(pki: Pki) -> None:
    from bridge.cli import main

    assert main(["ca", "init", str(pki.dir)]) == 1
