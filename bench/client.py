"""Blocking raw-socket HTTP/1.1 clients that do as little Python per chunk as possible.

Why raw sockets: an HTTP library would cost more CPU per chunk than the proxy work we try to
measure, on a machine where client, proxy and upstream share two cores. Reading loops only
timestamp and keep each ``recv``; frames are found afterwards (:func:`frame_delays`).
Every loop is bounded by a deadline.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate

from bench.frames import STAMP_RE

__all__ = ["Conn", "StreamRead", "read_streams", "frame_delays", "request_bytes"]

_END = b"0\r\n\r\n"
_POST_DEADLINE_S = 30.0
_STAMP = re.compile(STAMP_RE)


def request_bytes(path: str, body: bytes) -> bytes:
    return (b"POST %s HTTP/1.1\r\nhost: api.anthropic.com\r\ncontent-type: application/json\r\n"
            b"anthropic-version: 2023-06-01\r\nx-api-key: bench\r\ncontent-length: %d\r\n\r\n"
            % (path.encode(), len(body))) + body


def _connect(port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Conn:
    """One keep-alive connection; :meth:`post` returns latency, headers and body."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.sock = _connect(port, timeout)

    def close(self) -> None:
        self.sock.close()

    def post(self, raw: bytes) -> tuple[int, bytes, bytes]:
        """Send ``raw``; read a Content-Length response. Returns (ns, head, body)."""
        sock = self.sock
        t0 = time.perf_counter_ns()
        deadline = time.monotonic() + _POST_DEADLINE_S
        sock.sendall(raw)
        buf = sock.recv(65536)
        while buf.find(b"\r\n\r\n") < 0:
            more = sock.recv(65536)
            if not more or time.monotonic() > deadline:
                raise ConnectionError("no complete headers")
            buf += more
        head, _, body = buf.partition(b"\r\n\r\n")
        i = head.lower().find(b"content-length:")
        need = int(head[i + 15:head.find(b"\r\n", i)]) if i >= 0 else 0
        while len(body) < need:
            more = sock.recv(65536)
            if not more or time.monotonic() > deadline:
                raise ConnectionError("incomplete body")
            body += more
        return time.perf_counter_ns() - t0, head, body

    def stream(self, raw: bytes, deadline: float) -> StreamRead:
        """Send ``raw`` and keep every piece of a chunked response with its arrival time."""
        r = StreamRead(self.sock)
        r.sent_ns = time.monotonic_ns()
        self.sock.sendall(raw)
        while not r.done and time.monotonic() < deadline:
            r.on_readable()
        return r

    def drain_bulk(self, raw: bytes, deadline: float, bufsize: int = 1 << 20) -> tuple[int, int, int]:
        """Read a huge chunked response into one reused buffer. Returns (sent_ns, end_ns, bytes)."""
        sock, mv = self.sock, memoryview(bytearray(bufsize))
        sent = time.monotonic_ns()
        sock.sendall(raw)
        total, tail = 0, b""
        while time.monotonic() < deadline:
            n = sock.recv_into(mv)
            if n == 0:
                break
            total += n
            tail = bytes(mv[n - 5:n]) if n >= 5 else (tail + bytes(mv[:n]))[-5:]
            if tail == _END:
                return sent, time.monotonic_ns(), total
        raise TimeoutError(f"bulk stream incomplete after {total} bytes")


@dataclass
class StreamRead:
    """The raw pieces of one streamed response, each with its CLOCK_MONOTONIC arrival time."""

    sock: socket.socket
    sent_ns: int = 0
    times: list[int] = field(default_factory=list)
    pieces: list[bytes] = field(default_factory=list)
    done: bool = False

    def on_readable(self) -> None:
        data = self.sock.recv(262144)
        now = time.monotonic_ns()
        if not data:
            self.done = True
            return
        self.times.append(now)
        self.pieces.append(data)
        if data.endswith(_END) or (len(data) < 5 and (self.pieces[-2][-5:] + data if len(self.pieces) > 1 else data).endswith(_END)):
            self.done = True


def read_streams(conns: list[Conn], raw: bytes, deadline: float) -> list[StreamRead]:
    """Start one stream on each connection at once and read them all from one thread."""
    sel = selectors.DefaultSelector()
    reads = []
    for c in conns:
        r = StreamRead(c.sock)
        reads.append(r)
        sel.register(c.sock, selectors.EVENT_READ, r)
    try:
        for r in reads:
            r.sent_ns = time.monotonic_ns()
            r.sock.sendall(raw)
        left = len(reads)
        while left and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                r = key.data
                r.on_readable()
                if r.done:
                    sel.unregister(r.sock)
                    left -= 1
    finally:
        sel.close()
    return reads


def frame_delays(r: StreamRead) -> tuple[int | None, list[int]]:
    """(time to first byte, per-frame delays) in ns: arrival of the piece holding a frame's stamp
    minus the upstream's send time written in that frame (both CLOCK_MONOTONIC, one machine)."""
    if not r.pieces:
        return None, []
    ends = list(accumulate(len(p) for p in r.pieces))
    blob = b"".join(r.pieces)
    delays = []
    for m in _STAMP.finditer(blob):
        last_byte = blob.find(b"\n\n", m.end()) + 1  # the frame is complete with this byte
        arrival = r.times[min(bisect_right(ends, last_byte), len(ends) - 1)]
        delays.append(arrival - int(m.group(1)))
    return r.times[0] - r.sent_ns, delays
