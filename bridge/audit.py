# The host's audit log: one JSON line per security-relevant event (a connection admitted or
# refused, an open, an ioctl, a library call, a lease taken/released/expired/fenced, a
# capability shared/adopted/revoked, and every denied operation), appended to the file
# named by the manifest's `[server] audit`. Owns the file and the record format; the
# session, server and lease table call it only when it is configured, so an unused log
# costs nothing. Must not know about sockets, the wire or any device kind.
from __future__ import annotations

import datetime
import errno as _errno
import json
import logging
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .tap import Run, Tap
from .timeout import WouldBlock

if TYPE_CHECKING:
    from .backend import DeviceHandle, OpInfo
    from .timeout import Deadline

log = logging.getLogger("hwbridge.audit")

#: errno values that mean "not allowed" (a denial) rather than "failed".
DENIED = frozenset({_errno.EACCES, _errno.EPERM, _errno.ESTALE})


class AuditLog:
    """A thread-safe JSON Lines appender: the file is opened once, O_APPEND, mode 0600,
    and each record is one ``write`` of one whole line (no buffering to lose).

    A record that cannot be written (disk full, I/O error) is lost, not the operation: the
    host goes on serving, says so on its log once (and again when records are written
    again, with how many were lost), and counts them in ``lost``. This is auditd's default
    (``disk_full_action = SUSPEND``); docs/security.md says why.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()
        self.lost = 0  # records not written since the last one that was
        self._torn = False  # a line was cut short: the next record starts on a new line

    def write(self, event: str, *, principal: str = "", peer: str = "", device: str = "",
              op: str = "", detail: str = "", allowed: bool = True, errno: int = 0) -> None:
        """Append one record; ``ts`` is added (ISO 8601, UTC, microseconds)."""
        rec = {"ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds"),
               "principal": principal, "peer": peer, "event": event, "device": device,
               "op": op, "detail": detail, "allowed": allowed, "errno": errno}
        line = (json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                return  # the host is shutting down
            if self._torn:
                line = b"\n" + line
            view, done = memoryview(line), 0
            try:
                while done < len(line):
                    done += os.write(self._fd, view[done:])
            except OSError as e:
                self._torn = self._torn or done > 0
                if not self.lost:
                    log.error("audit log %s: %s; records are lost until it can be "
                              "written again", self.path, e.strerror or e)
                self.lost += 1
                return
            self._torn = False
            if self.lost:
                log.warning("audit log %s is written again; %d records were lost",
                            self.path, self.lost)
                self.lost = 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def outcome(e: BaseException | None) -> tuple[bool, int]:
    """(allowed, errno) for an operation that raised ``e`` (None: it succeeded)."""
    if e is None:
        return True, 0
    code = e.errno if isinstance(e, OSError) and e.errno else (
        _errno.ETIMEDOUT if isinstance(e, TimeoutError) else _errno.EINVAL
        if isinstance(e, ValueError | TypeError) else _errno.EIO)
    return code not in DENIED, code


class AuditTap(Tap):
    """Logs every ioctl and library call that ran (or failed other than by a denial: the
    session logs denials itself, once, for every operation)."""

    AUDITED = frozenset({"ioctl", "call"})

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    def call(self, handle: DeviceHandle, info: OpInfo, args: Sequence[Any],
             deadline: Deadline | None, run: Run) -> Any:
        if info.name not in self.AUDITED:
            return run(args, deadline)
        try:
            result = run(args, deadline)
        except WouldBlock:
            raise  # retried on a thread: logged when it finishes
        except BaseException as e:
            allowed, code = outcome(e)
            if allowed:
                self._write(handle, info, args, True, code)
            raise
        self._write(handle, info, args, True, 0)
        return result

    def _write(self, handle: DeviceHandle, info: OpInfo, args: Sequence[Any], allowed: bool,
               code: int) -> None:
        session = getattr(handle, "_session", None)
        self.log.write(info.name, principal=getattr(session, "principal", ""),
                       peer=getattr(session, "peer", ""), device=handle.spec.name,
                       op=info.name, detail=describe(info.name, args), allowed=allowed,
                       errno=code)


def describe(op: str, args: Sequence[Any]) -> str:
    """What an audited operation was about: an ioctl's request, a library function."""
    if not args:
        return ""
    first = args[0]
    if op == "ioctl" and type(first) is int:
        return f"0x{first:08X}"
    return str(first)[:200]


def install(host: Any) -> AuditLog | None:
    """Open the log the manifest names (``[server] audit``) and hook it into ``host``
    (a bridge.session.Host): its tap, lease table and token table. Call after the host's
    other taps are set, before serving; None when the manifest names no log."""
    from .tap import chain

    path = host.manifest.audit
    if path is None:
        return None
    log = AuditLog(path)
    host.audit = log
    host.tap = chain(AuditTap(log), host.tap)  # outermost: it sees injected faults too

    def lease(event: str, holder: Any, device: str, detail: str) -> None:
        log.write("lease", principal=holder.principal, peer=holder.peer, device=device,
                  op=event, detail=detail)

    def revoke(share: Any, why: str) -> None:
        log.write("revoke", principal=share.owner.principal, peer=share.owner.peer,
                  device=share.spec.name, op="revoke", detail=why)

    host.leases.audit = lease
    host.shares.audit = revoke
    return log


def failure_record(e: BaseException, op: str, args: Sequence[Any]
                   ) -> tuple[str, str, bool, int] | None:
    """(event, detail, allowed, errno) of the audit line for a failed ``op``: every
    denial, and every failed open or adoption; None for other failures."""
    allowed, err = outcome(e)
    if allowed and op not in ("open", "adopt"):
        return None
    event = op if op in ("open", "ioctl", "call", "share", "adopt", "revoke") else "op"
    detail = str(e.strerror if isinstance(e, OSError) and e.strerror else e)
    if op in ("ioctl", "call") and len(args) > 1:
        detail = f"{describe(op, args[1:])}: {detail}"
    elif op == "open" and len(args) > 1:
        detail = f"access={args[1]}: {detail}"
    return event, detail, allowed, err
