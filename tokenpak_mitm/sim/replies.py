"""The simulated provider's replies: one reply rendered as each provider sends it.

Each dialect writes its own wire format (``render`` of its ``DIALECT`` in `core/dialects/`); this
module is the simulated provider's entry to them by dialect name, used by the fake provider
(`sim/provider.py`), the doctor's stream check and the benchmark's upstream process. Everything is
pure: a :class:`Reply` in, bytes or a JSON object out.
"""

from __future__ import annotations

from typing import Any

from tokenpak_mitm.core.dialects import DialectName, dialect, dialects
from tokenpak_mitm.core.dialects.anthropic import (
    ANTHROPIC_ERROR_TYPES,
    anthropic_block_start,
    anthropic_block_stop,
    anthropic_message_delta,
    anthropic_message_start,
    anthropic_message_stop,
    anthropic_ping,
    anthropic_text_delta,
)
from tokenpak_mitm.core.dialects.replies import CREATED, Reply, split_text, sse_data, sse_event
from tokenpak_mitm.core.dialects.spec import Renderer

__all__ = [
    "ANTHROPIC_ERROR_TYPES", "CREATED", "DIALECTS", "Dialect", "Reply", "render_json", "render_frames", "error_json", "renderer", "sse_event",
    "sse_data", "split_text", "text_delta_affixes",
    "anthropic_message_start", "anthropic_block_start", "anthropic_ping", "anthropic_text_delta", "anthropic_block_stop",
    "anthropic_message_delta", "anthropic_message_stop",
]

Dialect = DialectName
DIALECTS: tuple[str, ...] = tuple(d.name for d in dialects())


def renderer(name: str) -> Renderer:
    d = dialect(name)
    if d is None:
        raise KeyError(f"no dialect named {name!r} is registered")
    return d.render


def render_json(dialect_name: str, reply: Reply) -> dict[str, Any]:
    """The non-streamed response object."""
    return renderer(dialect_name).json(reply)


def render_frames(dialect_name: str, reply: Reply) -> list[bytes]:
    """The streamed response, one SSE frame per item."""
    return renderer(dialect_name).frames(reply)


def error_json(dialect_name: str, status: int, message: str) -> dict[str, Any]:
    """An HTTP error body as the provider writes it (Anthropic's ``request_id`` is the caller's to add)."""
    return renderer(dialect_name).error(status, message)


def text_delta_affixes(dialect_name: str = "anthropic") -> tuple[bytes, bytes]:
    """The bytes before and after the text of one content delta frame, for writers that splice
    JSON-safe text in directly (the benchmark stamps every delta with its send time)."""
    sentinel = "\x00"
    r = renderer(dialect_name)
    frame = r.frames(Reply(id="x", model="m", text=sentinel, text_deltas=1, usage={}))
    head, _, tail = frame[r.first_delta].partition(b"\\u0000")
    return head, tail
