# The host manifest: a TOML file (stdlib tomllib) naming everything a device host exposes.
# Owns parsing and validation into plain dataclasses; nothing outside a manifest is
# reachable. Must not open devices or know about the network.
from __future__ import annotations

import dataclasses
import errno
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backend import Access
from .grants import Policy, parse_policy
from .ioctl import IoctlSpec, resolve
from .limits import Limits, parse_limits
from .protocol import DEFAULT_MAX_FRAME, DEFAULT_PORT
from .tls import TlsFiles

KINDS = ("node", "serial", "i2c", "spi", "gpio", "usb", "library")
_COMMON_KEYS = {"kind", "path", "access", "ioctls", "backend", "sim", "description", "file_type"}


class ManifestError(ValueError):
    """The manifest is not valid; the message names the file and the entry."""


@dataclass(frozen=True)
class DeviceSpec:
    """One device the manifest exposes."""

    name: str
    kind: str
    backend: str  # "posix", "sim", ...
    path: str | None = None
    sim: str | None = None  # the simulated model, for backend "sim"
    access: Access = Access.RW
    ioctls: Mapping[str, IoctlSpec] = field(default_factory=dict)
    file_type: str = "char"
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    base: str = "."  # the manifest file's folder: relative file options (model, trace) start here

    def find_ioctl(self, request: str | int) -> IoctlSpec:
        """The allowlisted ioctl named or numbered ``request``; PermissionError otherwise."""
        if isinstance(request, str):
            spec = self.ioctls.get(request)
        elif type(request) is int:
            spec = next((s for s in self.ioctls.values() if s.request == request), None)
        else:
            raise TypeError(f"ioctl request must be a name or a code, not {request!r}")
        if spec is None:
            shown = request if isinstance(request, str) else f"0x{request:08X}"
            raise PermissionError(errno.EACCES, f"ioctl {shown} is not allowed by the manifest")
        return spec

    def public(self) -> dict[str, Any]:
        """What a client may learn about the device (no host paths)."""
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "access": self.access.text()}
        if self.description:
            d["description"] = self.description
        if self.ioctls:
            d["ioctls"] = [s.to_wire() for s in self.ioctls.values()]
        return d


@dataclass(frozen=True)
class Manifest:
    """A parsed host manifest."""

    devices: Mapping[str, DeviceSpec]
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    unix: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    source: str = "<built-in>"
    # Security (bridge/tls.py, grants.py, limits.py): TLS files, who may use what, limits.
    tls: TlsFiles | None = None
    allow_insecure: bool = False  # plain TCP beyond loopback
    policy: Policy = field(default_factory=Policy)
    limits: Limits = field(default_factory=Limits)
    audit: str | None = None  # JSON Lines audit log (bridge/audit.py)

    def merged(self, other: Manifest) -> Manifest:
        """This manifest plus ``other``'s devices; a name in both is an error."""
        clash = set(self.devices) & set(other.devices)
        if clash:
            raise ManifestError(f"device names defined twice: {', '.join(sorted(clash))}")
        return dataclasses.replace(self, devices={**self.devices, **other.devices})


def load(path: str | Path) -> Manifest:
    """Read and validate a manifest file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{p}: not valid TOML: {e}") from None
    return parse(data, source=str(p), base=str(p.resolve().parent))


def parse(data: Mapping[str, Any], source: str = "<manifest>", base: str = ".") -> Manifest:
    """Validate an already-decoded manifest table."""
    unknown = set(data) - {"server", "devices", "principals", "grants", "limits"}
    if unknown:
        raise ManifestError(f"{source}: unknown top-level tables: {', '.join(sorted(unknown))}")
    server = data.get("server", {})
    _table(server, f"{source}: [server]")
    listen = server.get("listen", f"127.0.0.1:{DEFAULT_PORT}")
    unix = server.get("unix")
    max_frame = server.get("max_frame", DEFAULT_MAX_FRAME)
    if not isinstance(listen, str) or (unix is not None and not isinstance(unix, str)):
        raise ManifestError(f"{source}: [server] listen and unix must be strings")
    if type(max_frame) is not int or not 4096 <= max_frame <= 1 << 30:
        raise ManifestError(f"{source}: [server] max_frame must be an integer 4096..2^30")
    devices = data.get("devices", {})
    _table(devices, f"{source}: [devices]")
    specs = {name: _device(name, entry, source, base) for name, entry in devices.items()}
    try:
        security = _security(data, server, specs, source, base)
    except ValueError as e:
        raise ManifestError(str(e)) from None
    return Manifest(specs, listen, unix, max_frame, source, **security)


def _security(data: Mapping[str, Any], server: Mapping[str, Any],
              specs: Mapping[str, DeviceSpec], source: str, base: str) -> dict[str, Any]:
    """The [server] TLS/anonymous/audit keys, [principals], [grants] and [limits]."""
    tls = server.get("tls")
    files = None
    if tls is not None:
        if not isinstance(tls, dict) or set(tls) != {"cert", "key", "ca"} or not all(
                isinstance(v, str) for v in tls.values()):
            raise ValueError(f"{source}: [server] tls = {{cert, key, ca}} (three file paths)")
        files = TlsFiles(**{k: str(Path(base) / v) for k, v in tls.items()})
    insecure = server.get("allow_insecure", False)
    audit = server.get("audit")
    if type(insecure) is not bool or (audit is not None and not isinstance(audit, str)):
        raise ValueError(f"{source}: [server] allow_insecure is a boolean, audit a path")
    return {"tls": files, "allow_insecure": insecure,
            "policy": parse_policy(data, specs, server, source),
            "limits": parse_limits(data.get("limits"), source),
            "audit": None if audit is None else str(Path(base) / audit)}


def _table(v: object, where: str) -> None:
    if not isinstance(v, dict):
        raise ManifestError(f"{where} must be a table")


def _device(name: str, e: Any, source: str, base: str = ".") -> DeviceSpec:
    where = f"{source}: [devices.{name}]"
    _table(e, where)
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise ManifestError(f"{where}: a device name uses letters, digits, '-', '_', '.'")
    kind = e.get("kind")
    if kind not in KINDS:
        raise ManifestError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    path, sim = e.get("path"), e.get("sim")
    backend = e.get("backend", "sim" if sim is not None else "posix")
    if backend == "posix" and not isinstance(path, str) and kind != "usb":
        raise ManifestError(f"{where}: a posix device needs a path")
    if backend == "sim" and not isinstance(sim, str):
        raise ManifestError(f"{where}: a simulated device needs sim = \"MODEL\"")
    try:
        access = Access.parse(e.get("access", "rw"))
        ioctls: dict[str, IoctlSpec] = {}
        for entry in e.get("ioctls", []):
            spec = resolve(entry)
            ioctls[spec.name] = spec
    except (ValueError, TypeError) as err:
        raise ManifestError(f"{where}: {err}") from None
    if path is not None:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ManifestError(f"{where}: path must be an absolute path")
        parts = path.split("/")
        if ".." in parts or "." in parts:
            raise ManifestError(f"{where}: path must not contain '.' or '..' components")
    file_type = e.get("file_type", "char")
    if file_type not in ("char", "block", "fifo", "socket", "file", "any"):
        raise ManifestError(f"{where}: file_type must be char, block, fifo, socket, file or any")
    options = {k: v for k, v in e.items() if k not in _COMMON_KEYS}
    return DeviceSpec(name=name, kind=kind, backend=backend, path=path, sim=sim, access=access,
                      ioctls=ioctls, file_type=file_type,
                      description=str(e.get("description", "")), options=options, base=base)
