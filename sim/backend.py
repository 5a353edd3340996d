# The sim backend and its model registry. A model is a factory DeviceSpec -> DeviceHandle.
# Models live in one module per kind (sim/nodes.py, sim/serial.py, sim/i2c.py, ...); each
# module exposes MODELS (model name -> factory) and LAB (its devices of the built-in lab,
# as manifest tables). This module only gathers them.
from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Callable
from typing import Any

from bridge.backend import Access, Backend, DeviceHandle
from bridge.manifest import DeviceSpec, Manifest, parse

from .clock import clock

ModelFactory = Callable[[DeviceSpec], DeviceHandle]

# The modules that contribute models and lab devices, in lab order.
MODEL_MODULES = ("nodes", "serial", "i2c", "spi", "gpio", "usb", "library", "faults",
                 "replay", "declarative")

MODELS: dict[str, ModelFactory] = {}
LAB: dict[str, dict[str, Any]] = {}


def _gather() -> None:
    for name in MODEL_MODULES:
        try:
            mod = importlib.import_module(f"bridge.sim.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"bridge.sim.{name}":
                raise
            continue  # that kind has no simulator yet
        MODELS.update(getattr(mod, "MODELS", {}))
        LAB.update(getattr(mod, "LAB", {}))


_gather()

if os.environ.get("HWBRIDGE_SIM_CLOCK") == "manual":
    clock.set_manual()  # tests step it through the simctl device (sim/faults.py)


def register(name: str, factory: ModelFactory) -> None:
    """Add a simulated device model under ``name`` (usable as ``sim = "name"``)."""
    MODELS[name] = factory


class SimBackend(Backend):
    """Serves simulated devices; what a model shares between handles is up to the model."""

    name = "sim"

    def prepare(self, spec: DeviceSpec) -> None:
        if spec.sim not in MODELS:
            raise ValueError(f"device {spec.name}: no simulated model {spec.sim!r} "
                             f"(known: {', '.join(sorted(MODELS))})")
        check = getattr(MODELS[spec.sim], "prepare", None)
        if check is not None:
            check(spec)  # a model that reads files checks them before the first client

    def open(self, spec: DeviceSpec, access: Access) -> DeviceHandle:
        factory = MODELS.get(spec.sim or "")
        if factory is None:
            raise OSError(errno.ENODEV, f"no simulated model {spec.sim!r}")
        return factory(spec)

    def describe(self, spec: DeviceSpec) -> dict[str, Any]:
        return {"backend": "sim", "model": spec.sim}


def lab_manifest() -> Manifest:
    """The built-in simulated lab of SURFACE.md."""
    return parse({"devices": LAB}, source="<simulated lab>")
