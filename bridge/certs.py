# A small lab certificate authority for hwbridges://: make a CA, issue host certificates
# (server auth, SANs for the names and addresses clients dial) and client certificates
# (client auth, the CN is the principal). Backs `hwbridge ca init|issue-host|issue-client`
# and the tests' on-the-fly certificates. Uses the `cryptography` package, imported lazily
# with a clear error. Must not know about the protocol, grants or sockets.
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
_DAY = datetime.timedelta(days=1)


def _crypto() -> Any:
    try:
        from cryptography import x509
    except ImportError:
        raise RuntimeError("certificate commands need the 'cryptography' package: "
                           "pip install cryptography") from None
    return x509


@dataclass
class Issued:
    """A certificate and its private key (cryptography objects) with PEM helpers."""

    cert: Any
    key: Any

    def cert_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        pem: bytes = self.cert.public_bytes(serialization.Encoding.PEM)
        return pem

    def key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        pem: bytes = self.key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
        return pem

    def write(self, cert_path: str | Path, key_path: str | Path) -> None:
        """Write the certificate (0644) and the key (0600, created private)."""
        Path(cert_path).write_bytes(self.cert_pem())
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem())


def _validity(days: float, not_before: datetime.datetime | None
              ) -> tuple[datetime.datetime, datetime.datetime]:
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    return start, start + datetime.timedelta(days=days)


def make_ca(name: str = "hwbridge lab CA", days: float = 3650,
            not_before: datetime.datetime | None = None) -> Issued:
    """A self-signed CA certificate with a fresh P-256 key."""
    x509 = _crypto()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity(days, not_before)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)


def issue(ca: Issued, name: str, *, host: bool, sans: list[str] | None = None,
          days: float = 825, not_before: datetime.datetime | None = None) -> Issued:
    """A leaf certificate signed by ``ca``: CN ``name``, for a host (server auth, SANs for
    ``sans`` or ``name``) or for a client (client auth; ``sans`` optional)."""
    x509 = _crypto()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, not_before)
    alt: list[Any] = []
    for s in (sans or ([name] if host else [])):
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(s)))
        except ValueError:
            alt.append(x509.DNSName(s))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if host else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(ca.cert.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(start)
         .not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             ca.key.public_key()), critical=False))
    if alt:
        b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return Issued(b.sign(ca.key, hashes.SHA256()), key)


def load_ca(folder: str | Path) -> Issued:
    """The CA kept in ``folder`` (ca.pem, ca.key) by :func:`init_ca`."""
    x509 = _crypto()
    from cryptography.hazmat.primitives import serialization

    d = Path(folder)
    try:
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), None)
    except FileNotFoundError:
        raise FileNotFoundError(f"no CA in {d}: run `hwbridge ca init {d}` first") from None
    return Issued(cert, key)


def init_ca(folder: str | Path, name: str = "hwbridge lab CA", days: float = 3650) -> Path:
    """Create a CA in ``folder``; refuses to overwrite one. Returns the CA certificate path."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    if (d / CA_KEY).exists():
        raise FileExistsError(f"{d / CA_KEY} exists: a CA is already there")
    make_ca(name, days).write(d / CA_CERT, d / CA_KEY)
    return d / CA_CERT


def issue_to_files(folder: str | Path, name: str, *, host: bool,
                   sans: list[str] | None = None, days: float = 825,
                   out: str | Path | None = None) -> tuple[Path, Path]:
    """Issue a host or client certificate from the CA in ``folder``; writes NAME.pem and
    NAME.key (into ``out``, default the CA folder) and returns their paths."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{name!r} is not a usable certificate name")
    ca = load_ca(folder)
    o = Path(out or folder)
    o.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = o / f"{name}.pem", o / f"{name}.key"
    issue(ca, name, host=host, sans=sans, days=days).write(cert_path, key_path)
    return cert_path, key_path
