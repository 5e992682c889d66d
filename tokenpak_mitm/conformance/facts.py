"""What the provider said, read straight from recorded frames and bodies (for I7 and I9).

Independent of the dialect trackers on purpose: these are the few facts a checker needs
(cache totals, error objects), taken the most literal way the protocol docs allow, so a tracker
that merges usage wrongly or misses an error event disagrees with them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenpak_mitm.conformance.wire import frame_data, frame_json

__all__ = ["CacheTotals", "stream_cache_totals", "stream_errors", "stream_terminated", "body_error", "error_type"]


@dataclass(frozen=True, slots=True)
class CacheTotals:
    cache_read: int | None
    cache_write: int | None = None  # only Anthropic reports writes in a stream
    input: int | None = None  # Anthropic fresh input (excludes cache), for attribution context


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def stream_cache_totals(dialect: str, frames: list[bytes]) -> CacheTotals | None:
    """The final cache figures a stream reported, or None when it reported no usage at all."""
    objs = [o for o in (frame_json(f) for f in frames) if isinstance(o, dict)]
    if dialect == "anthropic":
        merged: dict[str, int] = {}
        seen = False
        for obj in objs:
            usage = None
            if obj.get("type") == "message_start" and isinstance(obj.get("message"), dict):
                usage = obj["message"].get("usage")
            elif obj.get("type") == "message_delta":
                usage = obj.get("usage")  # cumulative: overrides field by field
            if isinstance(usage, dict):
                seen = True
                for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
                    if _int(usage.get(key)) is not None:
                        merged[key] = usage[key]
        if not seen:
            return None
        return CacheTotals(merged.get("cache_read_input_tokens"), merged.get("cache_creation_input_tokens"), merged.get("input_tokens"))
    if dialect == "openai_chat":
        last = next((o["usage"] for o in reversed(objs) if isinstance(o.get("usage"), dict)), None)
        if last is None:
            return None
        details = last.get("prompt_tokens_details")
        return CacheTotals(_int(details.get("cached_tokens")) if isinstance(details, dict) else None)
    if dialect == "openai_responses":
        for obj in reversed(objs):
            resp = obj.get("response")
            if obj.get("type") in ("response.completed", "response.incomplete", "response.failed") and isinstance(resp, dict):
                usage = resp.get("usage")
                if not isinstance(usage, dict):
                    return None
                details = usage.get("input_tokens_details")
                return CacheTotals(_int(details.get("cached_tokens")) if isinstance(details, dict) else None)
        return None
    if dialect == "gemini":
        last = next((o["usageMetadata"] for o in reversed(objs) if isinstance(o.get("usageMetadata"), dict)), None)
        if last is None:
            return None
        return CacheTotals(_int(last.get("cachedContentTokenCount", 0)))  # proto3: absent means 0
    return None


def stream_errors(dialect: str, frames: list[bytes]) -> list[dict[str, Any]]:
    """Error objects carried by frames of a 2xx stream, in order (as the provider sent them)."""
    out: list[dict[str, Any]] = []
    for frame in frames:
        event, _ = frame_data(frame)
        obj = frame_json(frame)
        if not isinstance(obj, dict):
            continue
        kind = obj.get("type")
        if (dialect == "anthropic" and (kind == "error" or event == "error")) or (dialect == "openai_responses" and (kind in ("error", "response.failed") or event == "error")) or (dialect in ("openai_chat", "gemini") and isinstance(obj.get("error"), dict)):
            out.append(obj)
    return out


def stream_terminated(dialect: str, frames: list[bytes]) -> bool:
    """Whether these frames include the dialect's end-of-response event: ``message_stop``,
    ``[DONE]``, a terminal ``response.*`` event, a Gemini candidate with a ``finishReason``."""
    for frame in frames:
        event, data = frame_data(frame)
        if dialect == "openai_chat" and data.strip() == "[DONE]":
            return True
        obj = frame_json(frame)
        if not isinstance(obj, dict):
            continue
        kind = obj.get("type")
        if dialect == "anthropic" and (kind == "message_stop" or event == "message_stop"):
            return True
        if dialect == "openai_responses" and kind in ("response.completed", "response.incomplete", "response.failed"):
            return True
        if dialect == "gemini":
            candidates = obj.get("candidates")
            if isinstance(candidates, list) and any(isinstance(c, dict) and c.get("finishReason") for c in candidates):
                return True
    return False


def body_error(body: bytes) -> Any:
    """An error body as JSON, or None (a gateway's HTML page, an empty body)."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def error_type(dialect: str, obj: Any) -> str | None:
    """The error name a row should carry for this provider error object (None: not derivable)."""
    if isinstance(obj, list):  # Gemini's JSON-array error form
        obj = obj[0] if obj else None
    if not isinstance(obj, dict):
        return None
    if dialect == "openai_responses" and obj.get("type") == "response.failed":
        resp = obj.get("response")
        obj = {"error": resp.get("error")} if isinstance(resp, dict) else {}
    err = obj.get("error")
    if dialect == "openai_responses" and obj.get("type") == "error" and not isinstance(err, dict):
        err = obj  # the flat SDK shape: code/message at the top
    if not isinstance(err, dict):
        return None
    if dialect == "anthropic":
        kind = err.get("type")
        return kind if isinstance(kind, str) else None
    if dialect == "gemini":
        status = err.get("status")
        return status if isinstance(status, str) else None
    for key in ("code", "type"):  # OpenAI: the specific code says more than the generic type
        value = err.get(key)
        if isinstance(value, str) and value:
            return value
    return None
