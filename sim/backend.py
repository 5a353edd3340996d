# The sim backend and its model registry. A model is a factory DeviceSpec -> DeviceHandle.
from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from bridge.backend import Access, Backend, DeviceHandle
from bridge.manifest import DeviceSpec, Manifest, parse

from . import nodes

ModelFactory = Callable[[DeviceSpec], DeviceHandle]

MODELS: dict[str, ModelFactory] = {
    "null": nodes.NullNode,
    "zero": nodes.ZeroNode,
}


def register(name: str, factory: ModelFactory) -> None:
    """Add a simulated device model under ``name`` (usable as ``sim = "name"``)."""
    MODELS[name] = factory


class SimBackend(Backend):
    """Serves simulated devices; one model instance per open handle unless shared."""

    name = "sim"

    def prepare(self, spec: DeviceSpec) -> None:
        if spec.sim not in MODELS:
            raise ValueError(f"device {spec.name}: no simulated model {spec.sim!r} "
                             f"(known: {', '.join(sorted(MODELS))})")

    def open(self, spec: DeviceSpec, access: Access) -> DeviceHandle:
        factory = MODELS.get(spec.sim or "")
        if factory is None:
            raise OSError(errno.ENODEV, f"no simulated model {spec.sim!r}")
        return factory(spec)

    def describe(self, spec: DeviceSpec) -> dict[str, Any]:
        return {"backend": "sim", "model": spec.sim}


LAB = {
    "null": {"kind": "node", "sim": "null", "description": "like /dev/null",
             "ioctls": ["FIONREAD"]},
    "zero": {"kind": "node", "sim": "zero", "description": "like /dev/zero",
             "ioctls": ["FIONREAD"]},
}


def lab_manifest() -> Manifest:
    """The built-in simulated lab of SURFACE.md."""
    return parse({"devices": LAB}, source="<simulated lab>")
