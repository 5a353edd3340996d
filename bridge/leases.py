# Exclusive leases on a host's devices: one holder at a time, a FIFO wait queue with a
# timeout, a time to live renewed by the holder, release when the holder disconnects or
# stops renewing, and fencing: every lease has a new, larger token, and when a lease ends
# or passes to another client, the handles of everyone but the new holder on that device
# are fenced (each later operation is refused with ESTALE), so a stale holder cannot write.
# Owns the lease table and its wire ops (lease, renew, release, leases). Must not know
# about sockets or device kinds: it talks to sessions through the small Holder protocol.
from __future__ import annotations

import collections
import errno
import itertools
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .timeout import Deadline

DEFAULT_TTL = 30.0
MAX_TTL = 24 * 3600.0
OPS = frozenset({"lease", "renew", "release", "leases"})


class Holder(Protocol):
    """What the table needs of a connection (the Session)."""

    principal: str
    peer: str
    closed: bool

    def fence(self, device: str, why: str) -> None: ...

    def visible(self, device: object) -> str: ...


@dataclass
class _Lease:
    device: str
    holder: Holder
    token: int
    ttl: float
    expires: float


@dataclass
class _Waiter:
    holder: Holder
    done: bool = False


@dataclass
class LeaseTable:
    """The leases of one host. Thread-safe; one reaper thread ends unrenewed leases."""

    _cv: threading.Condition = field(default_factory=threading.Condition)
    _held: dict[str, _Lease] = field(default_factory=dict)
    _queues: dict[str, collections.deque[_Waiter]] = field(default_factory=dict)
    _users: dict[str, weakref.WeakSet[Any]] = field(default_factory=dict)
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _reaper: threading.Thread | None = None
    _stopped: bool = False
    #: Called as audit(event, holder, device, detail) for acquire/release/expire, when the
    #: host keeps an audit log (bridge/audit.py).
    audit: Any = None

    # -- the wire ops ---------------------------------------------------------------------

    def op(self, who: Holder, op: str, args: Sequence[Any], deadline: Deadline) -> Any:
        """Run lease op ``op``; raises WouldBlock on a probing deadline that must wait."""
        if op == "lease":
            name, ttl, timeout = _args(op, args, 1, 3, (None, DEFAULT_TTL, None))
            device = who.visible(name)
            return self.acquire(who, device, _ttl(ttl), deadline)
        if op == "renew":
            name, token = _args(op, args, 2, 2, ())
            return self.renew(who, who.visible(name), token)
        if op == "release":
            name, token = _args(op, args, 2, 2, ())
            self.release(who, who.visible(name), token)
            return None
        _args(op, args, 0, 0, ())
        return self.holders()

    def acquire(self, who: Holder, device: str, ttl: float, deadline: Deadline) -> dict[str, Any]:
        """Take the lease on ``device``, waiting in line up to the deadline."""
        with self._cv:
            self._expire(time.monotonic())
            cur = self._held.get(device)
            if cur is not None and cur.holder is who:
                raise OSError(errno.EALREADY, f"{device}: this connection holds its lease "
                                              f"already (token {cur.token})")
            queue = self._queues.setdefault(device, collections.deque())
            if cur is None and not queue:
                return self._grant(who, device, ttl)
            if deadline.probe:
                deadline.expire(f"lease {device}")
            me = _Waiter(who)
            queue.append(me)
            try:
                while True:
                    cur = self._held.get(device)
                    if cur is None and queue[0] is me:
                        return self._grant(who, device, ttl)
                    if who.closed:
                        raise ConnectionResetError(errno.ECONNRESET, "connection closed")
                    left = deadline.remaining()
                    if left is not None and left <= 0:
                        holder = "" if cur is None else f" by {_who(cur.holder)}"
                        raise TimeoutError(errno.ETIMEDOUT,
                                           f"{device} is leased{holder}; timed out waiting "
                                           f"(place {list(queue).index(me) + 1} in line)")
                    if cur is not None:
                        wait = cur.expires - time.monotonic()
                        left = wait if left is None else min(left, wait)
                    self._cv.wait(None if left is None else max(left, 0.001))
                    self._expire(time.monotonic())
            finally:
                queue.remove(me)
                self._cv.notify_all()

    def renew(self, who: Holder, device: str, token: object) -> dict[str, Any]:
        """Extend the holder's lease by its time to live; ESTALE if it was lost."""
        with self._cv:
            self._expire(time.monotonic())
            cur = self._mine(who, device, token)
            cur.expires = time.monotonic() + cur.ttl
            self._cv.notify_all()
            return _describe(cur)

    def release(self, who: Holder, device: str, token: object) -> None:
        """Give the lease back; the next in line gets it."""
        with self._cv:
            self._expire(time.monotonic())
            cur = self._mine(who, device, token)
            del self._held[device]
            if self.audit is not None:
                self.audit("release", who, device, f"token {cur.token}")
            self._cv.notify_all()

    def holders(self) -> list[dict[str, Any]]:
        """Every lease held now: device, holder, token, seconds left, clients waiting."""
        with self._cv:
            self._expire(time.monotonic())
            return [{**_describe(ls), "waiting": len(self._queues.get(d, ()))}
                    for d, ls in sorted(self._held.items())]

    # -- hooks for the session ------------------------------------------------------------

    def check_open(self, who: Holder, device: str, delegate: object = None) -> None:
        """Refuse to open a device leased by someone else (but ``delegate``, the holder
        that handed ``who`` a capability token); remember who uses it."""
        with self._cv:
            self._expire(time.monotonic())
            cur = self._held.get(device)
            if cur is not None and cur.holder is not who and cur.holder is not delegate:
                raise OSError(errno.EBUSY, f"leased by {_who(cur.holder)} (token {cur.token})")
            self._users.setdefault(device, weakref.WeakSet()).add(who)

    def drop(self, who: Holder) -> None:
        """The connection ended: release its leases and leave every queue."""
        with self._cv:
            for device in [d for d, ls in self._held.items() if ls.holder is who]:
                lease = self._held.pop(device)
                if self.audit is not None:
                    self.audit("release", who, device, f"token {lease.token}: disconnected")
            for users in self._users.values():
                users.discard(who)
            self._cv.notify_all()

    def held_by(self, who: Holder) -> list[str]:
        """Devices whose lease ``who`` holds (for tests and `hwbridge ls`)."""
        with self._cv:
            return [d for d, ls in self._held.items() if ls.holder is who]

    def close(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()

    # -- inside the lock ------------------------------------------------------------------

    def _grant(self, who: Holder, device: str, ttl: float) -> dict[str, Any]:
        lease = _Lease(device, who, next(self._tokens), ttl, time.monotonic() + ttl)
        self._held[device] = lease
        if self.audit is not None:
            self.audit("acquire", who, device, f"token {lease.token}, ttl {ttl:g} s")
        for other in list(self._users.get(device, ())):
            if other is not who:
                other.fence(device, f"{device}: leased by {_who(who)} (token {lease.token})")
        self._users.setdefault(device, weakref.WeakSet()).add(who)
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, daemon=True,
                                            name="hwbridge-leases")
            self._reaper.start()
        self._cv.notify_all()
        return _describe(lease)

    def _mine(self, who: Holder, device: str, token: object) -> _Lease:
        cur = self._held.get(device)
        if cur is None or cur.holder is not who or cur.token != token:
            raise OSError(errno.ESTALE, f"{device}: lease token {token!r} is no longer valid "
                                        "(expired, released or taken over)")
        return cur

    def _expire(self, now: float) -> None:
        for device, lease in list(self._held.items()):
            if lease.expires <= now:
                del self._held[device]
                if self.audit is not None:
                    self.audit("expire", lease.holder, device, f"token {lease.token}")
                lease.holder.fence(device, f"{device}: the lease (token {lease.token}) "
                                           "expired: it was not renewed in time")
                self._cv.notify_all()

    def _reap(self) -> None:
        with self._cv:
            while not self._stopped:
                self._expire(time.monotonic())
                nxt = min((ls.expires for ls in self._held.values()), default=None)
                self._cv.wait(None if nxt is None else max(nxt - time.monotonic(), 0.001))


def _who(h: Holder) -> str:
    return f"{h.principal}@{h.peer}"


def _describe(ls: _Lease) -> dict[str, Any]:
    return {"device": ls.device, "holder": _who(ls.holder), "token": ls.token,
            "ttl": ls.ttl, "expires_in": round(max(ls.expires - time.monotonic(), 0.0), 3)}


def _ttl(v: object) -> float:
    if type(v) not in (int, float) or not 0 < v <= MAX_TTL:  # type: ignore[operator]
        raise ValueError(f"a lease's ttl is 0 < seconds <= {MAX_TTL:.0f}, not {v!r}")
    return float(v)  # type: ignore[arg-type]


def _args(op: str, args: Sequence[Any], lo: int, hi: int, defaults: tuple[Any, ...]
          ) -> list[Any]:
    if not lo <= len(args) <= hi:
        raise TypeError(f"{op} takes {lo}..{hi} arguments, got {len(args)}")
    return [*args, *defaults[len(args):]]
