# The runners that host a library's Engine: InProcess (isolation "none", in the server
# process) and WorkerProcess (isolation "process", the default: a crash or a hang takes down
# only the worker, which restarts on the next call), and the Flight of a call that outlived
# its inline wait. Must not know about the wire protocol, sessions or client tokens
# (bridge/library.py).
#
# One call at a time per library: the runner's lock is held from sending a call until its
# reply is read (or the worker is gone), by whichever thread does that.
from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from .libchannel import Channel
from .libdecl import LibraryConfig
from .libworker import Engine, reply_value

START_TIMEOUT = 60.0
KILL_GRACE = 5.0
PIPE_SIZE = 1 << 20


class Busy(TimeoutError):
    """Another call held the library for the whole wait: this call was never sent."""


class Flight:
    """A worker call still running after its inline wait.

    A reader thread collects its reply (killing the worker if the call is late); the
    thread that comes back for the call waits for that.
    """

    def __init__(self, runner: WorkerProcess, fname: str, call: int) -> None:
        self.runner = runner
        self.fname = fname
        self.call = call  # the runner's number for this call
        self.values: list[Any] = []
        self.error: BaseException | None = None
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def run(self, timeout: float) -> None:
        """The reader thread: the reply, or the worker killed ``timeout`` s from now."""
        try:
            self.values = self.runner.finish(self.fname, timeout, late(timeout))
        except BaseException as e:
            self.error = e
        self._done.set()

    def wait(self, timeout: float | None) -> bool:
        """True once the call is over (its reply read or its worker gone)."""
        return self._done.wait(timeout)

    def kill(self, why: str) -> None:
        """Give up on the call: kill the worker (the reader thread sees it die)."""
        if not self._done.is_set():
            self.runner.kill_late(why, self.call)

    def result(self) -> list[Any]:
        if not self._done.is_set():
            raise TimeoutError(errno.ETIMEDOUT, f"{self.fname}: the worker did not stop")
        if self.error is not None:
            raise self.error
        return self.values


class InProcess:
    """Runs the engine in the server process (isolation "none"): fast, and unprotected.

    A call runs to its end where it is made: on the connection's own thread, or on the
    host's event loop for a function declared ``inline = true`` (LibraryHandle.inline),
    where a slow one holds up every plain connection. A crash ends the host. Slow or
    unsafe functions belong in an isolated worker.
    """

    isolated = False

    def __init__(self, cfg: LibraryConfig) -> None:
        self.engine = Engine(cfg)
        self.generation = 1
        self._plans = self.engine.plans
        self._lock = threading.Lock()

    def try_call(self, fname: str, args: Any, wait: float) -> list[Any] | None:
        """The call's outputs; None if another call holds the library.

        ``fname`` is a declared function (the caller checked): its plan is called directly.
        """
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._plans[fname](args)
        finally:
            self._lock.release()

    def call(self, fname: str, args: Any, timeout: float | None, why_late: str) -> list[Any]:
        """The call's outputs, waiting at most ``timeout`` s for the library to be free."""
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise Busy(errno.ETIMEDOUT, f"{fname}: the library stayed busy")
        try:
            return self.engine.call(fname, args)
        finally:
            self._lock.release()


class WorkerProcess:
    """Runs the engine in a child process, started on first use and after each crash."""

    isolated = True

    def __init__(self, cfg: LibraryConfig) -> None:
        self.cfg = cfg
        self.generation = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: Channel | None = None
        self._late = ""  # why the call in flight was given up (its worker killed)
        self._calls = 0  # calls sent so far: each call's number
        self._current = 0  # the number of the call in flight, 0 for none
        self._state = threading.Lock()  # orders a call's end against killing it

    def try_call(self, fname: str, args: Any, wait: float) -> list[Any] | Flight | None:
        """The call's outputs if they come within ``wait`` s; a Flight if the call is still
        running then; None if another call holds the library or no worker runs (starting
        one takes far longer than ``wait``: that is for :meth:`call`)."""
        if self._chan is None or not self._lock.acquire(blocking=False):
            return None
        if self._chan is None:  # the worker died since
            self._lock.release()
            return None
        self._send(fname, args)
        values = self._read(fname, wait)
        return Flight(self, fname, self._current) if values is None else values

    def call(self, fname: str, args: Any, timeout: float | None, why_late: str) -> list[Any]:
        """The call's outputs; past ``timeout`` s the worker is killed (``why_late``)."""
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise Busy(errno.ETIMEDOUT, f"{fname}: the library stayed busy")
        self._send(fname, args)
        return self.finish(fname, timeout, why_late)

    def finish(self, fname: str, timeout: float | None, why_late: str) -> list[Any]:
        """The outputs of the call in flight; past ``timeout`` s the worker is killed."""
        values = self._read(fname, timeout)
        if values is None:
            self.kill_late(why_late, self._current)
            values = self._read(fname, KILL_GRACE)
            if values is None:  # not even SIGKILL ended it in time: give up on that worker
                self._reap()
                self._end()
                raise TimeoutError(errno.ETIMEDOUT, f"{fname}: {why_late}")
        return values

    def kill_late(self, why: str, call: int) -> None:
        """Give up on call number ``call`` if it is still in flight: its reader sees the
        worker die and says ``why``. (A call that just ended, and the next one, are safe.)"""
        with self._state:
            if call != self._current:
                return
            self._late = why
            self._kill()

    # -- one call: the lock is held from _send until _read returns the outcome ------------

    def _send(self, fname: str, args: Any) -> None:
        chan = self._chan
        if chan is None:
            try:
                chan = self._start()
            except BaseException:
                self._lock.release()
                raise
        self._late = ""
        self._calls += 1
        self._current = self._calls
        try:
            chan.send([fname, args])
        except OSError:  # the worker is gone
            self._kill()
            reason = self._reap()
            self._end()
            raise OSError(errno.EIO, f"{fname}: {reason}; the worker is restarted for the "
                                     "next call") from None
        except BaseException:  # nothing was sent (a value msgpack cannot carry)
            self._end()
            raise

    def _read(self, fname: str, timeout: float | None) -> list[Any] | None:
        """The call's outputs (or its error raised) and the lock released; None (the lock
        still held) if no reply came within ``timeout`` s."""
        chan = self._chan
        assert chan is not None
        try:
            reply = chan.recv(timeout)
        except TimeoutError:
            return None
        except OSError:
            reply = None
        except BaseException:  # not a reply we can read: this worker is done
            self._kill()
            self._reap()
            self._end()
            raise
        if reply is None:  # the worker died: crashed, exited, or killed for being late
            reason, why = self._reap(), self._late
            self._end()
            if why:
                raise TimeoutError(errno.ETIMEDOUT, f"{fname}: {why}")
            raise OSError(errno.EIO, f"{fname}: {reason}; the worker is restarted for the "
                                     "next call")
        self._end()
        if reply[0] == 0:
            values: list[Any] = reply[1]
            return values
        return reply_value(reply)  # raises the call's error

    def _end(self) -> None:
        """The call in flight is over: no one may kill the worker for it any more."""
        with self._state:
            self._current = 0
        self._lock.release()

    # -- the worker's life ----------------------------------------------------------------

    def _start(self) -> Channel:
        calls_r, calls_w = os.pipe()
        replies_r, replies_w = os.pipe()
        for fd in (calls_w, replies_w):
            _grow_pipe(fd)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "bridge.libworker", str(calls_r),
                                     str(replies_w)], pass_fds=[calls_r, replies_w],
                                    stdin=subprocess.DEVNULL)
        except OSError:
            os.close(calls_w)
            os.close(replies_r)
            raise
        finally:  # only the worker holds these: its death is end of stream for us
            os.close(calls_r)
            os.close(replies_w)
        chan = Channel(replies_r, calls_w)
        self._proc, self._chan = proc, chan
        try:
            chan.send(self.cfg.to_wire())
            reply = chan.recv(START_TIMEOUT)
            if reply is None:
                raise OSError(errno.EIO, f"library {self.cfg.name}: the worker died while "
                                         f"starting ({self._reap()})")
            reply_value(reply)
        except BaseException:
            self._kill()
            self._reap()
            raise
        self.generation += 1
        return chan

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def _reap(self) -> str:
        """Collect a dead (or killed) worker; the next call starts a new one."""
        proc, chan = self._proc, self._chan
        self._proc = self._chan = None
        if chan is not None:
            chan.close()
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


def _grow_pipe(fd: int) -> None:
    """Room for a large frame in a few pieces, not in 64 KiB ones (each a wake-up)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (AttributeError, OSError):  # not Linux, or above fs.pipe-max-size: keep 64 KiB
        pass


def late(limit: float) -> str:
    """Why a call was given up after ``limit`` seconds."""
    return f"no answer within {limit:g} s; the worker was killed and restarts"
