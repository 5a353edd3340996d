# What a device host serves: the manifest, the backends behind its devices (loaded by name
# on first use), and the host-wide tables every connection shares (leases, capability
# tokens, the tap, the audit log). Must not know about sockets or the wire.
from __future__ import annotations

import errno
import importlib
import threading
from typing import Any

from .audit import AuditLog
from .backend import Backend
from .leases import LeaseTable
from .manifest import Manifest
from .shares import ShareTable
from .tap import Tap


class Host:
    """What a device host serves: the manifest and the backends behind its devices."""

    def __init__(self, manifest: Manifest, backends: dict[str, Backend] | None = None) -> None:
        self.manifest = manifest
        self.backends: dict[str, Backend] = dict(backends or {})
        self.tap: Tap | None = None  # sees every operation (record, faults); see bridge/tap.py
        self.leases = LeaseTable()  # exclusive leases and fencing (bridge/leases.py)
        self.shares = ShareTable()  # capability tokens (bridge/shares.py)
        self.audit: AuditLog | None = None  # the audit log, when configured (bridge/audit.py)
        self._lock = threading.Lock()

    def backend(self, name: str) -> Backend:
        with self._lock:
            b = self.backends.get(name)
            if b is None:
                b = self.backends[name] = _load_backend(name)
            return b

    def prepare(self) -> None:
        """Let every backend check its devices before the first client arrives."""
        for spec in self.manifest.devices.values():
            self.backend(spec.backend).prepare(spec)

    def device_list(self) -> list[dict[str, Any]]:
        return [spec.public() for spec in self.manifest.devices.values()]

    def close(self) -> None:
        self.leases.close()
        for b in self.backends.values():
            b.close()
        if self.audit is not None:
            self.audit.close()


# Backends by name: (module, class). Imported on first use, so a host without a kind's
# dependencies still serves the rest, and the session never names a backend statically.
BACKENDS = {"posix": ("bridge.posix", "PosixBackend"), "sim": ("bridge.sim", "SimBackend")}


def _load_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise OSError(errno.ENODEV, f"no backend called {name!r}")
    module, cls = BACKENDS[name]
    backend: Backend = getattr(importlib.import_module(module), cls)()
    return backend
