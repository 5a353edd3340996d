# Capability tokens: a connection narrows one of its handles (read-only, fewer ioctls or
# library functions, a time to live) into an unforgeable token; any connection of the same
# host that presents the token opens the same device with at most those rights. Revoking
# the token, closing the handle it was made from, or the end of that handle's connection
# fences every handle adopted through it, and every token made from those in turn.
# Owns the host's token table (keyed by the token's SHA-256, so the table never holds a
# token) and the revocation tree. Must not know about sockets, the wire or device kinds:
# it talks to sessions through the small Sharer protocol.
from __future__ import annotations

import dataclasses
import errno
import hashlib
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .backend import Access

TOKEN_BYTES = 32
MAX_TTL = 365 * 24 * 3600.0
OPS = frozenset({"share", "adopt", "revoke"})


class Sharer(Protocol):
    """What the table needs of a connection (the Session)."""

    principal: str
    peer: str

    def entry(self, hid: object) -> Any:
        """The live table entry of handle ``hid`` (EBADF, or ESTALE when fenced)."""

    def adopt_open(self, share: Share) -> int:
        """Open ``share``'s device with its rights; the new handle's number."""

    def revoked(self, entry: Any, why: str) -> None:
        """Fence ``entry``: the token it was adopted through is gone."""


@dataclass(eq=False)
class Share:
    """One token: what it grants, who made it from which handle, who adopted it."""

    digest: bytes
    spec: Any  # the narrowed DeviceSpec an adopter opens
    access: Access
    functions: frozenset[str] | None
    owner: Sharer
    origin: Any  # the owner's table entry the token was made from
    ttl: float | None
    adopted: list[tuple[Sharer, Any]] = field(default_factory=list)
    revoked: str | None = None
    timer: threading.Timer | None = None


class ShareTable:
    """The capability tokens of one host. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[bytes, Share] = {}
        #: Called as audit(share, event, detail) when a token is revoked or expires.
        self.audit: Any = None

    # -- the wire ops ---------------------------------------------------------------------

    def op(self, who: Sharer, op: str, args: Sequence[Any]) -> Any:
        """Run ``share [handle, access, ioctls, functions, ttl]``, ``adopt [token]`` or
        ``revoke [token]``."""
        if op == "share":
            if not 1 <= len(args) <= 5:
                raise TypeError(f"share takes 1..5 arguments, got {len(args)}")
            hid, access, ioctls, functions, ttl = [*args, None, None, None, None][:5]
            entry = who.entry(hid)
            token, _ = self.share(who, entry, access, ioctls, functions, ttl)
            return token
        if len(args) != 1:
            raise TypeError(f"{op} takes 1 argument, got {len(args)}")
        if op == "adopt":
            share = self.find(args[0])
            hid = who.adopt_open(share)
            return {"handle": hid, "device": share.spec.name, "kind": share.spec.kind,
                    "info": share.spec.public()}
        return self.revoke_token(args[0], who)

    def share(self, who: Sharer, entry: Any, access: object, ioctls: object,
              functions: object, ttl: object) -> tuple[bytes, Share]:
        """A token for at most the rights of ``entry`` (a handle of ``who``): narrowing
        only; asking for anything the handle lacks is PermissionError."""
        handle = entry.handle
        spec = handle.spec
        have: Access = entry.access
        if access is not None and not isinstance(access, str):
            raise TypeError(f"access is \"r\", \"w\" or \"rw\", not {access!r}")
        want = have if access is None else Access.parse(access)
        if want & ~have:
            raise PermissionError(errno.EACCES, f"a token cannot widen the handle's "
                                                f"{have.text()!r} access to {want.text()!r}")
        table = dict(spec.ioctls)
        if ioctls is not None:
            if not isinstance(ioctls, list):
                raise TypeError("ioctls is a list of names or codes")
            table = {}
            for r in ioctls:
                s = spec.find_ioctl(r)  # PermissionError if the handle may not issue it
                table[s.name] = s
        sigs = getattr(handle, "sigs", None)
        has = frozenset(sigs) if isinstance(sigs, dict) else None
        funcs = has
        if functions is not None:
            if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
                raise TypeError("functions is a list of names")
            if has is None:
                raise ValueError(f"{spec.kind} devices have no functions to narrow")
            extra = set(functions) - has
            if extra:
                raise PermissionError(errno.EACCES, f"a token cannot add functions the handle "
                                                    f"may not call: {', '.join(sorted(extra))}")
            funcs = frozenset(functions)
        narrowed = dataclasses.replace(spec, access=want, ioctls=table)
        token, share = self.add(narrowed, want, funcs, who, entry, parse_ttl(ttl))
        entry.shares = [*(entry.shares or []), share]
        if entry.fenced is not None or handle.closed:  # closed meanwhile: dead at birth
            self.revoke(share, f"{spec.name}: the shared handle was closed")
        return token, share

    # -- the table ------------------------------------------------------------------------

    def add(self, spec: Any, access: Access, functions: frozenset[str] | None,
            owner: Sharer, origin: Any, ttl: float | None) -> tuple[bytes, Share]:
        """A new token for ``spec`` with those rights; returns (token, its Share)."""
        token = secrets.token_bytes(TOKEN_BYTES)
        share = Share(_digest(token), spec, access, functions, owner, origin, ttl)
        with self._lock:
            self._tokens[share.digest] = share
        if ttl is not None:
            share.timer = threading.Timer(ttl, self.revoke, (share, f"token for {spec.name} "
                                                                    f"expired after {ttl:g} s"))
            share.timer.daemon = True
            share.timer.start()
        return token, share

    def find(self, token: object) -> Share:
        """The live Share of ``token``; PermissionError for anything else."""
        share = None
        if type(token) is bytes and len(token) == TOKEN_BYTES:
            with self._lock:
                share = self._tokens.get(_digest(token))
        if share is None:
            raise PermissionError(errno.EACCES, "not a live capability token of this host "
                                                "(unknown, revoked, expired or from another "
                                                "host)")
        return share

    def attach(self, share: Share, who: Sharer, entry: Any) -> bool:
        """Record that ``who`` adopted ``share`` as ``entry``; False if it was revoked."""
        with self._lock:
            if share.revoked is not None:
                return False
            share.adopted.append((who, entry))
            return True

    def detach(self, share: Share, entry: Any) -> None:
        """An adopted handle was closed: forget it."""
        with self._lock:
            share.adopted = [(w, e) for w, e in share.adopted if e is not entry]

    def revoke_token(self, token: object, who: Sharer) -> bool:
        """Revoke a token ``who`` made; False if it is not live (already revoked)."""
        try:
            share = self.find(token)
        except PermissionError:
            return False
        if share.owner is not who:
            raise PermissionError(errno.EACCES,
                                  "only the connection that made a token can revoke it")
        self.revoke(share, f"token for {share.spec.name} revoked by {who.principal}")
        return True

    def revoke(self, share: Share, why: str) -> None:
        """Fence every handle adopted through ``share`` (and, through them, further down)."""
        with self._lock:
            if share.revoked is not None:
                return
            share.revoked = why
            self._tokens.pop(share.digest, None)
            adopted, share.adopted = share.adopted, []
        if share.timer is not None:
            share.timer.cancel()
        if self.audit is not None:
            self.audit(share, why)
        for who, entry in adopted:
            who.revoked(entry, why)

    def live(self) -> int:
        """How many tokens are live (for tests)."""
        with self._lock:
            return len(self._tokens)


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def parse_ttl(v: object) -> float | None:
    """A token's time to live: None (until revoked) or 0 < seconds <= a year."""
    if v is None:
        return None
    if type(v) not in (int, float) or not 0 < v <= MAX_TTL:  # type: ignore[operator]
        raise ValueError(f"a token's ttl is None or 0 < seconds <= {MAX_TTL:.0f}, not {v!r}")
    return float(v)  # type: ignore[arg-type]
