"""One bucket model for every provider, so no token is ever counted twice.

The buckets are *exclusive*: ``input_tokens`` is fresh input only (never cache reads or writes),
and the cache buckets are disjoint from it. Providers disagree on this (Anthropic's
``input_tokens`` excludes cache tokens, OpenAI's and Gemini's prompt counts include them), so each
dialect converts into this shape exactly once, at extraction time. ``reasoning_tokens`` is a part
of ``output_tokens``, reported separately and never priced on top of it.

``None`` means "not reported", which is different from 0: a stream without usage must never look
free.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Usage"]


@dataclass(slots=True)
class Usage:
    input_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    web_search_requests: int | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in _FIELDS)

    def total_input(self) -> int | None:
        """All prompt tokens (fresh + cache read + cache write); the OTel GenAI notion of input."""
        if self.input_tokens is None and self.cache_read_tokens is None and self.cache_write_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.cache_read_tokens or 0) + (self.cache_write_tokens or 0)

    def as_dict(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(Usage))


def as_count(value: object) -> int | None:
    """A provider's token count as a non-negative int, or None when absent or malformed.

    Wrong types (strings, floats with fractions, booleans, negatives, absurdly large numbers) are
    treated as unreported rather than trusted: a bad frame must not become a bad bill.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            return None
    if value < 0 or value > 10**12:
        return None
    return value
