# The client side of device leases: a Lease taken with ``host.lease(name)``, renewed in the
# background and released when its ``with`` block ends. Pure Python, importable on Windows.
# Must not know about the host's lease table beyond the wire ops lease/renew/release.
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client


class Lease:
    """An exclusive lease on one device: ``.device``, ``.token`` (the fencing token),
    ``.ttl`` and ``.holder``. While held, nobody else can open the device."""

    def __init__(self, client: Client, info: dict[str, Any], renew: bool = True) -> None:
        self.client = client
        self.device: str = info["device"]
        self.token: int = info["token"]
        self.ttl: float = info["ttl"]
        self.holder: str = info["holder"]
        self.error: BaseException | None = None  # why background renewal stopped
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if renew:
            self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                            name=f"hwbridge-lease-{self.device}")
            self._thread.start()

    def renew(self) -> None:
        """Extend the lease by its ttl; OSError(ESTALE) if it was lost meanwhile."""
        self.client.call("renew", [self.device, self.token])

    def release(self) -> None:
        """Give the lease back (the next client in line gets it)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if not self.client.closed:
            self.client.call("release", [self.device, self.token])

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.renew()
            except Exception as e:  # lost, or the connection ended: stop renewing
                self.error = e
                return

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<Lease {self.device} token={self.token} holder={self.holder}>"
