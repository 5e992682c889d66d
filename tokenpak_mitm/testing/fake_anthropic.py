"""A loopback Anthropic-compatible upstream answering from `CacheSimulator`.

Why: end-to-end tests of the proxy need an upstream whose usage figures are exact
and whose streamed bytes follow the real wire format (protocols.md §2), with
control over framing (chunk sizes, delays, mid-stream faults) that a web
framework would hide. Hence raw ``asyncio.start_server`` and hand-written HTTP/1.1.

Serves ``POST /v1/messages`` (JSON or SSE when ``"stream": true``) and
``POST /v1/messages/count_tokens``; query strings (``?beta=true``) are ignored.
Binds to 127.0.0.1 only. Use it as ``async with FakeAnthropic() as fa: fa.url``,
from synchronous code with ``fake_anthropic_in_thread()``, or from a shell with
``python -m tokenpak_mitm.testing.fake_anthropic --port 8899``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import secrets
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from tokenpak_mitm.decoders import decode_body
from tokenpak_mitm.testing.cache_sim import CacheSimulator, SimResult, error_body

HOST = "127.0.0.1"
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
MAX_HEAD_BYTES = 1 << 20
StreamFault = Literal["overloaded", "disconnect"]

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error", 529: "Overloaded"}
ERROR_TYPES = {  # protocols.md §2.5
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}


class HttpParseError(Exception):
    """The client sent something that is not HTTP/1.1 we understand."""


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as it arrived; ``body`` is de-chunked but still content-encoded."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def json(self) -> Any:
        return json.loads(decode_content(self.body, self.header("content-encoding")))


def decode_content(body: bytes, content_encoding: str | None) -> bytes:
    """Undo a request ``Content-Encoding`` (a proxy may forward compressed bodies)."""
    return decode_body(body, content_encoding, 256 * 1024 * 1024, strict=True)


async def read_request(reader: asyncio.StreamReader) -> ReceivedRequest | None:
    """Read one HTTP/1.1 request; None when the client closed between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise HttpParseError("connection closed inside the request head") from exc
    except asyncio.LimitOverrunError as exc:
        raise HttpParseError("request head too large") from exc
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError as exc:
        raise HttpParseError(f"bad request line {lines[0]!r}") from exc
    headers = []
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpParseError(f"bad header line {line!r}")
            headers.append((name.strip(), value.strip()))
    request = ReceivedRequest(method, target, version, tuple(headers), b"")
    transfer_encoding = (request.header("transfer-encoding") or "").lower()
    if "chunked" in transfer_encoding:
        body = await _read_chunked(reader)
    else:
        length = request.header("content-length")
        try:
            body = await reader.readexactly(int(length)) if length else b""
        except ValueError as exc:
            raise HttpParseError(f"bad content-length {length!r}") from exc
    return ReceivedRequest(method, target, version, tuple(headers), body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise HttpParseError(f"bad chunk size {size_line!r}") from exc
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # skip trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpParseError("chunk not followed by CRLF")


# ---------------------------------------------------------------- wire format


def sse_frame(event: str, data: dict[str, Any]) -> bytes:
    """One SSE event as the API sends it: compact JSON, except ping (see §2.4)."""
    text = '{"type": "ping"}' if event == "ping" else json.dumps(data, separators=(",", ":"))
    return f"event: {event}\ndata: {text}\n\n".encode()


def reply_text(number: int) -> str:
    return f"Simulated reply {number} from the fake Anthropic upstream."


def split_text(text: str, pieces: int) -> list[str]:
    """Cut text into `pieces` non-empty deltas (fewer if the text is short)."""
    pieces = max(1, min(pieces, len(text)))
    step = -(-len(text) // pieces)
    return [text[start:start + step] for start in range(0, len(text), step)]


def message_json(message_id: str, model: str, result: SimResult, text: str) -> dict[str, Any]:
    """Non-streamed Message object."""
    content = [{"type": "text", "text": text}] if result.usage["output_tokens"] else []
    return {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": result.stop_reason, "stop_sequence": None, "usage": result.usage,
    }


def stream_frames(
    message_id: str, model: str, result: SimResult, text: str, *, text_deltas: int = 3, cumulative_delta_usage: bool = False
) -> list[bytes]:
    """The full event sequence of a streamed Message, one SSE frame per item."""
    start_usage = {**result.usage, "output_tokens": min(1, result.usage["output_tokens"])}
    delta_usage: dict[str, Any] = {"output_tokens": result.usage["output_tokens"]}
    if cumulative_delta_usage:  # newer streams repeat cumulative input/cache counts (§2.3), no 5m/1h split
        delta_usage = {
            key: result.usage[key]
            for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
        }
    start: dict[str, Any] = {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage,
    }
    frames = [
        sse_frame("message_start", {"type": "message_start", "message": start}),
        sse_frame("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        sse_frame("ping", {"type": "ping"}),
    ]
    for piece in split_text(text, text_deltas):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        frames.append(sse_frame("content_block_delta", delta))
    frames += [
        sse_frame("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse_frame("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": result.stop_reason, "stop_sequence": None}, "usage": delta_usage,
        }),
        sse_frame("message_stop", {"type": "message_stop"}),
    ]
    return frames


def _new_id(prefix: str) -> str:
    return f"{prefix}_fake{secrets.token_hex(10)}"


# ---------------------------------------------------------------- server


@dataclass
class _Reply:
    """Writes one HTTP/1.1 response; every method returns whether to keep the connection."""

    writer: asyncio.StreamWriter
    request_id: str
    keep_alive: bool

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
        base = {"date": email.utils.formatdate(usegmt=True), "request-id": self.request_id,
                "connection": "keep-alive" if self.keep_alive else "close"}
        lines += [f"{name}: {value}" for name, value in {**base, **headers}.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def json(self, status: int, body: dict[str, Any]) -> bool:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.writer.write(self._head(status, {"content-type": "application/json", "content-length": str(len(data))}) + data)
        await self.writer.drain()
        return self.keep_alive

    async def error(self, status: int, message: str) -> bool:
        error_type = ERROR_TYPES.get(status, "api_error")
        return await self.json(status, {**error_body(message, error_type), "request_id": self.request_id})

    async def stream(self, frames: list[bytes], fault: StreamFault | None, frame_delay: float, chunk_size: int | None) -> bool:
        """SSE body with chunked transfer encoding, optionally faulted."""
        writer = self.writer
        if fault == "overloaded":  # error replaces everything after the first delta
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            frames = frames[:4] + [sse_frame("error", error)]
        elif fault == "disconnect":
            frames = frames[:-1]
        headers = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
                   "transfer-encoding": "chunked"}
        writer.write(self._head(200, headers))
        for number, frame in enumerate(frames):
            if number and frame_delay:
                await asyncio.sleep(frame_delay)
            size = chunk_size or len(frame)
            for start in range(0, len(frame), size):
                piece = frame[start:start + size]
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            await writer.drain()
        if fault == "disconnect":  # no terminating chunk: the body is cut off
            writer.transport.abort()
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return self.keep_alive


class FakeAnthropic:
    """Loopback upstream; every request is recorded and answered from ``sim``.

    Knobs: ``frame_delay`` seconds between SSE frames; ``sse_chunk_size`` cuts each
    frame into HTTP chunks of that many bytes (None = one chunk per frame);
    ``cumulative_delta_usage`` adds input/cache counts to ``message_delta``.
    One-shot faults: ``next_stream_fault`` ("overloaded" = error event mid-stream,
    "disconnect" = connection dropped before ``message_stop``) and
    ``next_http_error`` (a status such as 429 or 529 with the matching error body).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        sim: CacheSimulator | None = None,
        frame_delay: float = 0.0,
        sse_chunk_size: int | None = None,
        text_deltas: int = 3,
        cumulative_delta_usage: bool = False,
    ) -> None:
        self.port = port
        self.sim = sim if sim is not None else CacheSimulator()
        self.frame_delay = frame_delay
        self.sse_chunk_size = sse_chunk_size
        self.text_deltas = text_deltas
        self.cumulative_delta_usage = cumulative_delta_usage
        self.next_stream_fault: StreamFault | None = None
        self.next_http_error: int | None = None
        self.requests: list[bytes] = []
        self.received: list[ReceivedRequest] = []
        self.results: list[SimResult] = []
        self.connections_accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def start(self) -> FakeAnthropic:
        self._server = await asyncio.start_server(self._serve_connection, HOST, self.port, limit=MAX_HEAD_BYTES)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()  # idle connections then see EOF and end by themselves
        if self._handlers:
            _, busy = await asyncio.wait(list(self._handlers), timeout=1.0)
            for task in busy:  # e.g. sleeping between slow SSE frames
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeAnthropic:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while (request := await read_request(reader)) is not None:
                if not await self._respond(request, writer):
                    break
        except HttpParseError as exc:
            await _Reply(writer, _new_id("req"), keep_alive=False).error(400, str(exc))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # shutdown of a busy connection: nothing left to report
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(task)
            writer.close()

    async def _respond(self, request: ReceivedRequest, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; returns whether the connection stays open."""
        self.received.append(request)
        self.requests.append(request.body)
        reply = _Reply(writer, _new_id("req"), request.keep_alive)
        if request.method != "POST" or request.path not in (MESSAGES_PATH, COUNT_TOKENS_PATH):
            return await reply.error(404, "Not Found")
        try:
            payload = request.json()
        except Exception:  # any decompression or JSON failure is the client's fault
            return await reply.error(400, "There was an error parsing the body")
        if self.next_http_error is not None:
            status, self.next_http_error = self.next_http_error, None
            return await reply.error(status, f"Simulated {ERROR_TYPES.get(status, 'api_error')}")
        if request.path == COUNT_TOKENS_PATH:
            result = self.sim.count_tokens(payload)
        else:
            result = self.sim.handle(payload)
            self.results.append(result)
        if result.error is not None:
            return await reply.json(result.status, {**result.error, "request_id": reply.request_id})
        if request.path == COUNT_TOKENS_PATH:
            return await reply.json(200, result.usage)
        message_id, text = _new_id("msg"), reply_text(len(self.results))
        if not payload.get("stream"):
            return await reply.json(200, message_json(message_id, payload["model"], result, text))
        frames = stream_frames(
            message_id, payload["model"], result, text,
            text_deltas=self.text_deltas, cumulative_delta_usage=self.cumulative_delta_usage,
        )
        fault, self.next_stream_fault = self.next_stream_fault, None
        return await reply.stream(frames, fault, self.frame_delay, self.sse_chunk_size)


@contextlib.contextmanager
def fake_anthropic_in_thread(**options: Any) -> Iterator[FakeAnthropic]:
    """Run a FakeAnthropic on its own event loop thread, for synchronous tests."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-anthropic", daemon=True)
    thread.start()
    fake = FakeAnthropic(**options)
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(timeout=10)
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback Anthropic-compatible upstream backed by the cache simulator.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--frame-delay", type=float, default=0.0, help="seconds between SSE frames")
    parser.add_argument("--sse-chunk-size", type=int, default=None, help="split SSE frames into HTTP chunks of N bytes")
    parser.add_argument("--output-tokens", type=int, default=None, help="output tokens per reply (capped by max_tokens)")
    parser.add_argument("--cumulative-delta-usage", action="store_true", help="repeat input/cache counts in message_delta")
    args = parser.parse_args(argv)
    sim = CacheSimulator() if args.output_tokens is None else CacheSimulator(output_tokens=args.output_tokens)

    async def serve() -> None:
        async with FakeAnthropic(
            port=args.port, sim=sim, frame_delay=args.frame_delay, sse_chunk_size=args.sse_chunk_size,
            cumulative_delta_usage=args.cumulative_delta_usage,
        ) as fake:
            print(fake.url, flush=True)
            print("fake Anthropic upstream running; Ctrl-C to stop", file=sys.stderr, flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
