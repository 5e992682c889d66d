"""A scriptable loopback HTTP/1.1 upstream with controlled chunk boundaries, pauses and resets.

Tests, the conformance replayer and the benchmarks need an upstream whose every byte and every
pause is decided by the caller: real provider APIs cannot be reached here, and mitmproxy's own
server replay loses chunk boundaries and timing. Each request is answered by a :class:`Script`
returned from a handler, so one server (and one proxy in front of it) can serve many tests.

It runs its own event loop in a background thread, so synchronous tests and subprocess proxies
can use it alike. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenpak_mitm.testing.fake_anthropic import HttpParseError, read_request

__all__ = ["Step", "Script", "Received", "ScriptedUpstream", "sse_script"]


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
    status: int = 200
    reason: str = "OK"
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("content-type", "text/event-stream")])
    steps: list[Step] = field(default_factory=list)
    chunked: bool = True
    reset_after: int | None = None  # abort the connection (RST) after this many steps
    close: bool = False  # close the connection after the response
    raw: bytes | None = None  # send these exact bytes instead of an HTTP response (garbage tests)


@dataclass
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def sse_script(frames: list[bytes], *, delay: float = 0.0, headers: list[tuple[str, str]] | None = None, **kw: object) -> Script:
    """A 200 SSE response writing one frame per chunk."""
    base = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
    return Script(headers=base + (headers or []), steps=[Step(f, delay=delay) for f in frames], **kw)  # type: ignore[arg-type]


class ScriptedUpstream:
    def __init__(self, handler: Callable[[Received], Script]) -> None:
        self.handler = handler
        self.received: list[Received] = []
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScriptedUpstream:
        self._thread = threading.Thread(target=self._run, name="scripted-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted upstream did not start")
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

    def __enter__(self) -> ScriptedUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        loop.run_until_complete(boot())
        try:
            loop.run_forever()
        finally:
            if self._server is not None:
                self._server.close()
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    break
                self.received.append(req)
                script = self.handler(req)
                if not await self._respond(script, writer):
                    return
                if script.close:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, HttpParseError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    async def _respond(self, s: Script, writer: asyncio.StreamWriter) -> bool:
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


async def _read_request(reader: asyncio.StreamReader) -> Received | None:
    """One request, read by the HTTP/1.1 reader the fake Anthropic API uses (one parser for both)."""
    req = await read_request(reader)
    if req is None:
        return None
    return Received(req.method, req.target, list(req.headers), req.body)
