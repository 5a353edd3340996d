# The `hwbridge` command line: serve a manifest, list and inspect a host's devices, and
# one-shot read/write/ioctl for shell scripts. Owns argument parsing and process signals;
# all real work is in server/session (host side) and client (client side).
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from .connect import connect
from .url import parse_url

EPILOG = "URLs: hwbridge://HOST[:PORT][/DEVICE] (default port 7420)."


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hwbridge` console script."""
    parser = _parser()
    args = parser.parse_args(_hoist_hex(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        result: int = args.func(args)
        return result
    except KeyboardInterrupt:
        return 130
    except (OSError, ValueError) as e:
        print(f"hwbridge: {e}", file=sys.stderr)
        return 1


def _hoist_hex(argv: list[str]) -> list[str]:
    """Move `--hex` of `write`/`ioctl` before their positionals.

    argparse fills an optional positional (DATA, ARG) as empty when a flag follows the one
    before it, so `hwbridge write URL --hex 00ff` would fail; users write flags anywhere.
    """
    for i, word in enumerate(argv):
        if word in ("write", "ioctl"):
            rest = argv[i + 1:]
            if "--hex" in rest:
                rest.remove("--hex")
                return [*argv[:i + 1], "--hex", *rest]
            break
    return argv


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwbridge", description="Remote hardware access bridge.",
                                epilog=EPILOG)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve a manifest's devices (default: the simulated lab)",
                       description="Serve the devices a manifest names. With no --config, "
                       "serves the built-in simulated lab on 127.0.0.1:7420.")
    s.add_argument("--config", "-c", metavar="HOST.TOML", help="the host manifest")
    s.add_argument("--listen", "-l", metavar="HOST:PORT", help="override the manifest's listen")
    s.add_argument("--unix", metavar="PATH", help="also listen on a Unix-domain socket")
    s.add_argument("--sim", action="store_true", help="also serve the simulated lab")
    s.add_argument("--rfc2217", action="append", default=[], metavar="DEVICE=HOST:PORT",
                   help="also export a serial device as an RFC 2217 port (repeatable; "
                   "loopback unless a host is given)")
    s.add_argument("--record", metavar="TRACE.JSONL",
                   help="record every device operation and its result to a JSON Lines file")
    s.set_defaults(func=_serve)

    ls = sub.add_parser("ls", help="list a host's devices", epilog=EPILOG)
    ls.add_argument("url", help="hwbridge://HOST[:PORT]")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_ls)

    i = sub.add_parser("info", help="describe one device", epilog=EPILOG)
    i.add_argument("url", help="hwbridge://HOST[:PORT]/DEVICE")
    i.set_defaults(func=_info)

    r = sub.add_parser("read", help="read bytes from a device to stdout", epilog=EPILOG)
    r.add_argument("url", help="hwbridge://HOST[:PORT]/DEVICE")
    r.add_argument("-n", "--count", type=int, default=4096, help="bytes to read (default 4096)")
    r.add_argument("-t", "--timeout", type=float, default=None, help="seconds to wait")
    r.add_argument("--hex", action="store_true", help="print hex instead of raw bytes")
    r.set_defaults(func=_read)

    w = sub.add_parser("write", help="write bytes (argument or stdin) to a device",
                       epilog=EPILOG)
    w.add_argument("url", help="hwbridge://HOST[:PORT]/DEVICE")
    w.add_argument("data", nargs="?", help="text to write (default: read stdin)")
    w.add_argument("--hex", action="store_true", help="DATA is hex")
    w.set_defaults(func=_write)

    io = sub.add_parser("ioctl", help="issue an allowlisted ioctl, print the result in hex",
                        epilog=EPILOG)
    io.add_argument("url", help="hwbridge://HOST[:PORT]/DEVICE")
    io.add_argument("request", help="ioctl name (e.g. TIOCGWINSZ) or number")
    io.add_argument("arg", nargs="?", help="an integer, or hex bytes with --hex")
    io.add_argument("--hex", action="store_true", help="ARG is hex bytes")
    io.set_defaults(func=_ioctl)
    _ca_parser(sub)
    return p


def _ca_parser(sub: Any) -> None:
    ca = sub.add_parser("ca", help="a lab certificate authority for hwbridges://",
                        description="Make a lab CA, then host and client certificates: "
                        "`hwbridge ca init DIR`, `hwbridge ca issue-host DIR NAME --san "
                        "10.0.0.5`, `hwbridge ca issue-client DIR alice`. The host manifest "
                        "then says [server] tls = {cert, key, ca}; a client connects with "
                        "HWBRIDGE_CA, HWBRIDGE_CERT and HWBRIDGE_KEY set.")
    casub = ca.add_subparsers(dest="ca_command", required=True)
    i = casub.add_parser("init", help="create a CA (ca.pem, ca.key) in DIR")
    i.add_argument("dir")
    i.add_argument("--name", default="hwbridge lab CA", help="the CA's common name")
    i.add_argument("--days", type=float, default=3650)
    i.set_defaults(func=_ca_init)
    for what, host in (("issue-host", True), ("issue-client", False)):
        h = casub.add_parser(what, help=f"issue a {'host' if host else 'client'} "
                             "certificate signed by the CA in DIR (writes NAME.pem, NAME.key)")
        h.add_argument("dir", help="the CA's folder")
        h.add_argument("name", help="the host's DNS name" if host else
                       "the client's principal name (certificate CN)")
        h.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                       help="subject alternative names (repeatable; a host defaults to NAME)")
        h.add_argument("--days", type=float, default=825)
        h.add_argument("--out", help="folder for the files (default: DIR)")
        h.set_defaults(func=_ca_issue, host=host)


def _ca_init(args: argparse.Namespace) -> int:
    from .certs import init_ca

    try:
        path = init_ca(args.dir, args.name, args.days)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    print(f"hwbridge: CA certificate {path} (keep {path.with_name('ca.key')} private)")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    from .certs import issue_to_files

    sans = args.san or ([args.name] if args.host else [])
    if args.host and args.name not in sans:
        sans = [args.name, *sans]
    try:
        cert, key = issue_to_files(args.dir, args.name, host=args.host, sans=sans,
                                   days=args.days, out=args.out)
    except RuntimeError as e:
        raise ValueError(str(e)) from None
    print(f"hwbridge: {cert} and {key}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from . import audit
    from .host import Host
    from .manifest import load
    from .server import Server, parse_listen
    from .sim import lab_manifest
    from .tls import check_listen

    if args.config:
        manifest = load(args.config)
        if args.sim:
            manifest = manifest.merged(lab_manifest())
    else:
        manifest = lab_manifest()
    host = Host(manifest)
    host.prepare()
    host.tap = _tap(manifest, args.record)
    audit.install(host)  # [server] audit: outermost tap, lease and token hooks
    server = Server(host)
    h, port = parse_listen(args.listen or manifest.listen)
    check_listen(h, manifest.tls is not None, manifest.allow_insecure)
    bound = server.listen_tcp(h, port)
    unix = args.unix or manifest.unix
    if unix:
        server.listen_unix(unix)
    exports = [_rfc2217(host, text) for text in args.rfc2217]

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    scheme = "hwbridges" if manifest.tls is not None else "hwbridge"
    print(f"hwbridge: serving {len(manifest.devices)} devices on {scheme}://{shown}:{bound[1]}"
          + (f" and {unix}" if unix else ""), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        for export in exports:
            export.close()
        server.shutdown()
    print("hwbridge: stopped", flush=True)
    return 0


def _tap(manifest: Any, record: str | None) -> Any:
    """What watches the host's operations: a recorder, the manifest's faults, both or none."""
    from .record import Recorder
    from .sim.faults import install
    from .tap import chain

    return chain(Recorder.to_file(record) if record else None, install(manifest))


def _rfc2217(host: Any, text: str) -> Any:
    from .rfc2217 import Rfc2217Export

    export = Rfc2217Export.start(host, text)
    h, port = export.address
    print(f"hwbridge: RFC 2217 export of {export.spec.name} on rfc2217://{h}:{port}", flush=True)
    return export


def _ls(args: argparse.Namespace) -> int:
    with connect(parse_url(args.url).host_url) as host:
        devs = host.devices()
        leases = {ls["device"]: ls for ls in host.leases()}
    if args.json:
        print(json.dumps([{**d.raw, "lease": leases.get(d.name)} for d in devs], indent=2))
        return 0
    width = max((len(d.name) for d in devs), default=4)
    for d in devs:
        ls = leases.get(d.name)
        held = "" if ls is None else f" [leased by {ls['holder']}, token {ls['token']}]"
        print(f"{d.name:<{width}}  {d.kind:<8} {d.access:<3} {d.description}{held}")
    return 0


def _device_url(text: str) -> tuple[str, str]:
    u = parse_url(text)
    if not u.device:
        raise ValueError(f"{text!r} names no device: use hwbridge://HOST:PORT/DEVICE")
    return u.host_url, u.device


def _info(args: argparse.Namespace) -> int:
    url, name = _device_url(args.url)
    with connect(url) as host:
        print(json.dumps(host.info(name), indent=2))
    return 0


def _read(args: argparse.Namespace) -> int:
    url, name = _device_url(args.url)
    with connect(url) as host, host.open(name) as dev:
        dev.timeout = args.timeout
        data: bytes = dev.read(args.count)
    if args.hex:
        print(data.hex())
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


def _write(args: argparse.Namespace) -> int:
    url, name = _device_url(args.url)
    if args.data is None:
        data = sys.stdin.buffer.read()
    else:
        data = bytes.fromhex(args.data) if args.hex else args.data.encode()
    with connect(url) as host, host.open(name) as dev:
        view = memoryview(data)
        while view:
            n: int = dev.write(view[:1 << 20].tobytes())
            view = view[n:]
    return 0


def _ioctl(args: argparse.Namespace) -> int:
    url, name = _device_url(args.url)
    request: str | int = int(args.request, 0) if args.request[:1].isdigit() else args.request
    arg: Any = None
    if args.arg is not None:
        arg = bytes.fromhex(args.arg) if args.hex else int(args.arg, 0)
    with connect(url) as host, host.open(name) as dev:
        result = dev.ioctl(request, arg)
    print(result.hex() if isinstance(result, bytes) else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
