# Simulated serial devices: a loopback plug, a pair of cross-wired UARTs, and line-based
# instruments answering from a request->response dialog (DialogInstrument, built from a
# plain dict so declarative files can describe one) with the SCPI multimeter of the lab as a
# Python subclass. All time goes through the simulator clock. Must not know about the wire
# or the session: models only implement SerialHandle's primitives and call feed().
from __future__ import annotations

import errno
import heapq
import random
import threading
from collections.abc import Mapping
from typing import Any

from bridge.manifest import DeviceSpec
from bridge.serialhost import RX_LIMIT, LineSettings, SerialHandle

from .clock import clock

_registry_lock = threading.Lock()
_open_ports: dict[str, list[SimSerial]] = {}  # device name -> its open handles
_locks: dict[str, SimSerial] = {}  # device name -> the holder of its exclusive lock


class SimSerial(SerialHandle):
    """Base of the simulated ports: settings and lines are kept; ``receive`` is the model."""

    # An in-process model: nothing here waits (no op waits for the push lock either; see
    # SerialHandle), so every op may run on the host's event loop.
    INLINE_ALL = True

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec)
        with _registry_lock:
            _open_ports.setdefault(spec.name, []).append(self)

    def receive(self, data: bytes) -> None:
        """The device got ``data`` from the host's side of the line."""

    def transmit_nowait(self, data: bytes) -> int | None:
        self.receive(data)
        return len(data)

    def apply_settings(self, new: LineSettings) -> None:
        """A simulated line has no baud rate or framing to get wrong: settings are kept
        (and reported back by ``settings``) but change nothing on the wire."""

    def apply_lines(self) -> None:
        pass

    def modem_lines(self) -> dict[str, bool]:
        return {"cts": True, "dsr": True, "ri": False, "cd": True}

    def pause(self, seconds: float) -> None:
        clock.sleep_until(clock.now() + seconds)

    def set_exclusive(self, on: bool) -> None:
        with _registry_lock:
            holder = _locks.get(self.spec.name)
            if on and holder is not None and holder is not self:
                raise OSError(errno.EBUSY, "the port is locked by another user")
            if on:
                _locks[self.spec.name] = self
            elif holder is self:
                del _locks[self.spec.name]

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        with _registry_lock:
            ports = _open_ports.get(self.spec.name, [])
            if self in ports:
                ports.remove(self)
            if _locks.get(self.spec.name) is self:
                del _locks[self.spec.name]


class Loopback(SimSerial):
    """A loopback plug: TX wired to RX, RTS to CTS, DTR to DSR and CD."""

    def receive(self, data: bytes) -> None:
        self.feed(data)

    def modem_lines(self) -> dict[str, bool]:
        return {"cts": self.rts, "dsr": self.dtr, "ri": False, "cd": self.dtr}


class UartPair(SimSerial):
    """One end of two cross-wired UARTs: TX to the peer's RX, RTS to its CTS, DTR to its DSR
    and CD. The manifest names the other end: ``peer = "uart-b"``. What is sent while the
    peer is not open is lost, as on a real wire."""

    def __init__(self, spec: DeviceSpec) -> None:
        peer = spec.options.get("peer")
        if not isinstance(peer, str) or not peer:
            raise ValueError(f"{spec.name}: a uart-pair needs peer = \"DEVICE\"")
        self.peer = peer
        super().__init__(spec)

    def _peers(self) -> list[SimSerial]:
        with _registry_lock:
            return list(_open_ports.get(self.peer, []))

    def receive(self, data: bytes) -> None:
        for p in self._peers():
            p.feed(data)

    def modem_lines(self) -> dict[str, bool]:
        peers = self._peers()
        rts = any(p.rts for p in peers)
        dtr = any(p.dtr for p in peers)
        return {"cts": rts, "dsr": dtr, "ri": False, "cd": dtr}


class DialogInstrument(SimSerial):
    """A line-based instrument answering requests from a dialog table.

    ``DialogInstrument(spec, description)`` where ``description`` is a plain dict (as a
    TOML/YAML/JSON file would give it)::

        {
          "eol": "\\n",                 # ends each request and each response (default "\\n")
          "dialogs": [                  # tried in order; first match answers
            {"q": "*IDN?", "r": "ACME,X1,0001,1.0"},
            {"q": "MEAS?", "r": "1.25", "delay": 0.05},   # answer after 50 ms (sim clock)
            {"q": "RESET"},                                # accepted, no answer
            {"q_hex": "aa0102", "r_hex": "bb00ff"},         # binary frame, matched on bytes
          ],
          "error": "ERR",               # answer to anything else (absent or None: silence)
          "unsolicited": [              # periodic output nobody asked for
            {"every": 1.0, "r": "TICK"}, {"every": 0.5, "r_hex": "55aa"},
          ],
        }

    Text answers get ``eol`` appended; binary answers are sent as given. Binary requests are
    matched at the start of the input, before line splitting. Subclasses override
    :meth:`respond` for what a table cannot express.
    """

    max_pending = 64 * 1024  # unterminated input kept at most

    def __init__(self, spec: DeviceSpec, description: Mapping[str, Any]) -> None:
        super().__init__(spec)
        d = dict(description)
        self.eol: bytes = str(d.get("eol", "\n")).encode()
        self.text: dict[str, tuple[str | None, float]] = {}
        self.frames: list[tuple[bytes, bytes | None, float]] = []
        for entry in d.get("dialogs", []):
            delay = float(entry.get("delay", 0))
            if "q_hex" in entry:
                r = entry.get("r_hex")
                self.frames.append((bytes.fromhex(entry["q_hex"]),
                                    None if r is None else bytes.fromhex(r), delay))
            else:
                self.text.setdefault(str(entry["q"]), (entry.get("r"), delay))
        err = d.get("error")
        self.error: str | None = None if err is None else str(err)
        self._pending = bytearray()
        self._queue: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._last_due = 0.0
        self._qlock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._every: dict[int, float] = {}  # sequence number -> period of a repeating item
        self._periodic: list[tuple[float, bytes]] = []
        for u in d.get("unsolicited", []):
            data = bytes.fromhex(u["r_hex"]) if "r_hex" in u else str(u["r"]).encode() + self.eol
            every = float(u["every"])
            if not every > 0:
                raise ValueError(f"{spec.name}: unsolicited output needs every > 0")
            self._periodic.append((every, data))
        for every, data in self._periodic:
            self._schedule(data, every, every)

    def respond(self, request: str) -> tuple[str | None, float]:
        """The answer to one text request (without eol) and its delay; None answers nothing."""
        key = request.strip()
        if key in self.text:
            return self.text[key]
        return self.error, 0.0

    def receive(self, data: bytes) -> None:
        self._pending += data
        while self._pending:
            frame = next((f for f in self.frames if self._pending.startswith(f[0])), None)
            if frame is not None:
                del self._pending[:len(frame[0])]
                if frame[1] is not None:
                    self._answer(frame[1], frame[2])
                continue
            if any(f[0].startswith(self._pending) for f in self.frames):
                break  # the start of a binary frame: wait for the rest
            end = self._pending.find(self.eol)
            if end < 0:
                break
            line = bytes(self._pending[:end]).decode("latin-1")
            del self._pending[:end + len(self.eol)]
            answer, delay = self.respond(line)
            if answer is not None:
                self._answer(answer.encode("latin-1") + self.eol, delay)
        if len(self._pending) > self.max_pending:
            self._pending.clear()

    # -- time -----------------------------------------------------------------------------

    def _answer(self, data: bytes, delay: float) -> None:
        with self._qlock:
            immediate = delay <= 0 and not self._queue
        if immediate:
            self.feed(data)
        else:
            self._schedule(data, delay, 0.0)

    def _schedule(self, data: bytes, delay: float, every: float) -> None:
        """Feed ``data`` after ``delay`` (answers keep their order); repeat each ``every``."""
        with self._qlock:
            due = clock.now() + delay
            if not every:
                due = max(due, self._last_due)
                self._last_due = due
            self._seq += 1
            heapq.heappush(self._queue, (due, self._seq, data))
            self._every[self._seq] = every
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"hwbridge-sim-{self.spec.name}")
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self.closed:
            with self._qlock:
                due = self._queue[0][0] if self._queue else None
            if due is None:
                self._wake.wait(0.25)
                self._wake.clear()
                continue
            if not clock.sleep_until(due, self._wake):
                self._wake.clear()
                continue
            with self._qlock:
                ready = []
                while self._queue and self._queue[0][0] <= clock.now():
                    t, seq, data = heapq.heappop(self._queue)
                    every = self._every.pop(seq, 0.0)
                    ready.append(data)
                    if every:
                        self._seq += 1
                        heapq.heappush(self._queue, (t + every, self._seq, data))
                        self._every[self._seq] = every
            for data in ready:
                self.feed(data)

    def close(self) -> None:
        super().close()
        self._wake.set()


IDN = "HWBRIDGE,SIM-DMM,0001,1.0"


class ScpiDmm(DialogInstrument):
    """The lab's multimeter: ``*IDN?``, ``MEAS:VOLT?``, ``*RST``, ``SYST:ERR?`` with an error
    queue (``-113,"Undefined header"`` after an unknown command, ``0,"No error"`` when empty).
    Headers are case-insensitive, as in SCPI."""

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec, {})
        self.errors: list[str] = []
        self.volts = float(spec.options.get("volts", 1.234))
        self._rng = random.Random(spec.name)

    def respond(self, request: str) -> tuple[str | None, float]:
        cmd = request.strip().upper()
        if not cmd:
            return None, 0.0
        if cmd == "*IDN?":
            return IDN, 0.0
        if cmd in ("MEAS:VOLT?", "MEAS:VOLT:DC?", "MEASURE:VOLTAGE?", "MEASURE:VOLTAGE:DC?"):
            noise = self._rng.uniform(-0.0005, 0.0005)
            return f"{self.volts + noise:+.6E}", 0.0
        if cmd == "*RST":
            self.errors.clear()
            return None, 0.0
        if cmd in ("SYST:ERR?", "SYSTEM:ERROR?", "SYST:ERR:NEXT?"):
            return (self.errors.pop(0) if self.errors else '0,"No error"'), 0.0
        if len(self.errors) < 32:
            self.errors.append('-113,"Undefined header"')
        return None, 0.0


def dialog_model(description: Mapping[str, Any]) -> Any:
    """A model factory (spec -> handle) for a DialogInstrument with this description."""
    frozen = dict(description)
    return lambda spec: DialogInstrument(spec, frozen)


class Source(SimSerial):
    """A port that sends a repeating pattern as fast as its reader takes it (benchmarks),
    or at ``rate`` bytes per second (manifest option), as a line does.

    It starts when it receives its first byte, and never overfills the host buffer. Each
    delivery is ``chunk`` bytes (manifest option, a multiple of 256; default 256 KiB), as a
    device driver hands over what it holds."""

    def __init__(self, spec: DeviceSpec) -> None:
        size = spec.options.get("chunk", 256 * 1024)
        if type(size) is not int or not 0 < size <= RX_LIMIT or size % 256:
            raise ValueError(f"{spec.name}: chunk must be a multiple of 256 up to 1 MiB")
        self.chunk = bytes(range(256)) * (size // 256)
        rate = spec.options.get("rate")
        if rate is not None and (type(rate) not in (int, float) or not rate > 0):
            raise ValueError(f"{spec.name}: rate must be a positive number of bytes per second")
        self.period = 0.0 if rate is None else len(self.chunk) / rate  # seconds per chunk
        super().__init__(spec)
        self._go = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"hwbridge-sim-{spec.name}")
        self._thread.start()

    def receive(self, data: bytes) -> None:
        self._go.set()

    def _run(self) -> None:
        while not self._go.wait(0.25):
            if self.closed:
                return
        while not self.closed:
            if self._streaming:
                self.feed(self.chunk)
            else:
                with self._rx_cv:
                    room = len(self._rx) < len(self.chunk)
                if room:
                    self.feed(self.chunk)
                else:
                    self.pause(0.001)
                    continue
            if self.period:
                self.pause(self.period)


def _inline_dialog(spec: DeviceSpec) -> DialogInstrument:
    """``sim = "dialog"``: the description is the device's own manifest table."""
    return DialogInstrument(spec, spec.options)


MODELS = {"loopback": Loopback, "scpi-dmm": ScpiDmm, "uart-pair": UartPair,
          "dialog": _inline_dialog, "source": Source}

LAB = {
    "uart0": {"kind": "serial", "sim": "loopback",
              "description": "loopback: bytes written come back to be read"},
    "instr0": {"kind": "serial", "sim": "scpi-dmm",
               "description": "line-based instrument (SCPI multimeter), \\n terminated"},
}
