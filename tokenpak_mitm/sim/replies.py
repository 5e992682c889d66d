"""The fake upstream's dialect layer: one reply rendered as each provider sends it.

Why one module: the fake provider (``testing.provider``), the doctor's stream check and the
benchmark's upstream process all need real wire bytes for a reply, and each used to write its own.
Everything here is pure (no I/O, no clock): a :class:`Reply` in, bytes or a JSON object out.

Four dialects (protocols.md and docs/dialects.md describe the wire formats):

* ``anthropic``: Messages, JSON or ``event:``/``data:`` SSE (message_start ... message_stop).
* ``openai_chat``: Chat Completions, JSON or ``data:`` chunks ending in ``data: [DONE]``; the usage
  chunk only when the request asked for it (``stream_options.include_usage``).
* ``openai_responses``: Responses, JSON or typed events ending in ``response.completed``.
* ``gemini``: generateContent JSON, or streamGenerateContent with ``alt=sse`` (CRLF-framed
  ``data:`` chunks carrying running ``usageMetadata``).

``Reply.usage`` is the dialect's own usage object (the cache simulator returns Anthropic's for
Messages and OpenAI's for Chat Completions and Responses), so nothing is lost in a translation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DIALECTS", "Dialect", "Reply", "render_json", "render_frames", "error_json", "sse_event", "sse_data",
    "split_text", "text_delta_affixes",
    "anthropic_message_start", "anthropic_block_start", "anthropic_ping", "anthropic_text_delta", "anthropic_block_stop",
    "anthropic_message_delta", "anthropic_message_stop",
]

Dialect = Literal["anthropic", "openai_chat", "openai_responses", "gemini"]
DIALECTS: tuple[Dialect, ...] = ("anthropic", "openai_chat", "openai_responses", "gemini")
CREATED = 1760000000  # a fixed timestamp: rendered bytes depend only on the Reply


@dataclass(frozen=True)
class Reply:
    """One assistant reply, dialect-neutral except ``usage`` (the dialect's own usage object).

    ``stop``: ``"end_turn"`` or ``"max_tokens"`` (each dialect maps it to its own word).
    ``text_deltas``: how many content deltas a stream cuts ``text`` into.
    ``cumulative_delta_usage`` (Anthropic): ``message_delta`` repeats the input and cache counts.
    ``include_usage`` (Chat Completions): the stream ends with a usage chunk.
    """

    id: str
    model: str
    text: str
    usage: Mapping[str, Any] = field(default_factory=dict)
    stop: str = "end_turn"
    text_deltas: int = 3
    cumulative_delta_usage: bool = False
    include_usage: bool = True
    # Anthropic cache diagnostics: the response's ``diagnostics`` object (``{"cache_miss_reason": ...}``)
    # on the message and on ``message_start``'s message; None: the response carries none.
    diagnostics: Mapping[str, Any] | None = None


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def sse_event(event: str, data: Any, *, nl: str = "\n") -> bytes:
    """One ``event:``/``data:`` frame, compact JSON; a ping is written the way Anthropic writes it."""
    text = '{"type": "ping"}' if event == "ping" else json.dumps(data, separators=(",", ":"))
    return f"event: {event}{nl}data: {text}{nl}{nl}".encode()


def sse_data(data: Any, *, nl: str = "\n") -> bytes:
    """One ``data:``-only frame (OpenAI Chat, Gemini); a str is sent as is (``[DONE]``)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}{nl}{nl}".encode()


def split_text(text: str, pieces: int) -> list[str]:
    """Cut text into `pieces` non-empty deltas (fewer if the text is short)."""
    if not text:
        return []
    pieces = max(1, min(pieces, len(text)))
    step = -(-len(text) // pieces)
    return [text[start:start + step] for start in range(0, len(text), step)]


# ---------------------------------------------------------------- Anthropic Messages


def anthropic_message_start(message_id: str, model: str, usage: Mapping[str, Any], diagnostics: Mapping[str, Any] | None = None) -> bytes:
    start: dict[str, Any] = {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": dict(usage)}
    if diagnostics is not None:
        start["diagnostics"] = dict(diagnostics)
    return sse_event("message_start", {"type": "message_start", "message": start})


def anthropic_block_start(index: int = 0) -> bytes:
    return sse_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})


def anthropic_ping() -> bytes:
    return sse_event("ping", {"type": "ping"})


def anthropic_text_delta(text: str, index: int = 0) -> bytes:
    return sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})


def anthropic_block_stop(index: int = 0) -> bytes:
    return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})


def anthropic_message_delta(stop: str, usage: Mapping[str, Any]) -> bytes:
    return sse_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": dict(usage)})


def anthropic_message_stop() -> bytes:
    return sse_event("message_stop", {"type": "message_stop"})


def _anthropic_json(r: Reply) -> dict[str, Any]:
    content = [{"type": "text", "text": r.text}] if r.usage.get("output_tokens") else []
    body = {"id": r.id, "type": "message", "role": "assistant", "model": r.model, "content": content,
            "stop_reason": r.stop, "stop_sequence": None, "usage": dict(r.usage)}
    if r.diagnostics is not None:
        body["diagnostics"] = dict(r.diagnostics)
    return body


def _anthropic_frames(r: Reply) -> list[bytes]:
    output = r.usage.get("output_tokens", 0)
    delta_usage: dict[str, Any] = {"output_tokens": output}
    if r.cumulative_delta_usage:  # newer streams repeat cumulative input/cache counts (§2.3), no 5m/1h split
        delta_usage = {key: r.usage[key] for key in
                       ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")}
    frames = [anthropic_message_start(r.id, r.model, {**r.usage, "output_tokens": min(1, output)}, r.diagnostics), anthropic_block_start(), anthropic_ping()]
    frames += [anthropic_text_delta(piece) for piece in split_text(r.text, r.text_deltas)]
    return [*frames, anthropic_block_stop(), anthropic_message_delta(r.stop, delta_usage), anthropic_message_stop()]


# ---------------------------------------------------------------- OpenAI Chat Completions


def _finish_reason(r: Reply) -> str:
    return "length" if r.stop == "max_tokens" else "stop"


def _chat_json(r: Reply) -> dict[str, Any]:
    return {"id": r.id, "object": "chat.completion", "created": CREATED, "model": r.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": _finish_reason(r)}],
            "usage": dict(r.usage)}


def _chat_frames(r: Reply) -> list[bytes]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_data({"id": r.id, "object": "chat.completion.chunk", "created": CREATED, "model": r.model, "choices": choices, **extra})

    frames = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    frames += [chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]) for piece in split_text(r.text, r.text_deltas)]
    frames.append(chunk([{"index": 0, "delta": {}, "finish_reason": _finish_reason(r)}]))
    if r.include_usage:
        frames.append(chunk([], usage=dict(r.usage)))
    return [*frames, sse_data("[DONE]")]


# ---------------------------------------------------------------- OpenAI Responses


def _message_item(r: Reply, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"id": f"msg_{r.id}", "type": "message", "status": status, "role": "assistant", "content": content}


def _responses_json(r: Reply, *, status: str = "completed", with_output: bool = True) -> dict[str, Any]:
    return {"id": r.id, "object": "response", "created_at": CREATED, "status": status, "model": r.model,
            "output": [_message_item(r, r.text, "completed")] if with_output else [],
            "usage": dict(r.usage) if status == "completed" else None}


def _responses_frames(r: Reply) -> list[bytes]:
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": _responses_json(r, status="in_progress", with_output=False)}),
        ("response.output_item.added", {"output_index": 0, "item": _message_item(r, "", "in_progress")}),
        ("response.content_part.added", {"item_id": f"msg_{r.id}", "output_index": 0, "content_index": 0,
                                         "part": {"type": "output_text", "text": "", "annotations": []}}),
    ]
    events += [("response.output_text.delta", {"item_id": f"msg_{r.id}", "output_index": 0, "content_index": 0, "delta": piece})
               for piece in split_text(r.text, r.text_deltas)]
    events += [
        ("response.output_text.done", {"item_id": f"msg_{r.id}", "output_index": 0, "content_index": 0, "text": r.text}),
        ("response.output_item.done", {"output_index": 0, "item": _message_item(r, r.text, "completed")}),
        ("response.completed", {"response": _responses_json(r)}),
    ]
    return [sse_event(name, {"type": name, "sequence_number": n, **body}) for n, (name, body) in enumerate(events)]


# ---------------------------------------------------------------- Gemini


def _gemini_chunk(r: Reply, text: str, usage: Mapping[str, Any], finish: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = "MAX_TOKENS" if r.stop == "max_tokens" else "STOP"
    return {"candidates": [candidate], "usageMetadata": dict(usage), "modelVersion": r.model, "responseId": r.id}


def _gemini_json(r: Reply) -> dict[str, Any]:
    return _gemini_chunk(r, r.text, r.usage, True)


def _gemini_frames(r: Reply) -> list[bytes]:
    """Running ``usageMetadata`` on every chunk (prompt counts only until the last one), CRLF framing."""
    pieces = split_text(r.text, r.text_deltas) or [""]
    prompt_only = {k: v for k, v in r.usage.items() if k in ("promptTokenCount", "cachedContentTokenCount")}
    return [sse_data(_gemini_chunk(r, piece, r.usage if n == len(pieces) - 1 else prompt_only, n == len(pieces) - 1), nl="\r\n")
            for n, piece in enumerate(pieces)]


# ---------------------------------------------------------------- dispatch

_JSON = {"anthropic": _anthropic_json, "openai_chat": _chat_json, "openai_responses": _responses_json, "gemini": _gemini_json}
_FRAMES = {"anthropic": _anthropic_frames, "openai_chat": _chat_frames, "openai_responses": _responses_frames, "gemini": _gemini_frames}


def render_json(dialect: Dialect, reply: Reply) -> dict[str, Any]:
    """The non-streamed response object."""
    return _JSON[dialect](reply)


def render_frames(dialect: Dialect, reply: Reply) -> list[bytes]:
    """The streamed response, one SSE frame per item."""
    return _FRAMES[dialect](reply)


ANTHROPIC_ERROR_TYPES = {  # protocols.md §2.5
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                       429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}
_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error_json(dialect: Dialect, status: int, message: str) -> dict[str, Any]:
    """An HTTP error body as the provider writes it (Anthropic's ``request_id`` is the caller's to add)."""
    if dialect == "anthropic":
        return {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}}
    if dialect == "gemini":
        return {"error": {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}
    return {"error": {"message": message, "type": _OPENAI_ERROR_TYPES.get(status, "server_error"), "param": None, "code": None}}


def text_delta_affixes(dialect: Dialect = "anthropic") -> tuple[bytes, bytes]:
    """The bytes before and after the text of one content delta frame, for writers that splice
    JSON-safe text in directly (the benchmark stamps every delta with its send time)."""
    sentinel = "\x00"
    frame = _FRAMES[dialect](Reply(id="x", model="m", text=sentinel, text_deltas=1, usage={}))
    delta = {"anthropic": 3, "openai_chat": 1, "openai_responses": 3, "gemini": 0}[dialect]
    head, _, tail = frame[delta].partition(b"\\u0000")
    return head, tail
