# The posix kind module for "library": a native shared object on the host, named by the
# manifest's pinned path, called through bridge/library.py. Must not know about the wire.
from __future__ import annotations

from .backend import Access, DeviceHandle
from .library import LibraryHandle, shared_library
from .manifest import DeviceSpec
from .posix import PosixBackend


def open_device(backend: PosixBackend, spec: DeviceSpec, access: Access) -> DeviceHandle:
    """A handle on the library of ``spec``; its worker starts with the first call."""
    return LibraryHandle(spec, shared_library(spec, backend.path(spec)))
