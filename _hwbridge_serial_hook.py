# Makes `hwbridge://` URLs work in pyserial without `import bridge` (so that
# `python -m serial.tools.miniterm hwbridge://HOST:PORT/uart0` works). Installed as a
# top-level module and run at interpreter start by hwbridge.pth; it costs one meta-path
# entry: nothing is imported until the program itself imports pyserial.
from __future__ import annotations

import importlib.machinery
import sys

TYPE_CHECKING = False  # no `typing` import at interpreter start
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType
    from typing import Any


class _SerialFinder:
    """When `serial` is imported, add bridge.drivers to its URL handler packages."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> Any:
        if name != "serial":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            packages = getattr(module, "protocol_handler_packages", None)
            if isinstance(packages, list) and "bridge.drivers" not in packages:
                packages.append("bridge.drivers")

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register the finder once (the .pth file calls this at start-up)."""
    if "serial" in sys.modules:
        packages = getattr(sys.modules["serial"], "protocol_handler_packages", None)
        if isinstance(packages, list) and "bridge.drivers" not in packages:
            packages.append("bridge.drivers")
    elif not any(isinstance(f, _SerialFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SerialFinder())
