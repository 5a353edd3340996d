# Who may use what: principals (names from a client certificate, or a token) and the grants
# that give each principal devices and rights (access, ioctls, library functions). A grant
# narrows what the manifest exposes and never widens it; without a grant, nothing. Owns the
# [principals.NAME] and [grants.NAME] manifest tables and the per-connection view of the
# devices. Must not know about sockets, TLS or the wire.
from __future__ import annotations

import dataclasses
import errno
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .backend import Access
from .tls import ANONYMOUS

if TYPE_CHECKING:
    from .backend import DeviceHandle
    from .manifest import DeviceSpec

ALL = "*"  # a grant for every device the manifest exposes


@dataclass(frozen=True)
class Principal:
    """A known client: the certificate names that identify it and its tokens' digests."""

    name: str
    names: frozenset[str]
    token_sha256: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Grant:
    """Rights on one device; None for ioctls/functions means all the manifest allows."""

    access: Access = Access.RW
    ioctls: frozenset[str] | None = None
    functions: frozenset[str] | None = None


@dataclass
class View:
    """The devices one connection sees, already narrowed by its grant."""

    principal: str
    devices: Mapping[str, DeviceSpec]
    functions: dict[str, frozenset[str]] = field(default_factory=dict)

    def fit(self, handle: DeviceHandle) -> None:
        """Narrow a freshly opened handle to the grant (a library's callable functions)."""
        allowed = self.functions.get(handle.spec.name)
        sigs = getattr(handle, "sigs", None)
        if allowed is not None and isinstance(sigs, dict):
            handle.sigs = {k: v for k, v in sigs.items() if k in allowed}  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Policy:
    """The host's principals and grants. ``restricted`` is False for a manifest with no
    TLS, principals or grants: everyone (anonymous, on loopback) sees every device."""

    principals: Mapping[str, Principal] = field(default_factory=dict)
    grants: Mapping[str, Mapping[str, Grant]] = field(default_factory=dict)
    allow_anonymous: bool = True
    restricted: bool = False

    def from_certificate(self, names: list[str]) -> str | None:
        """The principal a verified certificate names (CN or SAN), or None."""
        if not names:
            return None
        if not self.principals:
            return names[0]  # no [principals]: the CN is the principal
        for p in self.principals.values():
            if p.names.intersection(names):
                return p.name
        return None

    def from_token(self, token: str) -> str | None:
        """The principal holding ``token``, compared by SHA-256 digest in constant time."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for p in self.principals.values():
            for known in p.token_sha256:
                if hmac.compare_digest(known, digest):
                    found = p.name
        return found

    def admit(self, cert_names: list[str], token: object, over_tls: bool) -> str:
        """The principal of a new connection; PermissionError saying why it is refused."""
        if token is not None:
            if not over_tls:
                raise PermissionError(errno.EACCES, "tokens are accepted only over TLS "
                                                    "(hwbridges://)")
            if not isinstance(token, str) or (who := self.from_token(token)) is None:
                raise PermissionError(errno.EACCES, "the token is not known to this host")
            return who
        if cert_names:
            who = self.from_certificate(cert_names)
            if who is None:
                raise PermissionError(errno.EACCES, f"certificate {cert_names[0]!r} maps to "
                                                    "no principal of this host")
            return who
        if not self.allow_anonymous:
            how = "a client certificate or a token" if over_tls else \
                "hwbridges:// and a client certificate"
            raise PermissionError(errno.EACCES, f"this host admits no anonymous clients: "
                                                f"connect with {how}")
        return ANONYMOUS

    @property
    def wants_tokens(self) -> bool:
        return any(p.token_sha256 for p in self.principals.values())

    def view(self, principal: str, devices: Mapping[str, DeviceSpec]) -> View:
        """What ``principal`` may see and use of ``devices``."""
        if not self.restricted:
            return View(principal, devices)
        grants = self.grants.get(principal, {})
        seen: dict[str, DeviceSpec] = {}
        functions: dict[str, frozenset[str]] = {}
        for name, spec in devices.items():
            g = grants.get(name) or grants.get(ALL)
            if g is None:
                continue
            access = spec.access & g.access
            ioctls = spec.ioctls if g.ioctls is None else {
                k: v for k, v in spec.ioctls.items() if k in g.ioctls}
            seen[name] = dataclasses.replace(spec, access=access, ioctls=ioctls)
            if g.functions is not None:
                functions[name] = g.functions
        return View(principal, seen, functions)


def parse_policy(data: Mapping[str, Any], devices: Mapping[str, DeviceSpec],
                 server: Mapping[str, Any], where: str) -> Policy:
    """Read [principals.*], [grants.*] and [server] allow_anonymous; ValueError if bad."""
    ptab = data.get("principals", {})
    gtab = data.get("grants", {})
    if not isinstance(ptab, dict) or not isinstance(gtab, dict):
        raise ValueError(f"{where}: [principals] and [grants] must be tables")
    principals = {name: _principal(name, e, where) for name, e in ptab.items()}
    grants: dict[str, dict[str, Grant]] = {}
    for who, table in gtab.items():
        if principals and who not in principals and who != ANONYMOUS:
            raise ValueError(f"{where}: [grants.{who}] names no [principals.{who}]")
        if not isinstance(table, dict):
            raise ValueError(f"{where}: [grants.{who}] must be a table")
        grants[who] = {dev: _grant(who, dev, g, devices, where) for dev, g in table.items()}
    restricted = bool(principals or grants or server.get("tls"))
    anon = server.get("allow_anonymous", not restricted)
    if type(anon) is not bool:
        raise ValueError(f"{where}: [server] allow_anonymous must be true or false")
    return Policy(principals, grants, anon, restricted)


def _strings(v: object, what: str) -> frozenset[str]:
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"{what} must be a list of strings")
    return frozenset(v)


def _principal(name: str, e: object, where: str) -> Principal:
    w = f"{where}: [principals.{name}]"
    if not isinstance(e, dict):
        raise ValueError(f"{w} must be a table")
    unknown = set(e) - {"names", "token_sha256"}
    if unknown:
        raise ValueError(f"{w}: unknown keys {', '.join(sorted(unknown))}")
    names = _strings(e.get("names", [name]), f"{w} names")
    tokens = _strings(e.get("token_sha256", []), f"{w} token_sha256")
    for t in tokens:
        if len(t) != 64 or any(c not in "0123456789abcdef" for c in t):
            raise ValueError(f"{w}: token_sha256 entries are lowercase hex SHA-256 digests")
    return Principal(name, names, tokens)


def _grant(who: str, dev: str, g: object, devices: Mapping[str, DeviceSpec],
           where: str) -> Grant:
    w = f"{where}: [grants.{who}] {dev}"
    if dev != ALL and dev not in devices:
        raise ValueError(f"{w}: the manifest has no device {dev!r}")
    if isinstance(g, str):
        g = {"access": g}
    if not isinstance(g, dict):
        raise ValueError(f"{w} must be an access string or a table")
    unknown = set(g) - {"access", "ioctls", "functions"}
    if unknown:
        raise ValueError(f"{w}: unknown keys {', '.join(sorted(unknown))}")
    try:
        access = Access.parse(g.get("access", "rw"))
    except ValueError as e:
        raise ValueError(f"{w}: {e}") from None
    ioctls = _strings(g["ioctls"], f"{w} ioctls") if "ioctls" in g else None
    functions = _strings(g["functions"], f"{w} functions") if "functions" in g else None
    if ioctls is not None and dev != ALL:
        extra = ioctls - set(devices[dev].ioctls)
        if extra:
            raise ValueError(f"{w}: ioctls {', '.join(sorted(extra))} are not allowed by the "
                             "device's manifest entry (a grant cannot widen it)")
    return Grant(access, ioctls, functions)
