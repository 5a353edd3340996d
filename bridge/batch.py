# Batches: operations issued inside ``with host.batch():`` are collected as Deferred results
# and sent in one frame when the block ends; a Deferred passed as an argument inside the
# batch becomes a reference to that result on the host. Client side, pure Python. Must not
# know about sockets: it sends through the Client's plumbing.
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .protocol import Batch

if TYPE_CHECKING:
    from .client import Client


class Deferred:
    """A result of an operation issued inside ``host.batch()``; known once the batch ran."""

    __slots__ = ("batch", "index", "transform", "_done", "_value", "_error")

    def __init__(self, batch: BatchContext, index: int,
                 transform: Callable[[Any], Any] | None) -> None:
        self.batch = batch
        self.index = index
        self.transform = transform
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done

    def result(self) -> Any:
        """The operation's result; raises its error, or RuntimeError before the batch ran."""
        if not self._done:
            raise RuntimeError("the batch has not been sent yet: leave the `with` block first")
        if self._error is not None:
            raise self._error
        return self._value

    def _set(self, raw: Any) -> None:
        self._value = raw if self.transform is None else self.transform(raw)
        self._done = True

    def _fail(self, e: BaseException) -> None:
        self._error = e
        self._done = True

    def __repr__(self) -> str:
        state = "pending" if not self._done else ("error" if self._error else "done")
        return f"<Deferred #{self.index} {state}>"


class BatchContext:
    """Collects operations; sends them in one frame when the ``with`` block ends."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.ops: list[tuple[str, list[Any]]] = []
        self.results: list[Deferred] = []
        self.sent = False

    def add(self, op: str, args: Sequence[Any], transform: Callable[[Any], Any] | None
            ) -> Deferred:
        d = Deferred(self, len(self.ops), transform)
        self.ops.append((op, [self.client._wire(a) for a in args]))
        self.results.append(d)
        return d

    def __enter__(self) -> BatchContext:
        local = self.client._local
        if getattr(local, "batch", None) is not None:
            raise RuntimeError("batches do not nest")
        local.batch = self
        self.client._batch_opened()
        return self

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        self.client._local.batch = None
        self.client._batch_closed()
        if et is not None or not self.ops:
            return
        self.sent = True
        p = self.client._start(lambda rid: Batch(rid, self.ops))
        results, err = self.client._wait(p)
        for d, raw in zip(self.results, results, strict=False):
            d._set(raw)
        if err is not None:
            idx, code, message = err
            exc = OSError(code, f"{message} (batch operation {idx})")  # its errno's subclass
            for d in self.results[idx:]:
                d._fail(exc if d.index == idx else RuntimeError(
                    f"not executed: batch operation {idx} failed before it"))
            raise exc
