# The runners that host a library's Engine: InProcess (isolation "none", in the server
# process) and WorkerProcess (isolation "process", the default: a crash or a hang takes down
# only the worker, which restarts on the next call), and the Flight of one call through
# them. Must not know about the wire protocol, sessions or client tokens (bridge/library.py).
from __future__ import annotations

import errno
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from .libdecl import LibraryConfig
from .libworker import Engine, recv_msg, reply_value, send_msg

START_TIMEOUT = 60.0
KILL_GRACE = 5.0


class Flight:
    """One call on its way through a runner; holds the runner's lock until it completes."""

    def __init__(self, runner: InProcess | WorkerProcess, fname: str) -> None:
        self.runner = runner
        self.fname = fname
        self.finished = False
        self._event: threading.Event | None = None  # made only for someone who waits
        self.values: list[Any] = []
        self.error: BaseException | None = None
        self._timed_out = ""
        self._reading = threading.Lock()
        self._state = threading.Lock()

    def finish(self, values: list[Any] | None, error: BaseException | None) -> None:
        with self._state:
            if self.finished:
                return
            self.values, self.error = values or [], error
            self.finished = True
            event = self._event
        self.runner._lock.release()
        if event is not None:
            event.set()

    def wait_done(self, timeout: float | None) -> bool:
        """Wait for another thread to finish this flight (see :meth:`wait`)."""
        with self._state:
            if self.finished:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def wait(self, timeout: float | None) -> bool:
        """Read the reply, at most ``timeout`` seconds; True once the flight is done."""
        if self.finished:
            return True
        runner = self.runner
        assert isinstance(runner, WorkerProcess)
        with self._reading:
            if self.finished:
                return True
            sock = runner._sock
            assert sock is not None
            try:
                sock.settimeout(timeout)
                reply = recv_msg(sock)
            except TimeoutError:
                return False
            except OSError:
                reply = None
            if reply is None:
                reason = runner._reap()
                err: OSError = (TimeoutError(errno.ETIMEDOUT, f"{self.fname}: {self._timed_out}")
                                if self._timed_out else
                                OSError(errno.EIO, f"{self.fname}: {reason}; the worker is "
                                                   "restarted for the next call"))
                self.finish(None, err)
            else:
                try:
                    self.finish(reply_value(reply), None)
                except Exception as e:
                    self.finish(None, e)
            return True

    def kill(self, why: str) -> None:
        """Give up on a call past its deadline: kill the worker (the reader sees it die)."""
        with self._state:
            if self.finished:
                return
            self._timed_out = why
        self.runner._kill()

    def result(self) -> list[Any]:
        if self.error is not None:
            raise self.error
        return self.values


class InProcess:
    """Runs the engine in the server process (isolation "none"): fast, and unprotected."""

    isolated = False

    def __init__(self, cfg: LibraryConfig) -> None:
        self.engine = Engine(cfg)
        self.generation = 1
        self._lock = threading.Lock()

    def try_begin(self, fname: str, args: Any) -> Flight | None:
        if not self._lock.acquire(blocking=False):
            return None
        return self._run(fname, args)

    def begin(self, fname: str, args: Any, timeout: float | None) -> Flight:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(errno.ETIMEDOUT, f"{fname}: the library stayed busy")
        return self._run(fname, args)

    def _run(self, fname: str, args: Any) -> Flight:
        f = Flight(self, fname)
        try:
            f.finish(self.engine.call(fname, args), None)
        except BaseException as e:
            f.finish(None, e)
        return f

    def _kill(self) -> None:
        """A call in this process cannot be stopped; it finishes when it finishes."""


class WorkerProcess:
    """Runs the engine in a child process, started on first use and after each crash."""

    isolated = True

    def __init__(self, cfg: LibraryConfig) -> None:
        self.cfg = cfg
        self.generation = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def try_begin(self, fname: str, args: Any) -> Flight | None:
        if not self._lock.acquire(blocking=False):
            return None
        return self.send_msg(fname, args)

    def begin(self, fname: str, args: Any, timeout: float | None) -> Flight:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(errno.ETIMEDOUT, f"{fname}: the library stayed busy")
        return self.send_msg(fname, args)

    def send_msg(self, fname: str, args: Any) -> Flight:
        try:
            self._ensure()
            assert self._sock is not None
            send_msg(self._sock, [fname, args])
        except BaseException:
            self._lock.release()
            raise
        return Flight(self, fname)

    def _ensure(self) -> None:
        if self._proc is not None:
            return
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "bridge.libworker",
                                     str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                    stdin=subprocess.DEVNULL)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._proc, self._sock = proc, ours
        try:
            send_msg(ours, self.cfg.to_wire())
            ours.settimeout(START_TIMEOUT)
            reply = recv_msg(ours)
            if reply is None:
                raise OSError(errno.EIO, f"library {self.cfg.name}: the worker died while "
                                         f"starting ({self._reap()})")
            reply_value(reply)
        except BaseException:
            self._kill()
            self._reap()
            raise
        self.generation += 1

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    def _reap(self) -> str:
        """Collect a dead (or killed) worker; the next call starts a new one."""
        proc, sock = self._proc, self._sock
        self._proc = self._sock = None
        if sock is not None:
            sock.close()
        if proc is None:
            return "worker gone"
        try:
            rc = proc.wait(KILL_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        if rc < 0:
            try:
                return f"worker killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"worker killed by signal {-rc}"
        return f"worker exited with status {rc}"

    def stop(self) -> None:
        """End the worker (server shutdown)."""
        with self._lock:
            self._kill()
            self._reap()
