"""Our dialects' final usage mapping against genai-prices' own usage extractors (item 9 of issue 12).

genai-prices ships one extractor per provider API for a *final* response object (inclusive input
counts). It does not merge a stream (Anthropic's message_start + message_delta, the OpenAI chunk
that carries usage, Gemini's last chunk), so the dialects keep their own merging; what they map
from the final object must agree with genai-prices on every recorded flow in the corpus. We keep
our extraction in the hot path (it validates each count and runs per frame); this test is the
oracle that says when a genai-prices update or a dialect change makes them disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from genai_prices import extract_usage

from tokenpak_mitm.conformance.flowfile import find_flow_files, load_recording
from tokenpak_mitm.core.observe.sse import SSEParser, parse_event
from tokenpak_mitm.core.observe.tap import StreamTap
from tokenpak_mitm.core.observe.tracker import looks_like_sse
from tokenpak_mitm.core.observe.usage import Usage
from tokenpak_mitm.core.routes import classify, tracker_for

FLOWS = Path(__file__).resolve().parents[1] / "flows"
PROVIDER = {"anthropic": ("anthropic", "default"), "openai_chat": ("openai", "chat"),
            "openai_responses": ("openai", "responses"), "gemini": ("google", "default")}


def _events(body: bytes) -> list[dict[str, Any]]:
    parser = SSEParser()
    frames = parser.feed(body) + parser.close()[0]
    out = []
    for raw in frames:
        ev = parse_event(raw)
        try:
            obj = json.loads(ev.data) if ev.data and ev.data != "[DONE]" else None
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            out.append(obj)
    return out


def final_object(dialect: str, body: bytes) -> dict[str, Any] | None:
    """The one response object genai-prices reads: the body, or the stream folded the provider's way."""
    if not looks_like_sse(body):
        obj = json.loads(body)
        if isinstance(obj, list):  # Gemini's streamed JSON array: the last element carries the totals
            obj = obj[-1] if obj else None
        return obj if isinstance(obj, dict) else None
    events = _events(body)
    if dialect == "anthropic":
        start = next((e["message"] for e in events if e.get("type") == "message_start"), None)
        if start is None:
            return None
        usage = dict(start.get("usage") or {})
        for e in events:
            if e.get("type") == "message_delta":
                usage.update({k: v for k, v in (e.get("usage") or {}).items() if v is not None})
        return {**start, "usage": usage}
    if dialect == "openai_chat":
        return next((e for e in reversed(events) if e.get("usage")), None)
    if dialect == "openai_responses":
        return next((e["response"] for e in reversed(events) if e.get("type", "").startswith("response.") and isinstance(e.get("response"), dict) and e["response"].get("usage")), None)
    return next((e for e in reversed(events) if e.get("usageMetadata")), None)


def ours(dialect_route: Any, body: bytes, status: int) -> Usage:
    tracker = tracker_for(dialect_route)
    assert tracker is not None
    if looks_like_sse(body):
        StreamTap(tracker, sse=True).feed_buffered(body)
    else:
        tracker.feed_body(body, status)
    return tracker.extract.usage


def cases() -> list[Any]:
    out = []
    for path in find_flow_files([FLOWS]):
        rec = load_recording(path)
        resp = rec.flow.response
        if resp is None or resp.status_code >= 400:
            continue
        route = classify(rec.method, rec.flow.request.pretty_host, rec.request_path, any_host=True)
        body = resp.get_content(strict=False) or b""
        if route is None or not body or rec.end_path != "completed":
            continue
        out.append(pytest.param(route, body, resp.status_code, id=path.stem))
    return out


@pytest.mark.parametrize(("route", "body", "status"), cases())
def test_final_usage_agrees_with_genai_prices(route: Any, body: bytes, status: int):
    final = final_object(route.dialect, body)
    if final is None or not (final.get("usage") or final.get("usageMetadata")):
        pytest.skip("no final usage object in this flow")
    provider, flavor = PROVIDER[route.dialect]
    theirs = extract_usage(final, provider_id=provider, api_flavor=flavor).usage
    mine = ours(route, body, status)
    read, write = mine.cache_read_tokens or 0, mine.cache_write_tokens or 0
    # genai-prices' input_tokens is inclusive of cache reads and writes; ours is fresh input only.
    assert (theirs.input_tokens or 0) == (mine.input_tokens or 0) + read + write
    assert (theirs.cache_read_tokens or 0) == read
    assert (theirs.cache_write_tokens or 0) == write
    assert (theirs.output_tokens or 0) == (mine.output_tokens or 0)
