# Helpers for tests and benchmarks: start a real `hwbridge serve` process on a free loopback
# port from a manifest text (or the built-in simulated lab) and learn its URL from the line
# it prints. Host-side helper; the client never imports it.
from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_KEEP = 4 << 20  # bytes of a server's output kept
_READY = re.compile(r"serving \d+ devices on (hwbridges?://\S+)")


@dataclass
class ServerProc:
    """A running `hwbridge serve` child process."""

    url: str
    proc: subprocess.Popen[bytes]
    manifest: Path | None
    # What it printed (its log), read all along by a thread: a pipe nobody reads would
    # block the host's next log line once 64 KiB were waiting in it.
    printed: bytearray = field(default_factory=bytearray)
    _drain: threading.Thread | None = None

    def _start_draining(self, first: bytes) -> None:
        self.printed += first
        out = self.proc.stdout
        assert out is not None

        def drain() -> None:
            with contextlib.suppress(OSError, ValueError):
                while chunk := os.read(out.fileno(), 65536):
                    self.printed += chunk
                    del self.printed[:-_KEEP]

        self._drain = threading.Thread(target=drain, daemon=True, name="serverproc-drain")
        self._drain.start()

    def output(self, timeout: float = 10.0) -> str:
        """Everything the server printed (the last 4 MiB); once it has exited, all of it
        up to its exit (waits up to ``timeout`` s for the rest)."""
        if self._drain is not None and self.proc.poll() is not None:
            self._drain.join(timeout)
        return self.printed.decode(errors="replace")

    def fd_count(self) -> int:
        """Open file descriptors of the server process right now (Linux /proc)."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kib(self) -> int:
        """Resident set size of the server process in KiB (Linux /proc)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the server (SIGTERM by default) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._drain is not None:
            self._drain.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# `hwbridge serve ARGS` under resource limits: python -c _LIMITED NOFILE FSIZE serve ARGS
# (0: unchanged); past FSIZE a write fails with EFBIG instead of killing the process.
_LIMITED = ("import resource, runpy, signal, sys; n, f = map(int, sys.argv[1:3]); "
            "del sys.argv[1:3]; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "n and resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
            "f and resource.setrlimit(resource.RLIMIT_FSIZE, (f, f)); "
            "runpy.run_module('bridge.cli', run_name='__main__')")


def start_server(manifest: str | None = None, *extra: str, workdir: Path | None = None,
                 env: dict[str, str] | None = None, nofile: int = 0,
                 fsize: int = 0) -> ServerProc:
    """Start `hwbridge serve` on 127.0.0.1 with a free port and wait until it listens;
    ``nofile`` limits the open files of the server process (RLIMIT_NOFILE), ``fsize`` the
    size of the files it writes (RLIMIT_FSIZE)."""
    args = ["serve", "--listen", "127.0.0.1:0", *extra]
    path = None
    if manifest is not None:
        d = workdir or Path(tempfile.mkdtemp(prefix="hwbridge-"))
        path = d / f"host-{time.monotonic_ns()}.toml"
        path.write_text(manifest)
        args[1:1] = ["--config", str(path)]
    cmd = [sys.executable, "-m", "bridge.cli", *args] if not (nofile or fsize) else \
        [sys.executable, "-c", _LIMITED, str(nofile), str(fsize), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    out = b""
    end = time.monotonic() + 30
    try:
        while time.monotonic() < end:
            if not sel.select(timeout=max(0.0, end - time.monotonic())):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
            m = _READY.search(out.decode(errors="replace"))
            if m:
                server = ServerProc(m.group(1), proc, path)
                server._start_draining(out)
                return server
    finally:
        sel.close()
    proc.kill()
    proc.wait()
    raise RuntimeError(f"hwbridge serve did not start: {out.decode(errors='replace')}")
