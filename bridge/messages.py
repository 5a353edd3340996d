# The hwbridge messages and their codec: the closed set of message types, the frame header,
# and msgpack body encoding/decoding (bulk bytes moved to the data section). Pure functions;
# the connection state machine that uses them is bridge/protocol.py. Must not know about
# sockets, threads, clocks or the OS.
#
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
BULK_TYPES: Final = (bytes, bytearray, memoryview)

#: Features this implementation knows; the hello exchange keeps the intersection.
FEATURES: Final = ("batch", "events", "data-section")


class ProtocolError(Exception):
    """The peer broke the protocol: malformed, oversized or out-of-order frames."""


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


def wire_default(obj: object) -> object:
    """The packer's hook for values outside msgpack's own types: Ref and tuple, else a
    TypeError (a Connection's caller may put its own in front: Connection.set_default)."""
    if isinstance(obj, Ref):
        return msgpack.ExtType(REF_EXT, _REF.pack(obj.index))
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot send a value of type {type(obj).__name__}")


def ext_hook(code: int, data: bytes) -> Ref:
    if code != REF_EXT or len(data) != _REF.size:
        raise ProtocolError(f"unknown extension type {code}")
    return Ref(_REF.unpack(data)[0])


PACKER_OPTS: Final = {"default": wire_default, "use_bin_type": True, "autoreset": True}


def encode(msg: Message, packer: msgpack.Packer | None = None) -> list[bytes | memoryview]:
    """Return the buffers of one frame for ``msg`` (header+body, then data if any)."""
    data: bytes | bytearray | memoryview | None = None
    body: list[Value]
    t = type(msg)
    # Plain type dispatch, most frequent first: this is the hot path of every call.
    if t is Call:
        args = msg.args  # type: ignore[union-attr]
        last = args[-1] if args else None
        if type(last) in BULK_TYPES and len(last) >= BULK_MIN:  # type: ignore[arg-type]
            body, data = [1, msg.id, msg.op, list(args[:-1])], last  # type: ignore[union-attr]
        else:
            body = [1, msg.id, msg.op, args]  # type: ignore[union-attr]
    elif t is Reply:
        result = msg.result  # type: ignore[union-attr]
        if type(result) in BULK_TYPES and len(result) >= BULK_MIN:
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
        if type(payload) in BULK_TYPES and len(payload) >= BULK_MIN:
            body, data = [6, msg.topic, msg.handle, None], payload
        else:
            body = [6, msg.topic, msg.handle, payload]
    elif isinstance(msg, Hello):
        body = [0, msg.version, list(msg.features), {"magic": MAGIC, **msg.info}]
    else:
        raise TypeError(f"not a protocol message: {msg!r}")
    raw = (packer if packer is not None else msgpack.Packer(**PACKER_OPTS)).pack(body)
    if data is None:
        return [pack_header(len(raw), 0) + raw]
    return [pack_header(len(raw), len(data)) + raw,
            data if type(data) is not bytearray else memoryview(data)]


pack_header: Final = HEADER.pack
unpack_header: Final = HEADER.unpack_from
unpackb: Final = msgpack.unpackb


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
