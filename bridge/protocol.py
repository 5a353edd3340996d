# The hwbridge wire protocol, sans I/O: bytes in, typed messages out; messages in, bytes out.
# Owns the connection state machine (hello/version negotiation, the state table as data, the
# frame limit, zero-copy collection of large data sections). The messages and their codec
# are bridge/messages.py. Must not know about sockets, threads, clocks or the OS: it imports
# no socket, select, threading, os or time, so it is tested byte by byte with no network.
from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack

from .messages import (
    BULK_DIRECT,
    BULK_MIN,
    BULK_TYPES,
    DEFAULT_MAX_FRAME,
    DEFAULT_PORT,
    FEATURES,
    HEADER,
    MAGIC,
    PACKER_OPTS,
    PROTOCOL_VERSION,
    REF_EXT,
    Batch,
    BatchError,
    BatchReply,
    Call,
    Error,
    Event,
    Hello,
    Message,
    ProtocolError,
    Ref,
    Reply,
    Value,
    decode_body,
    encode,
    ext_hook,
    pack_header,
    unpack_header,
    unpackb,
)

__all__ = [
    "BULK_DIRECT", "BULK_MIN", "DEFAULT_MAX_FRAME", "DEFAULT_PORT", "FEATURES", "HEADER",
    "MAGIC", "MISS", "NEED_DATA", "PROTOCOL_VERSION", "REF_EXT", "Batch", "BatchError",
    "BatchReply", "Call", "Connection", "Error", "Event", "Hello", "Message", "ProtocolError",
    "Ref", "Reply", "Role", "State", "Value", "decode_body", "encode", "negotiate",
]


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    HELLO = "hello"  # waiting for the peer's hello
    READY = "ready"
    CLOSED = "closed"
    ERROR = "error"


# The members as plain module names for the per-message paths: in Python 3.11 every
# `State.READY` looks the member up through the enum class (about 0.2 us each).
_READY, _ERROR, _SERVER = State.READY, State.ERROR, Role.SERVER


class _NeedData(enum.Enum):
    NEED_DATA = "need-data"


NEED_DATA: Final = _NeedData.NEED_DATA


class _Miss(enum.Enum):
    MISS = "miss"


#: What :meth:`Connection.reply_result` returns when the bytes are not simply the reply.
MISS: Final = _Miss.MISS

# Which messages each role may receive once READY; HELLO is only valid in State.HELLO.
_RECEIVABLE: Final[dict[Role, tuple[type, ...]]] = {
    Role.SERVER: (Call, Batch),
    Role.CLIENT: (Reply, Error, BatchReply, Event),
}

# The state table: (state, message type received) -> next state.
_TRANSITIONS: Final[dict[tuple[State, type], State]] = {
    (State.HELLO, Hello): State.READY,
    (State.HELLO, Error): State.CLOSED,  # a server refusing the hello
    **{(State.READY, t): State.READY for ts in _RECEIVABLE.values() for t in ts},
}


class Connection:
    """One end of a hwbridge connection as a pure state machine.

    Feed received bytes with :meth:`receive_data` (``b""`` means the peer closed), pull
    messages with :meth:`next_event` until it returns :data:`NEED_DATA`, and turn outgoing
    messages into bytes with :meth:`send`. Any protocol violation raises
    :class:`ProtocolError` and moves the connection to ``State.ERROR`` for good.
    """

    def __init__(self, role: Role, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.role = role
        self.max_frame = max_frame
        #: The largest frame the peer accepts (from its hello); checked before sending.
        self.send_limit = max_frame
        self.state = State.HELLO
        self.peer_hello: Hello | None = None
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._packer = msgpack.Packer(**PACKER_OPTS)
        self._receivable = _RECEIVABLE[role]
        # Data mode: the body of a frame with a large data section is decoded and the data
        # section is collected as the chunks that arrive, so a transport that receives the
        # exact remaining size (want()) hands over the final bytes object with no copy.
        self._error: ProtocolError | None = None  # raised by the next receive()
        self._stash: Any = None  # decoded body of the frame whose data is being collected
        self._parts: list[bytes | bytearray] = []
        self._want = 0

    # -- receiving ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer; an empty chunk means end of stream.

        A ``bytes`` chunk that arrives when nothing is pending is kept as it is (no copy):
        the common case of one recv carrying whole frames costs no buffer management.
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise ProtocolError("data received after end of stream")
        if self._want:
            need = self._want
            if len(data) <= need:
                # bytes and handed-over bytearrays are kept as they are; join() copies once
                self._parts.append(data if type(data) is not memoryview else bytes(data))
                self._want = need - len(data)
                return
            with memoryview(data) as mv:
                self._parts.append(bytes(mv[:need]))
                data = bytes(mv[need:])
            self._want = 0
        if self._pos >= len(self._buf):
            # Nothing pending: keep the chunk itself (bytes, or a bytearray the caller hands
            # over and does not reuse, as the transports here do).
            self._pos = 0
            self._buf = data if type(data) is not memoryview else bytearray(data)
        elif type(self._buf) is bytearray:
            self._buf += data
        else:
            self._buf = bytearray(memoryview(self._buf)[self._pos:])
            self._buf += data
            self._pos = 0

    def receive(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """:meth:`receive_data` then every complete message, in one call (the hot path).

        After end of stream, ``state`` is CLOSED once the messages before it are taken.
        """
        if self._error is not None:
            raise self._error
        # Fast path: nothing is pending and ``data`` is exactly one whole frame with no data
        # section (one recv per request or reply, the common case): decode it in place, with
        # no buffering and no second look for a next frame. Anything else, including every
        # error, takes the general path below, which reports it.
        if self.state is _READY and self._pos >= len(self._buf) and not self._want \
                and self._stash is None and not self._eof and type(data) is not memoryview \
                and len(data) > 8:
            body_len, data_len = unpack_header(data, 0)
            if not data_len and 8 + body_len == len(data) and body_len <= self.max_frame:
                msg: Message | None
                try:
                    msg = decode_body(unpackb(data[8:], ext_hook=ext_hook,
                                               strict_map_key=False), None)
                except Exception:  # malformed: the general path below reports it
                    msg = None
                if msg is not None and type(msg) in self._receivable:
                    return [msg]
        self.receive_data(data)
        out: list[Message] = []
        while True:
            try:
                ev = self.next_event()
            except ProtocolError as e:
                if not out:
                    raise
                self._error = e  # the messages before the bad frame come first
                return out
            if ev is NEED_DATA or ev is None:
                return out
            out.append(ev)

    def reply_result(self, buf: memoryview, n: int, id: int) -> Value | _Miss:
        """The result of the reply to call ``id`` when the ``n`` bytes at the start of
        ``buf`` are exactly that one whole Reply frame and nothing else is pending;
        :data:`MISS` otherwise, and nothing is consumed: the caller then feeds the same
        bytes to :meth:`receive`, which handles (and reports) everything else.

        The hot path of a client call: decoded in place from the caller's receive buffer,
        with no message object and no list of messages; a data section (the bytes of a
        read) is copied once, into the result.
        """
        # Nothing pending: no buffered bytes and no data section being collected (_want
        # is only ever set with _stash), and the stream has not ended.
        if n > 8 and self.state is _READY and self._pos >= len(self._buf) \
                and self._stash is None and not self._eof:
            body_len, data_len = unpack_header(buf, 0)
            mid = 8 + body_len
            if mid + data_len == n and body_len + data_len <= self.max_frame:
                try:
                    body = unpackb(buf[8:mid], ext_hook=ext_hook, strict_map_key=False)
                except Exception:  # malformed: receive() reports it
                    return MISS
                # The checks decode_body makes for a Reply, plus the id.
                if type(body) is list and len(body) == 3 and body[0] == 2 \
                        and body[1] == id and type(body[1]) is int:
                    if not data_len:
                        return body[2]
                    if body[2] is None:
                        return bytes(buf[mid:n])
        return MISS

    def events_then_reply(self, buf: memoryview, n: int, id: int
                          ) -> tuple[list[Event], Value] | _Miss:
        """(the events, the result) when the ``n`` bytes at the start of ``buf`` are whole
        Event frames followed by exactly the one whole Reply frame to call ``id``, and
        nothing else is pending; :data:`MISS` otherwise, and nothing is consumed (as
        :meth:`reply_result`, which the caller tries first).

        The events a call raised (a serial instrument's answer, a GPIO edge) come in one
        receive with its reply, since the host sends them together (bridge/loopconn.py).
        """
        if not (self.state is _READY and self._pos >= len(self._buf)
                and self._stash is None and not self._eof):
            return MISS
        events: list[Event] = []
        pos = 0
        while n - pos > 8:
            body_len, data_len = unpack_header(buf, pos)
            mid = pos + 8 + body_len
            end = mid + data_len
            if end > n or body_len + data_len > self.max_frame:
                return MISS
            if end == n:  # the last frame: the reply, as reply_result takes one
                result = self.reply_result(buf[pos:n], n - pos, id) if events else MISS
                return MISS if result is MISS else (events, result)
            try:
                body = unpackb(buf[pos + 8:mid], ext_hook=ext_hook, strict_map_key=False)
            except Exception:  # malformed: receive() reports it
                return MISS
            # An earlier frame: an Event, checked as decode_body checks one.
            if not (type(body) is list and len(body) == 4 and body[0] == 6
                    and type(body[1]) is str and type(body[2]) is int):
                return MISS
            if not data_len:
                events.append(Event(body[1], body[2], body[3]))
            elif body[3] is None:
                events.append(Event(body[1], body[2], bytes(buf[mid:end])))
            else:
                return MISS
            pos = end
        return MISS

    def call_in(self, buf: memoryview, n: int) -> Call | _Miss:
        """The Call when the ``n`` bytes at the start of ``buf`` are exactly one whole Call
        frame (no data section) and nothing else is pending; :data:`MISS` otherwise, and
        nothing is consumed: the caller then feeds the same bytes to :meth:`receive`,
        which handles (and reports) everything else.

        The hot path of a host: decoded in place from the transport's receive buffer, with
        no copy and no list of messages.
        """
        if n > 8 and self.state is _READY and self._pos >= len(self._buf) \
                and not self._want and self._stash is None and not self._eof:
            body_len, data_len = unpack_header(buf, 0)
            if not data_len and 8 + body_len == n and body_len <= self.max_frame:
                try:
                    body = unpackb(buf[8:n], ext_hook=ext_hook, strict_map_key=False)
                except Exception:  # malformed: receive() reports it
                    return MISS
                # The checks decode_body makes for a Call; a host receives nothing else.
                if type(body) is list and len(body) == 4 and body[0] == 1 \
                        and type(body[1]) is int and type(body[2]) is str \
                        and type(body[3]) is list and self.role is _SERVER:
                    return Call(body[1], body[2], body[3])
        return MISS

    def check(self) -> None:
        """Raise the ProtocolError that :meth:`receive` held back behind good messages."""
        if self._error is not None:
            raise self._error

    def next_event(self) -> Message | _NeedData | None:
        """The next complete message, NEED_DATA, or None once the peer has closed."""
        if self.state is not _READY:
            if self.state is _ERROR:
                raise ProtocolError("connection is in the error state")
        if self._stash is not None:
            if self._want:
                return self._end_or_wait(1)
            parts, self._parts = self._parts, []
            body, self._stash = self._stash, None
            one = parts[0] if len(parts) == 1 and type(parts[0]) is bytes else None
            return self._finish(body, one if one is not None else b"".join(parts))
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 8:
            return self._end_or_wait(avail)
        body_len, data_len = unpack_header(buf, pos)
        total = body_len + data_len
        if body_len == 0 or total > self.max_frame:
            self._fail(f"frame of {total} bytes exceeds the limit of {self.max_frame} bytes"
                       if body_len else "frame with an empty body")
        if avail < 8 + total:
            if data_len >= BULK_DIRECT and avail >= 8 + body_len:
                return self._enter_data_mode(buf, pos, body_len, data_len)
            return self._end_or_wait(avail)
        start = pos + 8
        mid = start + body_len
        end = mid + data_len
        try:
            if end - pos < 65536 or type(buf) is bytes:
                body = unpackb(buf[start:mid], ext_hook=ext_hook, strict_map_key=False)
                data = buf[mid:end] if data_len else None
                if data is not None and type(data) is not bytes:
                    data = bytes(data)
            else:
                with memoryview(buf) as mv:
                    body = unpackb(mv[start:mid], ext_hook=ext_hook, strict_map_key=False)
                    data = bytes(mv[mid:end]) if data_len else None
        except ProtocolError as e:
            self._fail(str(e))
        except Exception as e:  # msgpack raises several types for garbage
            self._fail(f"malformed frame body: {e.__class__.__name__}: {e}")
        if end == len(buf):
            self._buf = b""
            self._pos = 0
        else:
            self._pos = end
            if end > 65536 and type(buf) is bytearray:
                del buf[:end]
                self._pos = 0
        return self._finish(body, data)

    def _finish(self, body: Value, data: bytes | bytearray | None) -> Message:
        try:
            msg = decode_body(body, data)
        except ProtocolError as e:
            self._fail(str(e))
        if self.state is _READY and type(msg) in self._receivable:
            return msg
        return self._transition(msg)

    def _enter_data_mode(self, buf: bytes | bytearray, pos: int, body_len: int,
                         data_len: int) -> _NeedData | None:
        start, mid = pos + 8, pos + 8 + body_len
        try:
            self._stash = unpackb(bytes(buf[start:mid]), ext_hook=ext_hook,
                                   strict_map_key=False)
        except ProtocolError as e:
            self._fail(str(e))
        except Exception as e:
            self._fail(f"malformed frame body: {e.__class__.__name__}: {e}")
        part = bytes(buf[mid:])
        self._parts = [part] if part else []
        self._want = data_len - len(part)
        self._buf, self._pos = b"", 0
        return self._end_or_wait(1)

    def buffered(self) -> int:
        """Bytes of a frame that started arriving and is not complete; 0 between frames."""
        return len(self._buf) - self._pos + (self._stash is not None)

    def data_wanted(self) -> int:
        """Bytes still missing from a large data section being collected (0 if none)."""
        return self._want

    def want(self) -> int:
        """Bytes that complete the next piece (header, body, or data section) exactly.

        A transport expecting bulk replies receives exactly this many bytes (e.g. with
        MSG_WAITALL), so a large data section arrives as one bytes object, never copied.
        """
        if self._want:
            return self._want
        avail = len(self._buf) - self._pos
        if avail < 8:
            return 8 - avail
        body_len: int
        data_len: int
        body_len, data_len = unpack_header(self._buf, self._pos)
        if data_len >= BULK_DIRECT:
            return max(0, 8 + body_len - avail)
        return max(0, 8 + body_len + data_len - avail)

    def _end_or_wait(self, avail: int) -> _NeedData | None:
        if not self._eof:
            return NEED_DATA
        if avail:
            self._fail(f"connection closed in the middle of a frame ({avail} bytes pending)")
        self.state = State.CLOSED
        return None

    def _transition(self, msg: Message) -> Message:
        key = (self.state, type(msg))
        nxt = _TRANSITIONS.get(key)
        if (
            nxt is None
            or (self.state is State.READY and not isinstance(msg, self._receivable))
            or (isinstance(msg, Error) and self.role is Role.SERVER)
        ):
            self._fail(f"unexpected {type(msg).__name__} in state {self.state.value}")
        if isinstance(msg, Hello):
            self.peer_hello = msg
            if msg.version != PROTOCOL_VERSION:
                self._fail(f"peer speaks protocol version {msg.version}, "
                           f"this side speaks {PROTOCOL_VERSION}")
        assert nxt is not None
        self.state = nxt
        return msg

    def _fail(self, why: str) -> Any:
        self.state = State.ERROR
        raise ProtocolError(why)

    # -- sending --------------------------------------------------------------------------

    def call_bytes(self, id: int, op: str, args: list[Value]) -> bytes | None:
        """The frame of ``Call(id, op, args)`` as one bytes object; None when the call
        needs the general path (a bulk last argument). The hot path of every client call."""
        if args and type(args[-1]) in BULK_TYPES and len(args[-1]) >= BULK_MIN:
            return None
        raw: bytes = self._packer.pack([1, id, op, args])
        if len(raw) > self.send_limit:
            raise ValueError(f"message of {len(raw)} bytes exceeds the peer's frame limit "
                             f"of {self.send_limit} bytes")
        return pack_header(len(raw), 0) + raw

    def reply_bytes(self, id: int, result: Value) -> bytes | None:
        """The frame of ``Reply(id, result)`` as one bytes object; None when the result
        needs the general path (bulk bytes). The hot path of every host reply."""
        if type(result) in BULK_TYPES and len(result) >= BULK_MIN:
            return None
        raw: bytes = self._packer.pack([2, id, result])
        if len(raw) > self.send_limit:
            return None  # send() raises the error
        return pack_header(len(raw), 0) + raw

    def set_default(self, default: Callable[[object], object]) -> None:
        """Encode values outside the wire types with ``default`` (which returns a wire
        value, or raises TypeError), instead of messages.wire_default."""
        self._packer = msgpack.Packer(**{**PACKER_OPTS, "default": default})

    def send(self, msg: Message) -> list[bytes | memoryview]:
        """Bytes (one or two buffers, for a gather write) that carry ``msg`` to the peer."""
        bufs = encode(msg, self._packer)
        size = len(bufs[0]) - 8 + (len(bufs[1]) if len(bufs) > 1 else 0)
        if size > self.send_limit:
            raise ValueError(f"message of {size} bytes exceeds the peer's frame limit "
                             f"of {self.send_limit} bytes")
        return bufs


def negotiate(ours: Sequence[str], theirs: Sequence[str]) -> tuple[str, ...]:
    """Features both sides know, in our order."""
    return tuple(f for f in ours if f in theirs)
