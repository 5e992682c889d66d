"""The one fake upstream: a loopback HTTP/1.1 server whose every byte and pause is scripted.

Tests, the conformance recorder and replayer, the doctor's stream check and the benchmarks need
an upstream whose every byte and every pause is decided by the caller: real provider APIs cannot
be reached here, and mitmproxy's own server replay loses chunk boundaries and timing. A web
framework would hide the framing, hence raw ``asyncio.start_server`` and hand-written HTTP/1.1.

Each request is answered by a :class:`Script` returned from a handler, so one server (and one
proxy in front of it) can serve many tests. What to say is the handler's business:
``testing.provider`` answers all four dialects from the cache simulator, rendering replies with
``testing.dialects``; tests script raw bytes. (``bench/upstream.py`` is a separate process on
purpose, see docs/performance.md, and takes its frames from ``testing.dialects``.)

It runs its own event loop in a background thread, so synchronous tests, asyncio tests and
subprocess proxies can use it alike. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tokenpak_mitm.core.observe.decoders import decode_body

__all__ = ["Step", "Script", "Received", "FakeUpstream", "HttpParseError", "read_request", "sse_script", "HOST"]

HOST = "127.0.0.1"
MAX_HEAD_BYTES = 1 << 20
MAX_DECODED_BODY = 256 * 1024 * 1024


@dataclass
class Step:
    """One write. ``delay`` waits before it; ``wait_for`` blocks until the event is set (or
    ``wait_timeout`` passes), which lets a test prove a frame arrived while upstream was paused
    without any timing assertion."""

    data: bytes
    delay: float = 0.0
    wait_for: threading.Event | None = None
    wait_timeout: float = 10.0
    waited: list[bool] = field(default_factory=list)  # per wait: True if released, False if timed out


@dataclass
class Script:
    """One response. How it ends: normally (terminating chunk); ``reset_after`` aborts with RST
    after that many steps; ``truncate`` closes (FIN) after the steps without the terminating
    chunk, a body cut off; ``raw`` sends exact bytes instead of an HTTP response."""

    status: int = 200
    reason: str = "OK"
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("content-type", "text/event-stream")])
    steps: list[Step] = field(default_factory=list)
    chunked: bool = True
    reset_after: int | None = None  # abort the connection (RST) after this many steps
    truncate: bool = False  # end without the terminating chunk and close the connection
    close: bool = False  # close the connection after the response
    raw: bytes | None = None  # send these exact bytes instead of an HTTP response (garbage tests)


class HttpParseError(Exception):
    """The client sent something that is not HTTP/1.1 we understand."""


@dataclass(frozen=True)
class Received:
    """One request as it arrived; ``body`` is de-chunked but still content-encoded.

    ``path`` is the request target as sent, query included (as mitmproxy's ``Request.path``);
    ``route`` is the path without the query."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    version: str = "HTTP/1.1"

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)

    @property
    def route(self) -> str:
        return self.path.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def json(self) -> Any:
        """The body, Content-Encoding undone (a proxy may forward compressed bodies), as JSON."""
        return json.loads(decode_body(self.body, self.header("content-encoding"), MAX_DECODED_BODY, strict=True))


def sse_script(frames: list[bytes], *, delay: float = 0.0, headers: list[tuple[str, str]] | None = None, **kw: Any) -> Script:
    """A 200 SSE response writing one frame per chunk."""
    base = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
    return Script(headers=base + (headers or []), steps=[Step(f, delay=delay) for f in frames], **kw)


async def read_request(reader: asyncio.StreamReader) -> Received | None:
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
    request = Received(method, target, headers, b"", version)
    if "chunked" in (request.header("transfer-encoding") or "").lower():
        body = await _read_chunked(reader)
    else:
        length = request.header("content-length")
        try:
            body = await reader.readexactly(int(length)) if length else b""
        except ValueError as exc:
            raise HttpParseError(f"bad content-length {length!r}") from exc
    return Received(method, target, headers, body, version)


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


class FakeUpstream:
    """Loopback HTTP/1.1 server: ``handler(received) -> Script`` answers each request.

    ``bad_request(message)`` answers a request that is not HTTP/1.1 we understand (default: drop
    the connection). ``received`` lists every request, ``connections_accepted`` counts connections.
    """

    def __init__(self, handler: Callable[[Received], Script], *, port: int = 0,
                 bad_request: Callable[[str], Script] | None = None) -> None:
        self.handler = handler
        self.bad_request = bad_request
        self.received: list[Received] = []
        self.connections_accepted = 0
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> FakeUpstream:
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._server is None:
            raise RuntimeError("fake upstream did not start")
        return self

    def stop(self) -> None:
        """Close the listener and cancel open connections first, so no task dies with the loop."""
        if self._loop is None or not self._loop.is_running():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(5)
        except Exception:
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._serve, HOST, self.port, limit=MAX_HEAD_BYTES)
            self.port = self._server.sockets[0].getsockname()[1]

        try:
            loop.run_until_complete(boot())
        finally:
            self._ready.set()  # start() reports a failed bind instead of waiting it out
        try:
            loop.run_forever()
        finally:
            if self._server is not None:
                self._server.close()
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        try:
            while True:
                try:
                    req = await read_request(reader)
                except HttpParseError as exc:
                    if self.bad_request is not None:
                        await self._respond(self.bad_request(str(exc)), writer)
                    break
                if req is None:
                    break
                self.received.append(req)
                script = self.handler(req)
                if not await self._respond(script, writer):
                    return
                if script.close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    async def _respond(self, s: Script, writer: asyncio.StreamWriter) -> bool:
        """Write one response; returns whether the connection may serve another request."""
        if s.raw is not None:
            writer.write(s.raw)
            await writer.drain()
            writer.close()
            return False
        head = [f"HTTP/1.1 {s.status} {s.reason}"]
        head += [f"{k}: {v}" for k, v in s.headers]
        if s.chunked:
            head.append("transfer-encoding: chunked")
        else:
            head.append(f"content-length: {sum(len(st.data) for st in s.steps)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        for i, step in enumerate(s.steps):
            if s.reset_after is not None and i >= s.reset_after:
                _abort(writer)
                return False
            if step.delay:
                await asyncio.sleep(step.delay)
            if step.wait_for is not None:
                released = await asyncio.get_running_loop().run_in_executor(None, step.wait_for.wait, step.wait_timeout)
                step.waited.append(bool(released))
            if not step.data:
                continue
            writer.write(b"%x\r\n%s\r\n" % (len(step.data), step.data) if s.chunked else step.data)
            await writer.drain()
        if s.reset_after is not None and s.reset_after >= len(s.steps):
            _abort(writer)
            return False
        if s.truncate:  # no terminating chunk: the body is cut off
            writer.transport.abort()
            return False
        if s.chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), the way a crashed upstream or a load balancer reset looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
