# hwbridge URLs: hwbridge://HOST[:PORT][/DEVICE], hwbridges:// for TLS, and
# hwbridge+unix:///PATH/TO/SOCKET[#DEVICE] for a Unix-domain socket on the same machine.
# Must not touch the network.
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .protocol import DEFAULT_PORT

SCHEMES = ("hwbridge", "hwbridges", "hwbridge+unix")


@dataclass(frozen=True, slots=True)
class URL:
    scheme: str
    host: str = ""
    port: int = DEFAULT_PORT
    device: str = ""
    path: str = ""  # the socket path of hwbridge+unix

    @property
    def host_url(self) -> str:
        """The URL of the host alone (no device)."""
        if self.scheme == "hwbridge+unix":
            return f"{self.scheme}://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        if self.scheme == "hwbridge+unix":
            return self.host_url + (f"#{self.device}" if self.device else "")
        return self.host_url + (f"/{self.device}" if self.device else "")


def parse_url(text: str) -> URL:
    """Parse a hwbridge URL; ValueError with the reason if it is not one."""
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"{text!r}: the scheme must be one of {', '.join(SCHEMES)}")
    if scheme == "hwbridge+unix":
        if not parts.path:
            raise ValueError(f"{text!r}: a hwbridge+unix URL needs a socket path")
        return URL(scheme, path=unquote(parts.path), device=unquote(parts.fragment))
    if not parts.hostname:
        raise ValueError(f"{text!r}: no host")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise ValueError(f"{text!r}: {e}") from None
    device = unquote(parts.path.strip("/"))
    if "/" in device:
        raise ValueError(f"{text!r}: a device name has no '/'")
    return URL(scheme, parts.hostname, port, device)
