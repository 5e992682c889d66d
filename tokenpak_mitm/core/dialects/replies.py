"""A reply as the simulated provider writes it, in any dialect (pure: a :class:`Reply` in, bytes or
a JSON object out). Each dialect renders it in its own module; the fake upstream
(`sim/provider.py`), the doctor's stream check and the benchmark's upstream use those renderings,
so every wire format is written in one place.

``Reply.usage`` is the dialect's own usage object (the cache simulator returns Anthropic's for
Messages and OpenAI's for Chat Completions and Responses), so nothing is lost in a translation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CREATED", "Reply", "sse_data", "sse_event", "split_text"]

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
    # The provider's cache diagnostics: Anthropic's ``diagnostics`` object (``{"cache_miss_reason": ...}``)
    # on the message and on ``message_start``'s message; OpenAI Responses' ``prompt_cache_diagnostics``
    # on the completed Response; None: the response carries none.
    diagnostics: Mapping[str, Any] | None = None


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
