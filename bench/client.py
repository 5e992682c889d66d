"""Blocking raw-socket HTTP/1.1 clients that do as little Python per chunk as possible.

Why raw sockets: an HTTP library would cost more CPU per chunk than the proxy work we try to
measure, on a machine where client, proxy and upstream share two cores. Reading loops only
timestamp and keep each ``recv``; frames are found afterwards (:func:`frame_delays`).
Every loop is bounded by a deadline.

Our proxies keep connections alive; a peer may not (TokenPak answers HTTP/1.0 and ends each
response by closing), so a response that ends with the connection marks it closed and the next
request on that :class:`Conn` opens a new one, inside the timed span: a client pays that too.
"""

from __future__ import annotations

import re
import select
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


def _closes(head: bytes) -> bool:
    """Whether the server ends the connection after this response (HTTP/1.0 without keep-alive, or close)."""
    low = head.lower()
    return b"connection: close" in low or (head.startswith(b"HTTP/1.0") and b"keep-alive" not in low)


class Conn:
    """One keep-alive connection (reopened when the server closed it); :meth:`post` returns latency, headers and body."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.sock = _connect(port, timeout)
        self.closed = False
        self.reconnects = 0

    def close(self) -> None:
        self.sock.close()
        self.closed = True

    def stale(self) -> bool:
        """Whether the server has closed this idle connection (a keep-alive timeout: uvicorn's is
        5 s, shorter than a round of five setups), found without blocking, as a client's pool does.
        Called outside the timed span; the reconnect that follows is inside it."""
        if not self.closed:
            try:  # a socket with a timeout waits inside recv even with MSG_DONTWAIT: ask select first
                if select.select([self.sock], [], [], 0)[0] and self.sock.recv(1, socket.MSG_PEEK) == b"":
                    self.close()
            except OSError:  # reset
                self.close()
        return self.closed

    def ensure(self) -> socket.socket:
        """The socket, reopened if the last response ended the connection."""
        if self.closed:
            self.sock = _connect(self.port, self.timeout)
            self.closed = False
            self.reconnects += 1
        return self.sock

    def post(self, raw: bytes) -> tuple[int, bytes, bytes]:
        """Send ``raw``; read a Content-Length, chunked or close-delimited response. Returns (ns, head, body)."""
        self.stale()
        t0 = time.perf_counter_ns()
        sock = self.ensure()
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
        if i < 0 and b"chunked" not in head.lower():  # the body ends when the server closes
            while more := sock.recv(65536):
                if time.monotonic() > deadline:
                    raise ConnectionError("body not ended by close")
                body += more
            self.close()
            return time.perf_counter_ns() - t0, head, body
        eol = head.find(b"\r\n", i)
        need = int(head[i + 15:eol if eol >= 0 else len(head)]) if i >= 0 else -1  # -1: chunked, ends with 0 CRLF CRLF
        while (len(body) < need) if need >= 0 else not body.endswith(_END):
            more = sock.recv(65536)
            if not more or time.monotonic() > deadline:
                raise ConnectionError("incomplete body")
            body += more
        if _closes(head):
            self.close()
        return time.perf_counter_ns() - t0, head, body

    def stream(self, raw: bytes, deadline: float) -> StreamRead:
        """Send ``raw`` and keep every piece of a chunked response with its arrival time."""
        self.stale()
        sent = time.monotonic_ns()
        r = StreamRead(self.ensure(), sent)
        r.sock.sendall(raw)
        while not r.done and time.monotonic() < deadline:
            r.on_readable()
        self.after(r)
        return r

    def after(self, r: StreamRead) -> None:
        """Mark the connection closed when the response ended it (or did not end in time)."""
        if r.eof or not r.done or (r.pieces and _closes(r.pieces[0][:r.pieces[0].find(b"\r\n\r\n") + 1])):
            self.close()

    def drain_bulk(self, raw: bytes, deadline: float, bufsize: int = 1 << 20) -> tuple[int, int, int]:
        """Read a huge chunked (or close-delimited) response into one reused buffer. Returns (sent_ns, end_ns, bytes)."""
        mv = memoryview(bytearray(bufsize))
        self.stale()
        sent = time.monotonic_ns()
        sock = self.ensure()
        sock.sendall(raw)
        total, tail, head = 0, b"", b""
        while time.monotonic() < deadline:
            n = sock.recv_into(mv)
            if n == 0:
                self.close()
                if total and b"chunked" not in head.lower():  # ended by close, as HTTP/1.0 does
                    return sent, time.monotonic_ns(), total
                break
            if not head:
                head = bytes(mv[:min(n, 4096)]).partition(b"\r\n\r\n")[0]
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
    eof: bool = False  # the server closed: the end of an HTTP/1.0 response, or a cut

    def on_readable(self) -> None:
        data = self.sock.recv(262144)
        now = time.monotonic_ns()
        if not data:
            self.done = self.eof = True
            return
        self.times.append(now)
        self.pieces.append(data)
        if data.endswith(_END) or (len(data) < 5 and (self.pieces[-2][-5:] + data if len(self.pieces) > 1 else data).endswith(_END)):
            self.done = True


def read_streams(conns: list[Conn], raw: bytes, deadline: float) -> list[StreamRead]:
    """Start one stream on each connection at once and read them all from one thread.

    A connection the server closed is reopened right before its request is sent, as a client
    does: TokenPak's accept thread waits up to 0.25 s for each new connection's request head,
    so opening all 50 first and sending afterwards would stall it for seconds."""
    sel = selectors.DefaultSelector()
    reads: list[StreamRead] = []
    try:
        for c in conns:
            c.stale()
            r = StreamRead(c.sock, time.monotonic_ns())
            r.sock = c.ensure()
            r.sock.sendall(raw)
            reads.append(r)
            sel.register(r.sock, selectors.EVENT_READ, r)
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
        for c, r in zip(conns, reads, strict=False):  # fewer reads when a send failed
            c.after(r)
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
