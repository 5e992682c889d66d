"""The stream callable installed as ``flow.response.stream``: observes, never changes.

mitmproxy forwards whatever this callable returns, and an exception inside it silently drops the
chunk (or, on the final ``b""`` call, the end of the response). So ``__call__`` returns its input
unchanged on every path, and everything it does is wrapped: a bug here costs telemetry, never
traffic. Per chunk it does O(chunk) work: decode a copy if the body is compressed, split frames,
and let the dialect tracker look at each frame (JSON only for the few frames that matter).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tokenpak_mitm.core.observe.decoders import DecodeError, identity, incremental_decoder
from tokenpak_mitm.core.observe.sse import SSEParser, event_name
from tokenpak_mitm.core.observe.tracker import Tracker

__all__ = ["StreamTap", "observe_buffered_sse", "MAX_PENDING_FRAME"]

logger = logging.getLogger(__name__)

# An unterminated frame larger than this stops the observation (the bytes still flow): a hostile
# or broken upstream must not grow the proxy's memory without bound. Real frames are < 1 MiB.
MAX_PENDING_FRAME = 16 * 1024 * 1024

FrameSink = Callable[[str | None, bytes], None]
REPLAY_PIECE = 16 * 1024  # bytes per piece when a buffered body is observed as if streamed


class StreamTap:
    """Observes one response's bytes for its dialect tracker. Knows nothing of recording or checks:
    those wrap ``flow.response.stream`` or add a frame sink (``add_frame_sink``)."""

    __slots__ = (
        "tracker", "sse", "parser", "decoder", "sinks", "clock",
        "first_byte_at", "first_content_at", "last_byte_at", "wire_bytes", "finished", "failed",
        "_raw_copy", "_raw_cap",
    )

    def __init__(
        self,
        tracker: Tracker,
        *,
        sse: bool,
        content_encoding: str | None = None,
        on_frame: FrameSink | None = None,
        clock: Callable[[], float] = time.time,
        raw_cap: int = 32 * 1024 * 1024,
    ) -> None:
        self.tracker = tracker
        self.sse = sse
        self.parser = SSEParser() if sse else None
        self.decoder = incremental_decoder(content_encoding)
        self.sinks: tuple[FrameSink, ...] = (on_frame,) if on_frame is not None else ()
        self.clock = clock
        self.first_byte_at: float | None = None
        self.first_content_at: float | None = None
        self.last_byte_at: float | None = None
        self.wire_bytes = 0
        self.finished = False  # set by mitmproxy's final b"" call; stays False in replays
        self.failed = False
        # Non-SSE streams (Gemini JSON arrays) are measured from a bounded decoded copy.
        self._raw_copy: bytearray | None = None if sse else bytearray()
        self._raw_cap = raw_cap
        if self.decoder is None:
            logger.warning("tokenpak: unknown content-encoding %r; stream passes through unmeasured", content_encoding)

    def add_frame_sink(self, sink: FrameSink) -> None:
        """Also report each complete frame (event name, raw bytes), in order, to ``sink``."""
        self.sinks = (*self.sinks, sink)

    def __call__(self, data: bytes) -> bytes:
        try:
            if data:
                self._observe(data)
            else:
                self._finish()
        except Exception:  # never let telemetry touch the bytes (see module docstring)
            if not self.failed:
                logger.exception("tokenpak: stream observer failed; bytes pass through unchanged")
            self.failed = True
        return data

    def _observe(self, data: bytes) -> None:
        now = self.clock()
        if self.first_byte_at is None:
            self.first_byte_at = now
        self.last_byte_at = now
        self.wire_bytes += len(data)
        if self.failed or self.decoder is None:
            return
        try:
            plain = data if self.decoder is identity else self.decoder(data)
        except DecodeError as e:  # corrupt, or a bomb past the per-chunk cap: one line, not a traceback
            logger.warning("tokenpak: %s; observation of this stream stops, bytes pass through unchanged", e)
            self.failed = True
            return
        parser = self.parser
        if parser is not None:
            frames = parser.feed(plain)
            if frames:
                self._frames(frames, now)
            elif parser.pending > MAX_PENDING_FRAME:  # only a chunk that completes nothing can grow it
                logger.warning("tokenpak: an SSE frame exceeded %d bytes; observation of this stream stops, bytes pass through", MAX_PENDING_FRAME)
                self.parser = SSEParser()  # drop the buffered frame
                self.failed = True
        elif self._raw_copy is not None and len(self._raw_copy) + len(plain) <= self._raw_cap:
            self._raw_copy += plain

    def _frames(self, frames: list[bytes], now: float) -> None:
        feed = self.tracker.feed_frame
        sinks = self.sinks
        for raw in frames:
            if feed(raw) and self.first_content_at is None:
                self.first_content_at = now
            for sink in sinks:
                sink(event_name(raw), raw)

    def feed_buffered(self, body: bytes) -> None:
        """Observe a whole buffered body (a replayed flow: the callable never ran), then close.

        Fed in wire-sized pieces, so per-chunk limits apply as they do live."""
        view = memoryview(body)
        for pos in range(0, len(view), REPLAY_PIECE):
            self._observe(bytes(view[pos:pos + REPLAY_PIECE]))
        self.close()

    def _finish(self) -> None:
        self.finished = True
        self.close()

    def close(self) -> None:
        """Flush what is pending; safe to call more than once (end of stream, error, replay)."""
        if self.failed or self.decoder is None:
            return
        if self.parser is not None:
            frames, rest = self.parser.close()
            self._frames(frames, self.clock())
            if rest.strip():
                # An unterminated last event is not dispatched per the SSE spec, but its usage or
                # terminal marker is real; the tracker may look (it is not reported as a frame).
                self.tracker.feed_frame(rest)
        elif self._raw_copy is not None:
            self.tracker.feed_body(bytes(self._raw_copy), 200)
            self._raw_copy = None


def observe_buffered_sse(tap: StreamTap, body: bytes) -> None:
    """Feed a whole buffered SSE body (replay, or a stream the callable never saw) through a tap."""
    tap.feed_buffered(body)
