"""What every dialect tracker reports, and the contract the stream tap relies on.

A tracker sees one response: either raw SSE frames one by one (``feed_frame``) or a whole
buffered body (``feed_body``). It must be cheap on frames that carry nothing (text deltas) and it
must never raise: malformed input leaves fields unset instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenpak_mitm.core.observe.sse import SSEParser, parse_event
from tokenpak_mitm.core.observe.usage import ExtraIteration, Usage
from tokenpak_mitm.core.row import UsageSource
from tokenpak_mitm.core.wire import by_fields

__all__ = ["Extract", "Tracker", "body_object", "decode_json", "frame_json", "feed_sse_body", "looks_like_sse"]


@by_fields
@dataclass(slots=True)
class Extract:
    model: str | None = None
    response_id: str | None = None
    stop_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    usage_final: bool = False  # the provider's final usage figure was seen
    terminal_seen: bool = False  # the dialect's end-of-response event arrived
    stream_error: bool = False  # an error event arrived inside a 2xx stream
    error_type: str | None = None
    error_message: str | None = None
    content_frames: int = 0
    # What changes the price besides the tokens, as the provider reported it (lower-cased).
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None
    extras: tuple[ExtraIteration, ...] = ()  # billed iterations outside the top-level totals
    # The provider's own cache-miss verdict (Anthropic cache diagnostics; docs/sessions.md): the
    # reason type it stated, or "none" (diagnostics without a reason: first turn, nothing diverged,
    # or the comparison still running); None: the response carried no diagnostics.
    provider_miss_reason: str | None = None
    provider_missed_tokens: int | None = None  # its estimate of the input tokens after the divergence

    def note_identity(self, obj: dict[str, Any]) -> None:
        """Model, response id and service tier from an object that names them (non-empty strings)."""
        model, rid, tier = obj.get("model"), obj.get("id"), obj.get("service_tier")
        if isinstance(model, str) and model:
            self.model = model
        if isinstance(rid, str) and rid:
            self.response_id = rid
        if isinstance(tier, str) and tier:
            self.service_tier = tier.lower()

    @property
    def usage_source(self) -> UsageSource:
        if self.usage.is_empty():
            return "absent"  # a usage object whose every value was malformed counts nothing
        return "final" if self.usage_final else "partial"


class Tracker(Protocol):
    extract: Extract

    def feed_frame(self, raw: bytes) -> bool:
        """Observe one complete SSE frame; return True when it carries generated content (TTFT)."""

    def feed_body(self, body: bytes, status: int) -> None:
        """Observe a whole non-streamed (or replayed) response body."""


def decode_json(text: str | bytes) -> Any:
    """JSON or None; deep nesting (RecursionError) counts as malformed, never as a crash."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def frame_json(raw: bytes) -> Any:
    """The JSON payload of one SSE frame, or None (no data, or not JSON)."""
    ev = parse_event(raw)
    return None if ev is None else decode_json(ev.data)


def looks_like_sse(body: bytes) -> bool:
    """An event-stream body that reached us buffered (replays, mislabelled content types)."""
    return body.lstrip()[:6].startswith((b"data:", b"event:", b":"))


def feed_sse_body(tracker: Tracker, body: bytes) -> None:
    """Replay a buffered SSE body through a tracker frame by frame, unterminated tail included."""
    parser = SSEParser()
    frames = parser.feed(body)
    more, rest = parser.close()
    for raw in frames + more:
        tracker.feed_frame(raw)
    if rest.strip():
        tracker.feed_frame(rest)


def body_object(tracker: Tracker, body: bytes) -> dict[str, Any] | None:
    """A buffered body's JSON object; an SSE body (mislabelled or replayed) is fed frame by frame
    instead, and anything else is None."""
    if looks_like_sse(body):
        feed_sse_body(tracker, body)
        return None
    obj = decode_json(body)
    return obj if isinstance(obj, dict) else None
