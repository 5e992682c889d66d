"""A raw-socket HTTP/1.1 client that sees every body chunk as it arrives and can hang up anywhere.

SDK clients hide chunk boundaries and cannot disconnect mid-frame on cue; the end-to-end tests
and the conformance replayer need both. It sends the exact request bytes given (no header
normalisation), decodes chunked framing and records each body piece with its arrival time.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Response", "request", "build_request"]


@dataclass
class Response:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""  # payload bytes (chunk framing removed, content-encoding untouched)
    pieces: list[tuple[float, bytes]] = field(default_factory=list)  # (seconds since send, bytes)
    complete: bool = False
    disconnected_early: bool = False

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def build_request(method: str, path: str, body: bytes, headers: list[tuple[str, str]] | None = None, host: str = "127.0.0.1") -> bytes:
    hs = [("host", host), ("content-length", str(len(body)))] + list(headers or [])
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
    return head.encode("latin-1") + body


def request(
    port: int,
    raw_request: bytes,
    *,
    on_piece: Callable[[bytes, Response], bool | None] | None = None,
    timeout: float = 20.0,
) -> Response:
    """Send ``raw_request``; ``on_piece`` returning True hangs up right there (client disconnect)."""
    resp = Response()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        start = time.monotonic()
        sock.sendall(raw_request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return resp
            buf += data
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        resp.status = int(lines[0].split(" ")[1])
        resp.headers = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:] if ":" in ln]  # type: ignore[misc]
        chunked = (resp.header("transfer-encoding") or "").lower() == "chunked"
        length = resp.header("content-length")

        def deliver(piece: bytes) -> bool:
            resp.pieces.append((time.monotonic() - start, piece))
            resp.body += piece
            if on_piece is not None and on_piece(piece, resp):
                resp.disconnected_early = True
                return True
            return False

        if chunked:
            while True:
                while b"\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return resp
                    buf += data
                size_line, buf = buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(buf) < size + 2:
                    data = sock.recv(65536)
                    if not data:
                        return resp
                    buf += data
                piece, buf = buf[:size], buf[size + 2 :]
                if size == 0:
                    resp.complete = True
                    return resp
                if deliver(piece):
                    return resp
        remaining = int(length) if length is not None else None
        if buf and deliver(buf):
            return resp
        got = len(buf)
        while remaining is None or got < remaining:
            data = sock.recv(65536)
            if not data:
                break
            got += len(data)
            if deliver(data):
                return resp
        resp.complete = remaining is None or got >= remaining
        return resp
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
