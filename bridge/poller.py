# The loop's readiness poller: epoll where the host has it (one C call per wake-up), the
# selectors module elsewhere (Solaris: /dev/poll; the BSDs: kqueue), behind epoll's own
# interface (register/modify/unregister/poll by fd). Must not know about connections.
from __future__ import annotations

import os
import select
import selectors
from typing import Any

# HWBRIDGE_POLLER=selectors forces the fallback (the tests run that path too).
_EPOLL = hasattr(select, "epoll") and os.environ.get("HWBRIDGE_POLLER") != "selectors"
if _EPOLL:
    READ, WRITE = select.EPOLLIN, select.EPOLLOUT
    # A hang-up or error wakes the reader: its recv() reports it.
    READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
else:
    READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
    READABLE = READ


class SelectorPoller:
    """The epoll interface (register/modify/unregister/poll by fd) over the selectors
    module, for hosts without epoll (Solaris: /dev/poll; the BSDs: kqueue)."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()

    def register(self, fd: int, mask: int) -> None:
        self._sel.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self._sel.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self._sel.unregister(fd)

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        return [(key.fd, mask) for key, mask in self._sel.select(timeout)]

    def close(self) -> None:
        self._sel.close()


def make_poller() -> Any:
    return select.epoll() if _EPOLL else SelectorPoller()
