# The reference for the small-op goals: the least a Python host and client can do per call
# with hwbridge's frames (u32 body length | u32 data length | msgpack [1, id, op, args],
# replied to with [2, id, result]). No hello, no handle table, no rights, no argument
# checks, no deadlines, no thread safety, no error replies: just receive, decode, os.read,
# encode, send. Measured beside the raw echo in the same run, it shows how much of the
# echo's ratio is Python itself on this machine, before any feature is paid for.
#
# Two hosts: one thread waiting with epoll on every connection (what bridge/loop.py does),
# or a thread per connection blocked in recv (what the echo floor does).
from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterator

import msgpack

from .common import child

_HOST = r"""
import msgpack, os, select, socket, struct, sys, threading
H = struct.Struct(">II")
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", 0)); ls.listen(64); print(ls.getsockname()[1], flush=True)
handles = {1: os.open("/dev/zero", os.O_RDONLY)}
if sys.argv[1] == "epoll":
    buf = bytearray(65536); view = memoryview(buf); pack = msgpack.Packer().pack
    ep = select.epoll(); ep.register(ls.fileno(), select.EPOLLIN); conns = {}
    while True:
        for fd, _ in ep.poll():
            c = conns.get(fd)
            if c is None:
                c, _ = ls.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.setblocking(False); conns[c.fileno()] = c; ep.register(c, select.EPOLLIN)
                continue
            n = c.recv_into(buf)
            if not n:
                ep.unregister(fd); conns.pop(fd).close(); continue
            _, rid, op, args = msgpack.unpackb(view[8:n])
            raw = pack([2, rid, os.read(handles[args[0]], args[1])])
            c.send(H.pack(len(raw), 0) + raw)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(65536); view = memoryview(buf); pack = msgpack.Packer().pack
    while True:
        n = c.recv_into(buf)
        if not n:
            break
        _, rid, op, args = msgpack.unpackb(view[8:n])
        raw = pack([2, rid, os.read(handles[args[0]], args[1])])
        c.send(H.pack(len(raw), 0) + raw)
    c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

_H = struct.Struct(">II")


def minimal_host(wait: str) -> contextlib.AbstractContextManager[int]:
    """A minimal host (``wait`` = "epoll" or "threads") in its own process: its port."""
    return child(_HOST, wait)


@contextlib.contextmanager
def minimal_client(port: int) -> Iterator[Callable[[], bytes]]:
    """A connection to a minimal host, as the function making one call: read 16 bytes."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(65536)
    view = memoryview(buf)
    pack = msgpack.Packer().pack
    ids = iter(range(1, 1 << 31))

    def call() -> bytes:
        raw = pack([1, next(ids), "read", [1, 16, None]])
        s.send(_H.pack(len(raw), 0) + raw)
        n = s.recv_into(buf)  # one reply frame of 27 bytes: always whole on loopback
        data: bytes = msgpack.unpackb(view[8:n])[2]
        return data

    try:
        if call() != bytes(16):
            raise RuntimeError("the minimal host did not read /dev/zero")
        yield call
    finally:
        s.close()
