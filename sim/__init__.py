# The simulator backend: devices modelled in Python behind the same DeviceHandle interface
# as the posix backend, so the server, the wire and the client cannot tell them apart.
# Owns the model registry and the built-in simulated lab's manifest. Must not know about
# sockets or the wire.
from __future__ import annotations

from .backend import MODELS, SimBackend, lab_manifest, register

__all__ = ["MODELS", "SimBackend", "lab_manifest", "register"]
