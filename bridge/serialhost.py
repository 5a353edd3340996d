# The host side of a serial port, shared by every backend (posix termios, sim models): the
# remote operations pyserial needs, validated line settings, and the input buffer that holds
# what the port received from the moment it was opened and, once the client asks for it,
# pushes it to the client as "serial.data" events. Backends implement a few primitives
# (transmit, apply settings, modem lines, break, flush); the device side calls feed().
# Must not know about the wire, termios (posix_serial.py owns that) or any model.
from __future__ import annotations

import abc
import errno
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from .backend import Access, NodeHandle, op
from .timeout import Deadline

RX_LIMIT = 1 << 20  # bytes held for a client that is not reading; more is counted as lost
PARITIES = ("N", "E", "O", "M", "S")
BYTESIZES = (5, 6, 7, 8)
STOPBITS = (1, 1.5, 2)
MAX_BAUDRATE = 1 << 26


@dataclass(frozen=True, slots=True)
class LineSettings:
    """The settings of a serial line, named as pyserial names them."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    xonxoff: bool = False
    rtscts: bool = False
    dsrdtr: bool = False

    def changed(self, changes: Any) -> LineSettings:
        """A copy with ``changes`` (a dict of the fields above) applied; ValueError if bad."""
        if not isinstance(changes, dict):
            raise TypeError(f"serial settings are a table, not {type(changes).__name__}")
        unknown = set(changes) - set(LineSettings.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown serial settings: {', '.join(sorted(map(str, unknown)))}")
        new = replace(self, **changes)
        new.check()
        return new

    def check(self) -> None:
        """ValueError (EINVAL on the wire) for a setting no UART has."""
        b = self.baudrate
        if type(b) is not int or not 0 < b <= MAX_BAUDRATE:
            raise ValueError(f"baudrate must be an integer 1..{MAX_BAUDRATE}, not {b!r}")
        if type(self.bytesize) is not int or self.bytesize not in BYTESIZES:
            raise ValueError(f"bytesize must be one of 5, 6, 7, 8, not {self.bytesize!r}")
        if self.parity not in PARITIES:
            raise ValueError(f"parity must be one of {', '.join(PARITIES)}, not {self.parity!r}")
        if type(self.stopbits) not in (int, float) or self.stopbits not in STOPBITS:
            raise ValueError(f"stopbits must be 1, 1.5 or 2, not {self.stopbits!r}")
        for flag in ("xonxoff", "rtscts", "dsrdtr"):
            if type(getattr(self, flag)) is not bool:
                raise ValueError(f"{flag} must be true or false")

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


def initial_settings(options: Any) -> LineSettings:
    """Line settings from a device's manifest options (``baudrate = 115200`` ...)."""
    keys = set(LineSettings.__dataclass_fields__)
    return LineSettings().changed({k: v for k, v in dict(options).items() if k in keys})


class SerialHandle(NodeHandle):
    """One open serial port on the host.

    Input is buffered from the moment of opening (bounded by :data:`RX_LIMIT`; excess bytes
    are counted in ``overflow``). After ``stream(True)`` everything received goes to the
    client as "serial.data" events instead, so reading costs the client no round trip; the
    running total of pushed bytes lets the client discard what was in flight when it reset
    its input buffer. The ``read`` operation of a node still works on the buffer.

    Pushes are ordered by ``_stream_lock``, which a push holds while the connection may
    make it wait for a slow client to read (back-pressure). The operations run on the
    host's event loop, which is what drains that output, so none of them waits for that
    lock: ``stream(True)`` pushes the held bytes only if it gets the lock at once, and
    otherwise the push holding it does so when it is done (see _push_held).
    """

    kind = "serial"
    # Ops that touch only the host's buffers or ask the kernel something it holds in
    # memory: they may run on the host's event loop. configure, set_lines, modem and
    # break_condition do not: on a USB serial adapter the driver makes a USB transfer.
    INLINE = frozenset({"settings", "in_waiting", "out_waiting", "reset_input",
                        "reset_output", "exclusive", "stream", "status"})

    def __init__(self, spec: Any, settings: LineSettings | None = None) -> None:
        super().__init__(spec)
        self.settings = settings or initial_settings(spec.options)
        self.dtr = True
        self.rts = True
        self.break_on = False
        self.overflow = 0
        self._rx = bytearray()
        self._rx_cv = threading.Condition()
        self._stream_lock = threading.Lock()
        self._streaming = False
        self._pushed = 0  # bytes sent to the client as events so far
        self.gone: OSError | None = None  # the port went away (see lost())
        self._told = False  # a streaming client was told that it is gone

    # -- what backends implement ----------------------------------------------------------

    @abc.abstractmethod
    def transmit_nowait(self, data: bytes) -> int | None:
        """Send what fits now; None if nothing could be sent."""

    @abc.abstractmethod
    def apply_settings(self, new: LineSettings) -> None:
        """Put ``new`` into effect on the device (it is already validated)."""

    @abc.abstractmethod
    def apply_lines(self) -> None:
        """Put ``self.dtr``, ``self.rts`` and ``self.break_on`` into effect."""

    @abc.abstractmethod
    def modem_lines(self) -> dict[str, bool]:
        """The input lines: {"cts", "dsr", "ri", "cd"}."""

    def output_pending(self) -> int:
        """Bytes written but not yet sent by the device."""
        return 0

    def discard_output(self) -> None:
        """Drop output not yet sent."""

    def discard_input(self) -> None:
        """Drop input the device holds below our buffer (the kernel's, for posix)."""

    def set_exclusive(self, on: bool) -> None:
        """Take (or drop) an advisory exclusive lock on the port; EBUSY if someone holds it."""

    def wait_writable(self, timeout: float | None) -> bool:
        return True

    def pause(self, seconds: float) -> None:
        """Sleep (simulated ports sleep on the simulator's clock)."""
        time.sleep(seconds)

    # -- the device side ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes the port received: pushed to the client when streaming, else buffered."""
        if not data or self.closed:
            return
        with self._stream_lock:
            if self._streaming:
                if self._rx:  # held bytes a stream(True) could not push: they go first
                    self._push_held_locked()
                self._pushed += len(data)
                self.emit("serial.data", bytes(data))
            else:
                with self._rx_cv:
                    room = RX_LIMIT - len(self._rx)
                    if len(data) > room:
                        self.overflow += len(data) - room
                        data = data[:room]
                    self._rx += data
                    self._rx_cv.notify_all()
        if self._streaming and self._rx:  # turned on while this held the lock
            self._push_held()

    def _push_held(self) -> None:
        """Push the held bytes if streaming, unless another push holds the lock: that
        one checks again once it releases it (feed), so the bytes never stay behind."""
        while self._streaming and (self._rx or self._end_due()) and \
                self._stream_lock.acquire(False):
            try:
                if self._streaming:
                    self._push_held_locked()
            finally:
                self._stream_lock.release()

    def _push_held_locked(self) -> None:
        with self._rx_cv:
            held = bytes(self._rx)
            self._rx.clear()
        if held:
            self._pushed += len(held)
            self.emit("serial.data", held)
        if self.gone is not None and not self._told:  # after the last bytes: the end
            self._told = True
            self.emit("serial.data", {"errno": self.gone.errno, "message": self.gone.strerror})

    def lost(self, e: OSError) -> None:
        """The device side: the port is gone for good (a USB adapter unplugged, the other
        end of a pty closed). What it received is still delivered; after that, reads fail
        with ``e``'s errno, and a streaming client gets a "serial.data" event whose
        payload is {"errno": ..., "message": ...} after the last bytes."""
        self.gone = OSError(e.errno, f"{self.spec.name}: the port is gone: {e.strerror}")
        with self._rx_cv:
            self._rx_cv.notify_all()
        self._push_held()

    def _end_due(self) -> bool:
        return self.gone is not None and not self._told

    def take(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes, without waiting (used by local exporters)."""
        with self._rx_cv:
            out = bytes(self._rx[:n])
            del self._rx[:n]
            return out

    # -- NodeHandle primitives ------------------------------------------------------------

    def read_nowait(self, n: int) -> bytes | None:
        self._check()
        data = self.take(n)
        if data or n == 0:
            return data
        if self.gone is not None:
            raise OSError(self.gone.errno, self.gone.strerror)  # anew: no growing traceback
        return None

    def write_nowait(self, data: bytes) -> int | None:
        self._check()
        if self.gone is not None:
            raise OSError(self.gone.errno, self.gone.strerror)  # anew: no growing traceback
        return self.transmit_nowait(data)

    def wait(self, write: bool, timeout: float | None) -> bool:
        if write:
            return self.wait_writable(timeout)
        with self._rx_cv:
            return self._rx_cv.wait_for(
                lambda: bool(self._rx) or self.closed or self.gone is not None, timeout)

    def do_ioctl(self, request: int, arg: int | bytearray) -> int:
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    def close(self) -> None:
        self.closed = True
        with self._rx_cv:
            self._rx_cv.notify_all()

    def _check(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "handle is closed")

    # -- remote operations ----------------------------------------------------------------

    @op("settings")
    def get_settings(self) -> dict[str, Any]:
        """The line settings now, as a table of pyserial's names."""
        return self.settings.to_wire()

    @op("configure")
    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change some line settings; returns all of them. EINVAL for nonsense."""
        new = self.settings.changed(changes)
        if new != self.settings:
            self.apply_settings(new)
            self.settings = new
        return new.to_wire()

    @op("set_lines", Access.WRITE)
    def set_lines(self, dtr: bool | None, rts: bool | None) -> None:
        """Set DTR and/or RTS (None leaves a line as it is)."""
        for name, v in (("dtr", dtr), ("rts", rts)):
            if v is not None and type(v) is not bool:
                raise TypeError(f"{name} must be true, false or none")
        self.dtr = self.dtr if dtr is None else dtr
        self.rts = self.rts if rts is None else rts
        self.apply_lines()

    @op("modem")
    def modem(self) -> dict[str, bool]:
        """Input lines (cts, dsr, ri, cd) and the output lines as last set (dtr, rts)."""
        return {**self.modem_lines(), "dtr": self.dtr, "rts": self.rts}

    @op("break_condition", Access.WRITE)
    def break_condition(self, on: bool) -> None:
        """Hold the line in break (True) or release it."""
        if type(on) is not bool:
            raise TypeError("break_condition takes true or false")
        self.break_on = on
        self.apply_lines()

    @op("send_break", Access.WRITE, blocking=True)
    def send_break(self, duration: float, deadline: Deadline) -> None:
        """Break for ``duration`` seconds, then release."""
        if type(duration) not in (int, float) or not 0 <= duration <= 10:
            raise ValueError(f"break duration must be 0..10 s, not {duration!r}")
        if deadline.probe and duration > 0:
            deadline.expire("send_break")
        self.break_condition(True)
        try:
            self.pause(duration)
        finally:
            self.break_condition(False)

    @op("reset_input", Access.READ)
    def reset_input(self) -> int:
        """Drop buffered input; returns the count of bytes pushed so far, so the client can
        drop what was already on its way (it counts bytes, so a push racing this call is
        dropped or kept whole, by the count, whichever arrives first)."""
        self.discard_input()
        with self._rx_cv:
            self._rx.clear()
        return self._pushed

    @op("reset_output", Access.WRITE)
    def reset_output(self) -> None:
        self.discard_output()

    @op("in_waiting", Access.READ)
    def in_waiting(self) -> list[int]:
        """[bytes pushed so far, bytes buffered on the host]."""
        with self._rx_cv:
            return [self._pushed, len(self._rx)]

    @op("out_waiting")
    def out_waiting(self) -> int:
        return self.output_pending()

    @op("drain", Access.WRITE, blocking=True)
    def drain(self, deadline: Deadline) -> None:
        """Wait until all output is sent (tcdrain)."""
        while self.output_pending():
            if deadline.probe or deadline.expired():
                deadline.expire("flush")
            self._check()
            self.pause(0.005)

    @op("exclusive")
    def exclusive(self, on: bool) -> None:
        """Advisory exclusive access (flock semantics: EBUSY if another holder exists)."""
        if type(on) is not bool:
            raise TypeError("exclusive takes true or false")
        self.set_exclusive(on)

    @op("stream", Access.READ)
    def stream(self, on: bool) -> int:
        """Push input as events (True) or buffer it (False); returns bytes pushed so far.

        Turning it on first pushes what the buffer already holds, in order. Turning it off
        lets a push already under way finish: the client keeps what is in flight."""
        if type(on) is not bool:
            raise TypeError("stream takes true or false")
        self._streaming = on
        if on:
            self._push_held()
        return self._pushed

    @op("status")
    def status(self) -> dict[str, Any]:
        """Counters: buffered bytes, bytes lost to a full buffer, bytes pushed."""
        with self._rx_cv:
            return {"buffered": len(self._rx), "overflow": self.overflow,
                    "pushed": self._pushed, "streaming": self._streaming}

    def describe(self) -> dict[str, Any]:
        return {"settings": self.settings.to_wire()}
