# Shared by the security tests: a lab PKI made on the fly (with `hwbridge ca` for the normal
# certificates, bridge.certs for the odd ones: expired, from another CA) and a TLS host
# manifest with principals and grants over simulated devices.
from __future__ import annotations

import datetime
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from bridge.sim.library import VENDORLIB_CDEF

from bridge import certs
from bridge.cli import main

TOKEN = "carol-secret-token-0123456789"

DEVICES = f"""
[devices.null]
kind = "node"
sim = "null"
ioctls = ["FIONREAD"]

[devices.zero]
kind = "node"
sim = "zero"

[devices.uart0]
kind = "serial"
sim = "loopback"

[devices.vendorlib]
kind = "library"
sim = "vendorlib"
cdef = {json.dumps(VENDORLIB_CDEF)}
isolation = "none"
functions = {{dev_add = {{}}, dev_checksum = {{args = {{buf = {{dir = "in", size = "len"}}}}}}}}
"""

GRANTS = f"""
[principals.alice]
[principals.bob]
[principals.carol]
names = []
token_sha256 = ["{hashlib.sha256(TOKEN.encode()).hexdigest()}"]

[grants.alice]
null = {{ access = "rw", ioctls = [] }}
uart0 = "r"
vendorlib = {{ functions = ["dev_add"] }}

[grants.carol]
zero = "r"
"""


@dataclass
class Pki:
    """Files of a lab PKI in one folder."""

    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def client(self, name: str) -> dict[str, str]:
        """connect() keyword arguments for client certificate ``name``."""
        return {"ca": self.path("ca.pem"), "cert": self.path(f"{name}.pem"),
                "key": self.path(f"{name}.key")}

    def manifest(self, extra: str = "", grants: str = GRANTS) -> str:
        files = {k: json.dumps(self.path(v)) for k, v in
                 (("cert", "localhost.pem"), ("key", "localhost.key"), ("ca", "ca.pem"))}
        tls = ", ".join(f"{k} = {v}" for k, v in files.items())
        return f"[server]\ntls = {{ {tls} }}\n" + extra + DEVICES + grants


def make_pki(folder: Path) -> Pki:
    """CA, host (127.0.0.1, localhost), clients alice, bob, mallory (no principal), an
    expired client and a client of another CA."""
    run = ["ca"]
    assert main([*run, "init", str(folder)]) == 0
    assert main([*run, "issue-host", str(folder), "localhost", "--san", "127.0.0.1"]) == 0
    for who in ("alice", "bob", "mallory"):
        assert main([*run, "issue-client", str(folder), who]) == 0
    ca = certs.load_ca(folder)
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    certs.issue(ca, "alice", host=False, days=1, not_before=past).write(
        folder / "expired.pem", folder / "expired.key")
    other = certs.make_ca("another CA")
    certs.issue(other, "alice", host=False).write(folder / "foreign.pem", folder / "foreign.key")
    other.write(folder / "other-ca.pem", folder / "other-ca.key")
    return Pki(folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
