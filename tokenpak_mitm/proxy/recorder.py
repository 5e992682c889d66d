"""``--set tokenpak_record=DIR``: save every LLM flow as a replayable, redacted ``.mitm`` file.

A second addon that builds on ``TokenPak`` through its hooks (``hooks.py``), so its place in the
addon list does not matter. Per flow it keeps what a conformance replay needs and mitmproxy would
lose:

* the streamed response body (mitmproxy keeps none) with each chunk's size and receive offset,
  capped by ``tokenpak_record_max_bytes`` (a note says when it cut): ``RecordingStream`` wraps the
  tap in ``flow.response.stream`` when TokenPak fires ``tokenpak_stream``;
* the client's original request bytes and the inserted spans, next to the request actually sent
  (``tokenpak_outbound``: the one place both are known);
* how the exchange ended: completed, client disconnect or upstream reset, and after how many bytes.

Which flows: those the TokenPak addon tracked, i.e. those it fires ``tokenpak_row`` for (once per
request, after its own ``response``/``error`` work, so the timings it stashed are there).

Writing: ``response``/``error`` only take a snapshot (``get_state``: dict copies, bytes shared)
and queue it; a writer thread redacts, serializes and writes one file per flow (temp name,
0600, then rename). Why a thread and not a buffered file: redaction is regex work over up to
the size cap, and mitmproxy runs every connection on one event-loop thread and sends the end of
a streamed response only after the ``response`` hook returns, so neither may wait for it.
Memory stays bounded: queued snapshots are capped in total bytes; past that a flow is dropped
with a warning rather than buffered.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http, io
from mitmproxy.addonmanager import Loader

from tokenpak_mitm.core.account.telemetry import terminal_state_for_error
from tokenpak_mitm.core.observe.tap import StreamTap
from tokenpak_mitm.proxy import hooks
from tokenpak_mitm.proxy.addon import closed_by
from tokenpak_mitm.proxy.options import parse_size
from tokenpak_mitm.proxy.record_redact import redact_recorded_flow
from tokenpak_mitm.proxy.startup import guard_configure

__all__ = ["Recorder", "RecordingStream", "RECORD_KEY", "FORMAT", "DEFAULT_MAX_BYTES"]

logger = logging.getLogger("tokenpak.recorder")

RECORD_KEY = "tokenpak_record"  # flow.metadata key of what this module adds
FORMAT = 1
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
_QUEUE_BUDGET_FLOWS = 8  # queued snapshots may hold this many capped flows' worth of bytes


class RecordingStream:
    """Wraps a stream callable: returns exactly what it returns, and keeps a bounded copy of the
    wire bytes with each chunk's size and offset (ms after the first chunk)."""

    __slots__ = ("inner", "cap", "clock", "body", "chunks", "truncated", "wire_bytes", "_first_at")

    def __init__(self, inner: Callable[[bytes], Iterable[bytes] | bytes], cap: int, clock: Callable[[], float] = time.time) -> None:
        self.inner = inner
        self.cap = cap
        self.clock = clock
        self.body = bytearray()
        self.chunks: list[tuple[float, int]] = []
        self.truncated = False
        self.wire_bytes = 0
        self._first_at: float | None = None

    def __call__(self, data: bytes) -> Iterable[bytes] | bytes:
        try:
            if data:
                self._keep(data)
        except Exception:  # recording must never touch the bytes
            logger.exception("tokenpak: recording a chunk failed; bytes pass through unchanged")
        return self.inner(data)

    def _keep(self, data: bytes) -> None:
        now = self.clock()
        if self._first_at is None:
            self._first_at = now
        self.wire_bytes += len(data)
        if len(self.body) + len(data) > self.cap:
            self.truncated = True
            return
        self.chunks.append((round((now - self._first_at) * 1000.0, 3), len(data)))
        self.body += data


class _Writer:
    """One thread: redact, serialize, write. ``submit`` never blocks."""

    def __init__(self, budget: int) -> None:
        self._queue: queue.SimpleQueue[tuple[Path, dict[str, Any], int] | None] = queue.SimpleQueue()
        self._budget = budget
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tokenpak-recorder", daemon=True)
        self._thread.start()
        self.written: list[Path] = []
        self.dropped = 0
        self.secret_headers: frozenset[str] = frozenset()  # user-declared secret header names

    def submit(self, path: Path, state: dict[str, Any], size: int) -> bool:
        with self._lock:
            if self._pending + size > self._budget:
                self.dropped += 1
                return False
            self._pending += size
        self._queue.put((path, state, size))
        return True

    def close(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            path, state, size = item
            try:
                self._write(path, state)
            except Exception:
                logger.exception("tokenpak: could not record a flow to %s", path)
            finally:
                with self._lock:
                    self._pending -= size

    def _write(self, path: Path, state: dict[str, Any]) -> None:
        f = http.HTTPFlow.from_state(state)
        assert isinstance(f, http.HTTPFlow)
        record = f.metadata[RECORD_KEY]
        record["redactions"] = redact_recorded_flow(f, record, self.secret_headers)
        buf = BytesIO()
        io.FlowWriter(buf).add(f)
        data = buf.getvalue()
        from tokenpak_mitm.core.secret_scan import scan_bytes  # belt and braces: a second opinion

        leaks = scan_bytes(data, path.name, canaries=())
        if leaks:
            logger.error("tokenpak: not recording %s: a key-shaped string survived redaction (%s)", path.name, leaks[0].kind)
            return
        tmp = path.with_name(path.name + ".part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fo:
            fo.write(data)
        os.replace(tmp, path)
        self.written.append(path)


class Recorder:
    """Saves tracked LLM flows as redacted flow files readable by ``mitmdump -nr`` and mitmweb."""

    def __init__(self) -> None:
        self.is_running = False
        self.directory: Path | None = None
        self.max_bytes = DEFAULT_MAX_BYTES
        self._writer: _Writer | None = None
        self._client_heads: weakref.WeakKeyDictionary[http.HTTPFlow, dict[str, Any]] = weakref.WeakKeyDictionary()
        self._client_bodies: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[bytes, list[tuple[int, bytes]]]] = weakref.WeakKeyDictionary()
        self._done: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()
        self._streams: weakref.WeakKeyDictionary[http.HTTPFlow, tuple[RecordingStream, StreamTap]] = weakref.WeakKeyDictionary()

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self, loader: Loader) -> None:
        loader.add_option("tokenpak_record", str, "", "Directory to save every LLM flow in (redacted .mitm files, for conformance replay). Empty: off.")
        loader.add_option("tokenpak_record_max_bytes", str, str(DEFAULT_MAX_BYTES), "Per-flow cap on recorded response bytes (e.g. 8388608, 512k, 8m); the flow notes when it was cut.")

    @staticmethod
    def check_options(opts: Any, updated: Collection[str] | None = None) -> None:
        """Raise ``OptionsError`` for a bad value of the options in ``updated`` (None: all; pure,
        `startup.preflight` runs it before mitmdump starts)."""
        if updated is not None and "tokenpak_record_max_bytes" not in updated:
            return
        try:
            parse_size("tokenpak_record_max_bytes", opts.tokenpak_record_max_bytes, minimum=1024)
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from e

    @guard_configure
    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        self.check_options(opts, updated)
        if "tokenpak_record_max_bytes" in updated:
            self.max_bytes = parse_size("tokenpak_record_max_bytes", opts.tokenpak_record_max_bytes, minimum=1024)
        if "tokenpak_record" in updated:
            self._set_directory(opts.tokenpak_record)
        if self._writer is not None:  # the option belongs to TokenPak; absent when used alone
            self._writer.secret_headers = frozenset(n.lower() for n in getattr(opts, "tokenpak_secret_headers", ()) or ())

    def _set_directory(self, value: str) -> None:
        if not value:
            self.directory = None
            return
        path = Path(value).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise exceptions.OptionsError(f"tokenpak_record: cannot create {path}: {e}") from e
        if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
            raise exceptions.OptionsError(f"tokenpak_record: {path} is not a writable directory")
        self.directory = path
        if self._writer is None:
            self._writer = _Writer(budget=self.max_bytes * _QUEUE_BUDGET_FLOWS)

    def running(self) -> None:
        self.is_running = True
        if self.directory is not None:
            logger.info("tokenpak: recording LLM flows to %s (cap %d bytes per flow)", self.directory, self.max_bytes)

    def done(self) -> None:
        if self._writer is not None:
            self._writer.close()
            if self._writer.dropped:
                logger.warning("tokenpak: %d flow(s) not recorded (recorder queue full)", self._writer.dropped)

    # -- hooks ----------------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.directory is None:
            return
        # The client's header block as mitmproxy parsed it. In reverse mode Host is already the
        # upstream authority here (mitmproxy rewrites it before any hook), so it is not the client's.
        req = flow.request
        self._client_heads[flow] = {"headers": [[k, v] for k, v in req.headers.fields], "path": req.path, "method": req.method, "http_version": req.http_version}
        hooks.want(flow, hooks.OUTBOUND, hooks.STREAM, hooks.ROW)

    def tokenpak_outbound(self, flow: http.HTTPFlow, client_body: bytes, spans: list[tuple[int, bytes]]) -> None:
        if self.directory is not None:
            self._client_bodies[flow] = (bytes(client_body), list(spans))

    def tokenpak_stream(self, flow: http.HTTPFlow, tap: StreamTap) -> None:
        if self.directory is None or flow.response is None or not callable(flow.response.stream):
            return
        recording = RecordingStream(flow.response.stream, self.max_bytes)
        flow.response.stream = recording
        self._streams[flow] = (recording, tap)

    def tokenpak_row(self, flow: http.HTTPFlow, slot: hooks.RowSlot) -> None:
        self._capture(flow)

    # -- capture --------------------------------------------------------------------------------
    def _capture(self, flow: http.HTTPFlow) -> None:
        if self.directory is None or self._writer is None or flow in self._done:
            return
        self._done.add(flow)
        try:
            state, size = self._snapshot(flow)
        except Exception:
            logger.exception("tokenpak: could not snapshot a flow for recording")
            return
        path = self.directory / _file_name(flow)
        if not self._writer.submit(path, state, size):
            logger.warning("tokenpak: recorder queue full; %s not recorded", path.name)

    def _snapshot(self, flow: http.HTTPFlow) -> tuple[dict[str, Any], int]:
        state = flow.get_state()
        state["backup"] = None  # an intercept backup would hold the unredacted original
        state["metadata"].pop(hooks.WANT_KEY, None)  # this run's wiring, not part of the exchange
        record: dict[str, Any] = {"format": FORMAT, "cap": self.max_bytes}
        head = self._client_heads.pop(flow, None) or {}
        earlier = flow.metadata.get(RECORD_KEY)
        if isinstance(earlier, dict) and isinstance(earlier.get("client"), dict) and earlier["client"].get("headers") is not None:
            head = {k: v for k, v in earlier["client"].items() if k in ("headers", "path", "method", "http_version")}
        client_body, spans = self._client_body(flow)
        request_truncated = client_body is not None and len(client_body) > self.max_bytes
        if client_body is not None and request_truncated:
            client_body = client_body[: self.max_bytes]
            state["request"]["content"] = (state["request"]["content"] or b"")[: self.max_bytes]
        record["client"] = {**head, "body": client_body, "request_truncated": request_truncated}
        record["spans"] = [[o, t] for o, t in spans]
        response, sent = self._response_record(flow, state)
        record["response"] = response
        record["end"] = _ending(flow, sent)
        state["metadata"][RECORD_KEY] = record
        response_bytes = len(state["response"]["content"] or b"") if state.get("response") else 0
        return state, 2 * len(client_body or b"") + response_bytes

    def _client_body(self, flow: http.HTTPFlow) -> tuple[bytes | None, list[tuple[int, bytes]]]:
        seen = self._client_bodies.pop(flow, None)
        if seen is not None:
            return seen
        earlier = flow.metadata.get(RECORD_KEY)
        if isinstance(earlier, dict) and isinstance(earlier.get("client"), dict) and earlier["client"].get("body") is not None:
            # A recorded flow replayed with -nr: the addon reuses its decisions and inserts
            # nothing, so the original client bytes and spans are the recording's own.
            return earlier["client"]["body"], [(int(o), bytes(t)) for o, t in earlier.get("spans") or []]
        # The addon reported no insertion (not an inserting route): the request went upstream
        # as the client sent it.
        return flow.request.raw_content, []

    def _response_record(self, flow: http.HTTPFlow, state: dict[str, Any]) -> tuple[dict[str, Any], int]:
        resp = flow.response
        if resp is None:
            return {"streamed": False, "chunks": [], "truncated": False}, 0
        streamed = self._streams.pop(flow, None)
        earlier = flow.metadata.get(RECORD_KEY)
        if not flow.live and resp.raw_content is not None and isinstance(earlier, dict):
            # Re-recording a loaded flow (-nr): the tap never saw the wire; keep the recording's own.
            state["response"]["content"] = resp.raw_content
            return {**(earlier.get("response") or {})}, len(resp.raw_content)
        if streamed is not None:
            recording, _ = streamed
            body = bytes(recording.body)
            chunks = [[ms, n] for ms, n in recording.chunks]
            truncated = recording.truncated
            sent = recording.wire_bytes
        else:
            raw = resp.raw_content or b""
            truncated = len(raw) > self.max_bytes
            body = raw[: self.max_bytes]
            chunks = [[0.0, len(body)]] if body else []
            sent = len(raw)
        state["response"]["content"] = body
        meta = flow.metadata.get("tokenpak") or {}
        return {
            "streamed": streamed is not None,
            "chunks": chunks,
            "truncated": truncated,
            "bytes": sent,
            "ttfb_ms": meta.get("ttfb_ms"),
        }, sent


def _ending(flow: http.HTTPFlow, sent: int) -> dict[str, Any]:
    """How the exchange ended, in the words the replayer acts on."""
    if flow.error is None:
        return {"path": "completed"}
    msg = flow.error.msg
    path = terminal_state_for_error(msg, closed_by(flow))
    if path == "upstream_disconnected" and flow.response is None:
        where = "before_response"
    else:
        where = "mid_response"
    return {"path": path, "where": where, "after_bytes": sent, "error": msg}


_SLUG = re.compile(r"[^A-Za-z0-9]+")


def _file_name(flow: http.HTTPFlow) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(flow.request.timestamp_start))
    slug = _SLUG.sub("-", flow.request.path.split("?", 1)[0]).strip("-")[-40:] or "root"
    return f"{stamp}-{slug}-{flow.id}.mitm"  # the full id: names never collide
