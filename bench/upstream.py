"""A fast loopback Anthropic-like upstream, run as its own process: ``python -m bench.upstream``.

Why not ``tokenpak_mitm.sim.upstream.FakeUpstream``: that one runs in a thread of the
caller, so the benchmark client and the upstream would share one GIL, and it uses asyncio
streams with one ``drain`` per write. Here a bare ``asyncio.Protocol`` in a separate process
answers from precomputed bytes; the client, the proxy and the upstream each get their own
interpreter, so on the 2-core box the proxy competes only for CPU, never for a lock. The bytes
themselves come from the shared dialect layer (``tokenpak_mitm.sim.replies``, through
``bench.frames``), rendered once before the first request.

The request's query string says what to send (the path must end in ``/v1/messages`` so the
addon classifies it):

* ``mode=json``: a small JSON message. Headers ``x-bench-body-bytes`` / ``x-bench-markers``
  echo the size of the received body and how many ``"cache_control"`` it contained.
* ``mode=stream&frames=N&interval_us=U``: an SSE stream of N realistic frames, one HTTP chunk
  each, every text delta stamped with its CLOCK_MONOTONIC send time; U=0 sends back to back.
* ``mode=bulk&total=BYTES&frame=BYTES``: one huge stream of large text deltas, for memory.

Prints ``PORT <n>`` once listening; exits on SIGTERM/SIGINT or after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from urllib.parse import parse_qs, urlsplit

from bench.frames import big_delta, delta_texts, envelope_head, envelope_tail, json_response, stamped_delta

_JSON = json_response()
_SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
_TEXTS = delta_texts(4096)
_MAX_HEAD = 64 * 1024


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.can_write = asyncio.Event()
        self.can_write.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()  # wake a paused writer so it notices the close and stops

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_HEAD:
                self.transport.close()  # type: ignore[union-attr]
            return
        head = bytes(self.buf[:end]).decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4:end + 4 + length])
        del self.buf[:end + 4 + length]
        query = parse_qs(urlsplit(head.split(" ", 2)[1]).query)
        self._answer(query, body)

    def _answer(self, q: dict[str, list[str]], body: bytes) -> None:
        mode = q.get("mode", ["json"])[0]
        if mode == "json":
            markers = body.count(b'"cache_control"')
            head = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"x-bench-body-bytes: %d\r\nx-bench-markers: %d\r\n\r\n" % (len(_JSON), len(body), markers))
            self.transport.write(head + _JSON)  # type: ignore[union-attr]
            if self.buf:
                self._next_request()
            return
        self.busy = True
        if mode == "stream":
            job = self._stream(int(q.get("frames", ["1000"])[0]), int(q.get("interval_us", ["0"])[0]))
        else:
            job = self._bulk(int(q.get("total", [str(1 << 30)])[0]), int(q.get("frame", ["65536"])[0]))
        asyncio.get_running_loop().create_task(self._run(job))

    async def _run(self, job: object) -> None:
        try:
            await job  # type: ignore[misc]
        finally:
            self.busy = False
        if self.buf and not self.transport.is_closing():  # type: ignore[union-attr]
            self._next_request()

    async def _write(self, data: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        t.write(data)
        if not self.can_write.is_set():
            await self.can_write.wait()
        return not t.is_closing()

    async def _stream(self, frames: int, interval_us: int) -> None:
        head, tail = envelope_head(), envelope_tail(max(0, frames - 6))
        await self._write(_SSE_HEAD + b"".join(_chunk(f) for f in head))
        interval = interval_us / 1e6
        start = time.monotonic()
        for i in range(max(0, frames - 6)):
            if interval:
                wait = start + i * interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            if not await self._write(_chunk(stamped_delta(time.monotonic_ns(), _TEXTS[i % len(_TEXTS)]))):
                return
        await self._write(b"".join(_chunk(f) for f in tail) + b"0\r\n\r\n")

    async def _bulk(self, total: int, frame_bytes: int) -> None:
        unit = _chunk(big_delta(frame_bytes))
        await self._write(_SSE_HEAD + b"".join(_chunk(f) for f in envelope_head()))
        count = max(1, total // len(unit))
        for _ in range(count):
            if not await self._write(unit):
                return
        await self._write(b"".join(_chunk(f) for f in envelope_tail(count)) + b"0\r\n\r\n")


async def _main(port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Conn, "127.0.0.1", port, backlog=256)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except TimeoutError:
        pass
    server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="exit by itself after this long")
    args = ap.parse_args(argv)
    asyncio.run(_main(args.port, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
