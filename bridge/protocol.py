# The hwbridge wire protocol, sans I/O: bytes in, typed messages out; messages in, bytes out.
# Owns framing, the closed set of message types, hello/version negotiation and the
# connection state table. Must not know about sockets, threads, clocks or the OS: it imports
# no socket, select, threading, os or time, so it is tested byte by byte with no network.
#
# A frame is an 8-byte header, a msgpack body and an optional raw data section:
#
#     u32 body_len | u32 data_len | body (msgpack array) | data (raw bytes)
#
# The data section carries bulk payloads (a read's bytes, a write's bytes) without msgpack
# copying them: the encoder moves a large bytes result, or a large bytes last argument,
# there; both lengths are checked against the frame limit before anything is
# allocated. Bodies are msgpack arrays whose first element is the message type:
#
#     HELLO        [0, version, features, info]
#     CALL         [1, id, op, args]     with a data section: it is the last argument
#     REPLY        [2, id, result]       with a data section: it is the result (body: nil)
#     ERROR        [3, id, errno, message]
#     BATCH        [4, id, [[op, args], ...]]         args may hold Ref(i): result of op i
#     BATCH_REPLY  [5, id, [result, ...], error]      error: None or [index, errno, message]
#     EVENT        [6, topic, handle, payload]   with a data section: it is the payload
#
# Values are limited to msgpack's own types plus Ref (ext type 1); no pickle, no eval.
from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

import msgpack

PROTOCOL_VERSION: Final = 1
DEFAULT_PORT: Final = 7420
DEFAULT_MAX_FRAME: Final = 8 * 1024 * 1024
MAGIC: Final = "hwbridge"
HEADER: Final = struct.Struct(">II")
REF_EXT: Final = 1
_REF = struct.Struct(">H")
#: Byte strings at least this long travel in the data section instead of the msgpack body.
BULK_MIN: Final = 4096
#: Data sections at least this long are collected without copying (Connection.want()).
BULK_DIRECT: Final = 64 * 1024
_BULK: Final = (bytes, bytearray, memoryview)

#: Features this implementation knows; the hello exchange keeps the intersection.
FEATURES: Final = ("batch", "events", "data-section")


class ProtocolError(Exception):
    """The peer broke the protocol: malformed, oversized or out-of-order frames."""


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    HELLO = "hello"  # waiting for the peer's hello
    READY = "ready"
    CLOSED = "closed"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Ref:
    """Inside a batch: the result of operation number ``index`` of the same batch."""

    index: int


Value: TypeAlias = Any  # a msgpack value: None, bool, int, float, str, bytes, list, dict, Ref


@dataclass(slots=True)
class Hello:
    version: int = PROTOCOL_VERSION
    features: tuple[str, ...] = FEATURES
    info: dict[str, Value] = field(default_factory=dict)


@dataclass(slots=True)
class Call:
    id: int
    op: str
    args: Sequence[Value]


@dataclass(slots=True)
class Reply:
    id: int
    result: Value


@dataclass(slots=True)
class Error:
    id: int
    errno: int
    message: str


@dataclass(slots=True)
class Batch:
    id: int
    ops: Sequence[tuple[str, Sequence[Value]]]


@dataclass(slots=True)
class BatchError:
    index: int
    errno: int
    message: str


@dataclass(slots=True)
class BatchReply:
    id: int
    results: Sequence[Value]
    error: BatchError | None = None


@dataclass(slots=True)
class Event:
    topic: str
    handle: int
    payload: Value


Message: TypeAlias = Hello | Call | Reply | Error | Batch | BatchReply | Event


class _NeedData(enum.Enum):
    NEED_DATA = "need-data"


NEED_DATA: Final = _NeedData.NEED_DATA

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


def _default(obj: object) -> object:
    if isinstance(obj, Ref):
        return msgpack.ExtType(REF_EXT, _REF.pack(obj.index))
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot send a value of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Ref:
    if code != REF_EXT or len(data) != _REF.size:
        raise ProtocolError(f"unknown extension type {code}")
    return Ref(_REF.unpack(data)[0])


_packer_opts: Final = {"default": _default, "use_bin_type": True, "autoreset": True}


def encode(msg: Message, packer: msgpack.Packer | None = None) -> list[bytes | memoryview]:
    """Return the buffers of one frame for ``msg`` (header+body, then data if any)."""
    data: bytes | bytearray | memoryview | None = None
    body: list[Value]
    t = type(msg)
    # Plain type dispatch, most frequent first: this is the hot path of every call.
    if t is Call:
        args = msg.args  # type: ignore[union-attr]
        last = args[-1] if args else None
        if type(last) in _BULK and len(last) >= BULK_MIN:  # type: ignore[arg-type]
            body, data = [1, msg.id, msg.op, list(args[:-1])], last  # type: ignore[union-attr]
        else:
            body = [1, msg.id, msg.op, args]  # type: ignore[union-attr]
    elif t is Reply:
        result = msg.result  # type: ignore[union-attr]
        if type(result) in _BULK and len(result) >= BULK_MIN:
            body, data = [2, msg.id, None], result  # type: ignore[union-attr]
        else:
            body = [2, msg.id, result]  # type: ignore[union-attr]
    elif isinstance(msg, Error):
        body = [3, msg.id, msg.errno, msg.message]
    elif isinstance(msg, Batch):
        body = [4, msg.id, [[op, list(args)] for op, args in msg.ops]]
    elif isinstance(msg, BatchReply):
        err = msg.error
        e = None if err is None else [err.index, err.errno, err.message]
        body = [5, msg.id, list(msg.results), e]
    elif isinstance(msg, Event):
        payload = msg.payload
        if type(payload) in _BULK and len(payload) >= BULK_MIN:
            body, data = [6, msg.topic, msg.handle, None], payload
        else:
            body = [6, msg.topic, msg.handle, payload]
    elif isinstance(msg, Hello):
        body = [0, msg.version, list(msg.features), {"magic": MAGIC, **msg.info}]
    else:
        raise TypeError(f"not a protocol message: {msg!r}")
    raw = (packer if packer is not None else msgpack.Packer(**_packer_opts)).pack(body)
    if data is None:
        return [_pack_header(len(raw), 0) + raw]
    return [_pack_header(len(raw), len(data)) + raw,
            data if type(data) is not bytearray else memoryview(data)]


_pack_header: Final = HEADER.pack
_unpack_header: Final = HEADER.unpack_from
_unpackb: Final = msgpack.unpackb


def _int(v: object, what: str) -> int:
    if type(v) is not int:
        raise ProtocolError(f"{what} must be an integer, got {type(v).__name__}")
    return v


def _str(v: object, what: str) -> str:
    if type(v) is not str:
        raise ProtocolError(f"{what} must be a string, got {type(v).__name__}")
    return v


def _list(v: object, what: str) -> list[Value]:
    if type(v) is not list:
        raise ProtocolError(f"{what} must be an array, got {type(v).__name__}")
    return v


def decode_body(body: Value, data: bytes | bytearray | None) -> Message:
    """Turn one decoded msgpack body (+ data section) into a typed message."""
    # The two messages of every round trip first, checked inline (the hot path).
    if type(body) is list and data is None:
        n = len(body)
        if n == 3 and body[0] == 2 and type(body[1]) is int:
            return Reply(body[1], body[2])
        if n == 4 and body[0] == 1 and type(body[1]) is int and type(body[2]) is str \
                and type(body[3]) is list:
            return Call(body[1], body[2], body[3])
    b = _list(body, "frame body")
    if not b:
        raise ProtocolError("empty frame body")
    kind = b[0]
    n = len(b)
    if kind == 1 and n == 4:
        args = _list(b[3], "args")
        if data is not None:
            args.append(data)
        return Call(_int(b[1], "call id"), _str(b[2], "op"), args)
    if kind == 2 and n == 3:
        if data is not None:
            if b[2] is not None:
                raise ProtocolError("a reply with a data section has a nil result")
            return Reply(_int(b[1], "reply id"), data)
        return Reply(_int(b[1], "reply id"), b[2])
    if kind == 6 and n == 4 and data is not None:
        if b[3] is not None:
            raise ProtocolError("an event with a data section has a nil payload")
        return Event(_str(b[1], "event topic"), _int(b[2], "event handle"), data)
    if data is not None:
        raise ProtocolError(f"message type {kind!r} carries no data section")
    if kind == 3 and n == 4:
        return Error(_int(b[1], "error id"), _int(b[2], "errno"), _str(b[3], "message"))
    if kind == 4 and n == 3:
        ops = []
        for item in _list(b[2], "batch ops"):
            pair = _list(item, "batch op")
            if len(pair) != 2:
                raise ProtocolError("batch op must be [op, args]")
            ops.append((_str(pair[0], "op"), _list(pair[1], "args")))
        return Batch(_int(b[1], "batch id"), ops)
    if kind == 5 and n == 4:
        err = None
        if b[3] is not None:
            e = _list(b[3], "batch error")
            if len(e) != 3:
                raise ProtocolError("batch error must be [index, errno, message]")
            err = BatchError(_int(e[0], "index"), _int(e[1], "errno"), _str(e[2], "message"))
        return BatchReply(_int(b[1], "batch id"), _list(b[2], "batch results"), err)
    if kind == 6 and n == 4:
        return Event(_str(b[1], "event topic"), _int(b[2], "event handle"), b[3])
    if kind == 0 and n == 4:
        info = b[3]
        if type(info) is not dict or info.get("magic") != MAGIC:
            raise ProtocolError("not a hwbridge peer (bad hello)")
        feats = tuple(_str(f, "feature") for f in _list(b[2], "features"))
        return Hello(_int(b[1], "version"), feats, {k: v for k, v in info.items() if k != "magic"})
    raise ProtocolError(f"unknown message type {kind!r} with {n} fields")


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
        self._packer = msgpack.Packer(**_packer_opts)
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
        if self.state is State.READY and self._pos >= len(self._buf) and not self._want \
                and self._stash is None and not self._eof and type(data) is not memoryview \
                and len(data) > 8:
            body_len, data_len = _unpack_header(data, 0)
            if not data_len and 8 + body_len == len(data) and body_len <= self.max_frame:
                try:
                    msg = decode_body(_unpackb(data[8:], ext_hook=_ext_hook,
                                               strict_map_key=False), None)
                except Exception:
                    pass
                else:
                    if type(msg) in self._receivable:
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

    def check(self) -> None:
        """Raise the ProtocolError that :meth:`receive` held back behind good messages."""
        if self._error is not None:
            raise self._error

    def next_event(self) -> Message | _NeedData | None:
        """The next complete message, NEED_DATA, or None once the peer has closed."""
        if self.state is not State.READY:
            if self.state is State.ERROR:
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
        body_len, data_len = _unpack_header(buf, pos)
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
                body = _unpackb(buf[start:mid], ext_hook=_ext_hook, strict_map_key=False)
                data = buf[mid:end] if data_len else None
                if data is not None and type(data) is not bytes:
                    data = bytes(data)
            else:
                with memoryview(buf) as mv:
                    body = _unpackb(mv[start:mid], ext_hook=_ext_hook, strict_map_key=False)
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
        if self.state is State.READY and type(msg) in self._receivable:
            return msg
        return self._transition(msg)

    def _enter_data_mode(self, buf: bytes | bytearray, pos: int, body_len: int,
                         data_len: int) -> _NeedData | None:
        start, mid = pos + 8, pos + 8 + body_len
        try:
            self._stash = _unpackb(bytes(buf[start:mid]), ext_hook=_ext_hook,
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
        body_len, data_len = _unpack_header(self._buf, self._pos)
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
        if args and type(args[-1]) in _BULK and len(args[-1]) >= BULK_MIN:
            return None
        raw: bytes = self._packer.pack([1, id, op, args])
        if len(raw) > self.send_limit:
            raise ValueError(f"message of {len(raw)} bytes exceeds the peer's frame limit "
                             f"of {self.send_limit} bytes")
        return _pack_header(len(raw), 0) + raw

    def reply_bytes(self, id: int, result: Value) -> bytes | None:
        """The frame of ``Reply(id, result)`` as one bytes object; None when the result
        needs the general path (bulk bytes). The hot path of every host reply."""
        if type(result) in _BULK and len(result) >= BULK_MIN:
            return None
        raw: bytes = self._packer.pack([2, id, result])
        if len(raw) > self.send_limit:
            return None  # send() raises the error
        return _pack_header(len(raw), 0) + raw

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
