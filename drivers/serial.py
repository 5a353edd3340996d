# The proxy for serial ports (kind "serial"): a pyserial SerialBase, so code written for
# pyserial runs unchanged against a remote port. Input arrives pushed ("serial.data" events)
# into a local buffer: read(), readline() and read_until() cost no round trip when the data
# is already here. Settings, lines, break, flush and write are one remote operation each.
# Client side, pure Python (imports on Windows). Must not know about sockets or termios.
#
# Who receives the pushes: a read that waits for data receives them itself on its own
# thread (Client.pull_events), so a stream flows to its consumer with no hand-off between
# threads; when no read has waited for a moment (bridge.client.PULL_LINGER), the client's
# background reader does, into the buffer.
#
# Flow control: the buffer is bounded. When it holds the high-water mark (RX_HIGH, or
# set_buffer_size(rx_size)) and no read waits, the port asks the host to stop pushing
# (its "stream" operation, sent from a short-lived thread: the thread that receives must
# never wait for the host); once reads bring it down to a quarter of that, or a read waits
# for more than is here, the port asks it to push again. Nothing is lost or repeated on
# the way: what was in flight when the host stopped is kept, and the host holds what the
# device sends meanwhile and pushes it first when asked again, in order. The client holds
# at most the mark plus what was in flight: what the host pushed before it read the pause,
# a round trip's worth for a real line (a source faster than the client can read keeps the
# host's output queue full, and the host reads requests only as that drains, so more); the host
# holds up to its own limit (bridge.serialhost.RX_LIMIT, 1 MiB) and counts anything beyond
# in status()["overflow"], as a UART loses bytes nobody reads. A read that waits with no
# size limit (readline() on a stream with no line ends) keeps the stream on: it needs the
# data, as a local pyserial port would.
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import serial
from serial.serialutil import PortNotOpenError, SerialException, SerialTimeoutException, Timeout

from .serialbuf import ChunkBuffer, time_left

if TYPE_CHECKING:
    from bridge.client import Client
    from bridge.protocol import Event

WRITE_CHUNK = 1 << 20
CATCH_UP = 5.0  # seconds in_waiting waits for pushed data already on its way
#: Pushes at least this large switch the connection to exact-size receives (see _exact).
EXACT_MIN = 64 * 1024  # bridge.protocol.BULK_DIRECT: below it, data sections are copied anyway
#: Buffered bytes at which the port asks the host to pause its pushes (flow control).
RX_HIGH = 16 << 20
#: Seconds a waiting read waits for bytes on the socket itself before it leaves the
#: socket to the background reader and sleeps (a cancel_read() takes at most this long).
PULL_WAIT = 0.005

__all__ = ["PortNotOpenError", "RemoteSerialBase", "Serial", "SerialException",
           "SerialTimeoutException", "URLSerial"]


class RemoteSerialBase(serial.SerialBase):  # type: ignore[misc]
    """The shared logic of a serial port on a device host; see :class:`Serial`."""

    client: Client | None = None
    _hid: int | None = None
    _owns_client = False

    # -- attaching to a host handle -------------------------------------------------------

    def _attach(self, client: Client, device: str, make_handle: Any,
                settings: dict[str, Any] | None,
                lines: tuple[bool | None, bool | None] | None) -> None:
        """Open (or adopt) the host handle and start the push stream, in one round trip.

        ``make_handle`` is a handle number or a callable issuing the open inside the batch.
        ``settings``/``lines`` are applied to the port; None adopts the host's settings.
        """
        self.client = client
        self._device = device
        self._rx = ChunkBuffer()
        self._rx_cv = threading.Condition()
        self._received = 0
        self._discard_until = 0
        self._early: list[Event] = []
        self._hid = None
        self._cancel = False
        self._exact = False
        self._detached = False
        self._readers = 0  # reads waiting for data
        self._rx_high = RX_HIGH
        self._stream_on = True  # what the port wants the host to do (see _want_stream)
        self._stream_sent = True  # what the host was last told
        self._flow_busy = False  # a flow thread is telling it
        self._pauses = 0  # times the port asked the host to stop (for tests and status)
        self._gone: SerialException | None = None  # the host said the port went away
        self._handler = self._on_data
        client.on_event(self._handler, "serial.data", direct=True)
        client.on_lost(self._on_lost)
        try:
            with client.batch():
                h = make_handle() if callable(make_handle) else make_handle
                got = client.call("configure", [h, settings or {}])
                if lines is not None:
                    client.call("set_lines", [h, lines[0], lines[1]])
                if self._exclusive:
                    client.call("exclusive", [h, True])
                client.call("stream", [h, True])
        except BaseException:
            client.remove_handler(self._handler)
            client.remove_handler(self._on_lost)
            raise
        handle = h.result() if hasattr(h, "result") else h
        with self._rx_cv:
            self._hid = handle
            early, self._early = self._early, []
        for ev in early:
            self._on_data(ev)
        self._sent = got.result()
        if settings is None:
            self._adopt(self._sent)
        self.is_open = True

    def _adopt(self, s: dict[str, Any]) -> None:
        self._baudrate, self._bytesize, self._parity = s["baudrate"], s["bytesize"], s["parity"]
        self._stopbits, self._xonxoff = s["stopbits"], s["xonxoff"]
        self._rtscts, self._dsrdtr = s["rtscts"], s["dsrdtr"]

    def _wanted(self) -> dict[str, Any]:
        return {"baudrate": self._baudrate, "bytesize": self._bytesize, "parity": self._parity,
                "stopbits": self._stopbits, "xonxoff": bool(self._xonxoff),
                "rtscts": bool(self._rtscts), "dsrdtr": bool(self._dsrdtr)}

    def _on_data(self, ev: Event) -> None:
        """Event handler (run directly on the reading thread): append pushed bytes."""
        with self._rx_cv:
            if self._hid is None:
                self._early.append(ev)
                return
            if ev.handle != self._hid or self._detached:
                return
            if type(ev.payload) is dict:  # after its last bytes: the port is gone (unplugged)
                p = ev.payload
                self._gone = SerialException(p.get("errno"), str(p.get("message")))
                self._rx_cv.notify_all()
            if not isinstance(ev.payload, bytes):
                return
            data = ev.payload
            if (len(data) >= EXACT_MIN) is not self._exact and self.client is not None:
                self._set_exact(self.client, not self._exact)
            start = self._received
            self._received += len(data)
            if start < self._discard_until:  # sent before a reset_input_buffer
                data = data[self._discard_until - start:]
            if data:
                self._rx.append(data)
                self._rx_cv.notify_all()
                if len(self._rx) >= self._rx_high and not self._readers and self._stream_on:
                    self._want_stream(False)

    def _on_lost(self, e: BaseException) -> None:
        """The connection broke or closed (on the thread that found out): waits end."""
        with self._rx_cv:
            self._gone = self._gone or SerialException(getattr(e, "errno", None),
                                                       f"{self._device}: {e}")
            self._rx_cv.notify_all()

    def _set_exact(self, client: Client, on: bool) -> None:
        """Have the connection receive frames piece by piece at their exact size (on) or
        in large reads (off); called with ``_rx_cv`` held.

        While a port streams large pushes, each push's data section then arrives from one
        receive as the bytes object this buffer keeps and read() returns: no copy on the
        client at all. Pushes of a slow line (small events) switch it back off, so a port
        that trickles never costs other calls a receive more.
        """
        client.exact_receives(on)
        self._exact = on

    # -- flow control (see the module comment) --------------------------------------------

    def _want_stream(self, on: bool) -> None:
        """Ask the host to push (True) or to hold input (False); called with ``_rx_cv``
        held, possibly on the thread that receives, so the request is sent by a thread of
        its own, which also sends any change made meanwhile, in order."""
        self._stream_on = on
        if not on:
            self._pauses += 1
        if not self._flow_busy and on is not self._stream_sent:
            self._flow_busy = True
            threading.Thread(target=self._flow, daemon=True,
                             name=f"hwbridge-flow-{self._device}").start()

    def _flow(self) -> None:
        client = self.client
        while True:
            with self._rx_cv:
                on = self._stream_on
                if on is self._stream_sent or self._detached or client is None:
                    self._flow_busy = False
                    return
            try:
                client.call("stream", [self._hid, on])
            except Exception as e:  # the port or the connection closed meanwhile
                logging.getLogger("hwbridge.serial").debug("%s: stream %s: %s",
                                                           self._device, on, e)
                with self._rx_cv:
                    self._flow_busy = False
                return
            with self._rx_cv:
                self._stream_sent = on

    def _after_take(self) -> None:
        """Resume the stream once reads brought the buffer down (``_rx_cv`` held)."""
        if not self._stream_on and len(self._rx) <= self._rx_high // 4 and not self._detached:
            self._want_stream(True)

    def set_buffer_size(self, rx_size: int = 4096, tx_size: int | None = None) -> None:
        """As pyserial's (Windows): ``rx_size`` bytes buffered here make the host pause
        its pushes until reads take the buffer down to a quarter of it (flow control, see
        the module comment). ``tx_size`` is accepted and ignored: writes go straight to
        the host."""
        if type(rx_size) is not int or rx_size <= 0:
            raise ValueError(f"rx_size must be a positive integer, not {rx_size!r}")
        with self._rx_cv:
            self._rx_high = rx_size
            if len(self._rx) >= rx_size and not self._readers and self._stream_on:
                self._want_stream(False)
            else:
                self._after_take()

    def _call(self, op: str, *args: Any) -> Any:
        if not self.is_open or self.client is None:
            raise PortNotOpenError()
        return self.client.call(op, [self._hid, *args])

    # -- pyserial's backend interface -----------------------------------------------------

    def _reconfigure_port(self, force_update: bool = False) -> None:
        if not self.is_open:
            return
        wanted = self._wanted()
        if wanted != self._sent or force_update:
            self._sent = self._call("configure", wanted)
        if self._exclusive is not None and bool(self._exclusive) != getattr(self, "_excl", False):
            self._call("exclusive", bool(self._exclusive))
        self._excl = bool(self._exclusive)

    def _update_dtr_state(self) -> None:
        self._call("set_lines", bool(self._dtr_state), None)

    def _update_rts_state(self) -> None:
        self._call("set_lines", None, bool(self._rts_state))

    def _update_break_state(self) -> None:
        self._call("break_condition", bool(self._break_state))

    # -- reading --------------------------------------------------------------------------

    @property
    def in_waiting(self) -> int:
        """Bytes received and not yet read (one round trip, to count bytes in flight)."""
        pushed, held = self._call("in_waiting")
        with self._rx_cv:
            self._rx_cv.wait_for(lambda: self._received >= pushed or not self.is_open, CATCH_UP)
            return len(self._rx) + int(held)

    def read(self, size: int = 1) -> bytes:
        """Up to ``size`` bytes, waiting as pyserial does: ``timeout`` None waits for all,
        0 returns what is here, t waits up to t seconds; ``inter_byte_timeout`` ends the
        wait once bytes stop coming."""
        if not self.is_open:
            raise PortNotOpenError()
        if size <= 0:
            return b""
        return self._wait_and_take(lambda buf: size if len(buf) >= size else -1, size)

    def read_until(self, expected: bytes = serial.LF, size: int | None = None) -> bytes:
        """Read until ``expected`` is found, ``size`` bytes are read, or the timeout."""
        if not self.is_open:
            raise PortNotOpenError()
        exp = bytes(expected)
        scanned = 0  # bytes already searched: each wake-up searches only what is new

        def done(buf: ChunkBuffer) -> int:
            nonlocal scanned
            i = buf.find(exp, max(0, scanned - len(exp) + 1))
            scanned = len(buf)
            if i >= 0 and (size is None or i + len(exp) <= size):
                return i + len(exp)
            return size if size is not None and len(buf) >= size else -1

        return self._wait_and_take(done, size)

    def readline(self, size: int | None = -1) -> bytes:
        """A line ending in b"\\n" (or less on timeout / at ``size`` bytes)."""
        return self.read_until(serial.LF, None if size is None or size < 0 else size)

    def _wait_and_take(self, done: Any, cap: int | None) -> bytes:
        with self._rx_cv:
            self._readers += 1
            try:
                n = self._wait_for(done, cap)
            finally:
                self._readers -= 1
            if not n and self._gone is not None:  # as pyserial's read of a vanished port
                raise SerialException(*self._gone.args)  # anew each time
            self._cancel = False
            data = self._rx.take(n)
            self._after_take()
            return data

    def _wait_for(self, done: Any, cap: int | None) -> int:
        """Wait (``_rx_cv`` held) until ``done(buffer)`` gives the count of bytes to take,
        or the timeout, the inter-byte gap or a cancel ends the wait; returns the count."""
        n: int = done(self._rx)
        if n >= 0:  # here already (an answer that came with its command): no clock needed
            return n
        timeout = Timeout(self._timeout)
        client = self.client
        cv = self._rx_cv
        seen = len(self._rx)
        gap: Timeout | None = None
        pulled = pull = False
        while True:
            n = done(self._rx)
            if n >= 0:
                return n
            if self._cancel or not self.is_open or timeout.expired() or self._gone or \
                    (gap is not None and gap.expired()):
                return len(self._rx) if cap is None else min(cap, len(self._rx))
            if not self._stream_on:
                self._want_stream(True)  # a read waits for more than is here
            # Pull while pulling brings bytes; after a pull that did not, sleep once
            # (woken by whoever delivers, or a cancel), then try pulling again.
            pull = pulled or not pull
            if pull and client is not None:
                # Receive the pushes on this thread (see the module comment), without
                # the lock, so that whoever receives can deliver to any port. Then
                # check again before sleeping: a cancel or data may have come meanwhile.
                wait = time_left(timeout, gap)
                cv.release()
                try:
                    pulled = client.pull_events(
                        PULL_WAIT if wait is None else min(wait, PULL_WAIT))
                finally:
                    cv.acquire()
            else:
                cv.wait(time_left(timeout, gap))
            if len(self._rx) > seen and self._inter_byte_timeout is not None:
                gap = Timeout(self._inter_byte_timeout)
            seen = len(self._rx)

    def cancel_read(self) -> None:
        """Make a read waiting in another thread return now with what it has."""
        with self._rx_cv:
            self._cancel = True
            self._rx_cv.notify_all()

    def reset_input_buffer(self) -> None:
        """Drop received data here, on the host and on its way between them."""
        pushed = self._call("reset_input")
        with self._rx_cv:
            self._rx.clear()
            self._discard_until = max(self._discard_until, int(pushed))
            self._after_take()

    # -- writing --------------------------------------------------------------------------

    def write(self, data: Any) -> int:
        """Send ``data``; returns its length. SerialTimeoutException after write_timeout."""
        if not self.is_open:
            raise PortNotOpenError()
        d = serial.to_bytes(data)
        timeout = Timeout(self._write_timeout)
        view = memoryview(d)
        while view:
            try:
                n = self._call("write", view[:WRITE_CHUNK].tobytes(), timeout.time_left())
            except TimeoutError:
                raise SerialTimeoutException("Write timeout") from None
            view = view[n:]
            if view and timeout.expired():
                raise SerialTimeoutException("Write timeout")
        return len(d)

    def cancel_write(self) -> None:
        """Nothing to cancel: a write returns once the host took the bytes."""

    def flush(self) -> None:
        """Wait until all written data is sent by the port (tcdrain)."""
        self._call("drain", None)

    def reset_output_buffer(self) -> None:
        self._call("reset_output")

    @property
    def out_waiting(self) -> int:
        """Bytes written but not yet sent by the port."""
        return int(self._call("out_waiting"))

    def send_break(self, duration: float = 0.25) -> None:
        """Hold the line in break for ``duration`` seconds (timed on the host)."""
        self._call("send_break", float(duration), None)

    # -- modem lines ----------------------------------------------------------------------

    def _modem(self, line: str) -> bool:
        return bool(self._call("modem")[line])

    @property
    def cts(self) -> bool:
        return self._modem("cts")

    @property
    def dsr(self) -> bool:
        return self._modem("dsr")

    @property
    def ri(self) -> bool:
        return self._modem("ri")

    @property
    def cd(self) -> bool:
        return self._modem("cd")

    # -- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Release the host handle (and the connection, when the port opened its own)."""
        client = self.client
        if not self.is_open or client is None:
            return
        self.is_open = False
        client.remove_handler(self._handler)
        client.remove_handler(self._on_lost)
        with self._rx_cv:
            self._detached = True  # a push still being delivered leaves _exact be
            if self._exact:
                self._set_exact(client, False)
            self._rx_cv.notify_all()
        try:
            if not client.closed:
                client.call("close", [self._hid])
        finally:
            if self._owns_client:
                client.close()

    def status(self) -> dict[str, Any]:
        """Host-side counters: bytes buffered, lost to a full buffer, pushed."""
        result: dict[str, Any] = self._call("status")
        return result


class Serial(RemoteSerialBase):
    """A remote serial port, as returned by ``host.open("uart0")``: a pyserial SerialBase.

    It adopts the port's current settings (the manifest may set ``baudrate`` and the like);
    set ``baudrate``, ``timeout`` ... as with pyserial. Not usable inside ``host.batch()``.
    """

    def __init__(self, client: Client, name: str, handle: Any,
                 description: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(handle, int):
            raise RuntimeError("open serial ports outside host.batch()")
        self.description = description or {}
        self.port = f"{client.url.host_url}/{name}"
        self._attach(client, name, handle, None, None)


class URLSerial(RemoteSerialBase):
    """The port behind ``serial.serial_for_url("hwbridge://HOST:PORT/DEVICE", ...)``.

    Takes pyserial's constructor arguments; ``open()`` connects to the host (its own
    connection, closed by ``close()``) and applies the settings as pyserial does.
    """

    def open(self) -> None:
        from bridge.connect import connect
        from bridge.url import parse_url

        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        u = parse_url(self._port)
        if not u.device:
            raise SerialException(f"{self._port!r} names no device: use hwbridge://HOST/DEVICE")
        try:
            client = connect(u.host_url)
        except OSError as e:
            raise SerialException(e.errno, f"could not open port {self._port}: {e}") from e
        # as pyserial: a line under hardware flow control is left to the driver
        lines = (None if self._dsrdtr else bool(self._dtr_state),
                 None if self._rtscts else bool(self._rts_state))
        try:
            self._attach(client, u.device, lambda: client.call("open", [u.device]),
                         self._wanted(), lines)
        except OSError as e:
            client.close()
            raise SerialException(e.errno, f"could not open port {self._port}: {e}") from e
        except BaseException:
            client.close()
            raise
        self._owns_client = True
        self._excl = bool(self._exclusive)
