"""One bucket model for every provider, so no token is ever counted twice.

The buckets are *exclusive*: ``input_tokens`` is fresh input only (never cache reads or writes),
and the cache buckets are disjoint from it. Providers disagree on this (Anthropic's
``input_tokens`` excludes cache tokens, OpenAI's and Gemini's prompt counts include them), so each
dialect converts into this shape exactly once, at extraction time. ``reasoning_tokens`` is a part
of ``output_tokens``, reported separately and never priced on top of it.

Decompositions (never added on top of the buckets they split):

* ``input_{audio,image,video}_tokens`` are the parts of fresh ``input_tokens`` in that prompt
  modality, ``cache_read_{audio,image,video}_tokens`` the parts of ``cache_read_tokens``; text is
  the remainder. Gemini prices audio input differently (``promptTokensDetails``).
* ``extra_iterations`` / ``extra_input_tokens`` / ``extra_output_tokens``: sampling iterations the
  provider bills but leaves out of its top-level totals (Anthropic compaction and advisor calls
  in ``usage.iterations``). They ARE included in the buckets, exactly once; these columns say how
  much of each bucket came from them (``extra_input_tokens`` counts fresh + cache read + write).

``None`` means "not reported", which is different from 0: a stream without usage must never look
free.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from tokenpak_mitm.core.wire import by_fields

__all__ = ["MODALITY_FIELDS", "ExtraIteration", "Usage", "as_count", "with_extras"]


@by_fields
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
    input_audio_tokens: int | None = None
    input_image_tokens: int | None = None
    input_video_tokens: int | None = None
    cache_read_audio_tokens: int | None = None
    cache_read_image_tokens: int | None = None
    cache_read_video_tokens: int | None = None
    extra_iterations: int | None = None
    extra_input_tokens: int | None = None
    extra_output_tokens: int | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in _FIELDS)

    def has_modalities(self) -> bool:
        """Any non-text prompt tokens reported (they may be priced at their own rate)."""
        return any(getattr(self, name) for name in MODALITY_FIELDS)

    def total_input(self) -> int | None:
        """All prompt tokens (fresh + cache read + cache write); the OTel GenAI notion of input."""
        if self.input_tokens is None and self.cache_read_tokens is None and self.cache_write_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.cache_read_tokens or 0) + (self.cache_write_tokens or 0)

    def as_dict(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(Usage))
MODALITY_FIELDS = (
    "input_audio_tokens", "input_image_tokens", "input_video_tokens",
    "cache_read_audio_tokens", "cache_read_image_tokens", "cache_read_video_tokens",
)


@dataclass(frozen=True, slots=True)
class ExtraIteration:
    """One billed sampling step outside the provider's top-level totals (already in the buckets).

    ``kind`` is the provider's label (``compaction``, ``advisor_message``, ...); ``model`` is the
    model that ran it when the provider names one (an advisor may be another model), else None
    (the request's model). Kept beside the row so each step is priced at its own model's rates.
    """

    kind: str
    model: str | None
    usage: Usage


def with_extras(top: Usage, extras: tuple[ExtraIteration, ...]) -> Usage:
    """``top`` plus every extra iteration, each token exactly once; decomposition columns set.

    A bucket stays unknown only when neither the top level nor any extra reports it. (A dialect
    that saw a malformed count in an extra sets that bucket to None afterwards: unknown, never
    short.)
    """
    if not extras:
        return top
    out = Usage(**top.as_dict())
    for name in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_5m_tokens",
                 "cache_write_1h_tokens", "output_tokens", "reasoning_tokens"):
        parts = [getattr(top, name)] + [getattr(e.usage, name) for e in extras]
        setattr(out, name, None if all(v is None for v in parts) else sum(v or 0 for v in parts))
    out.extra_iterations = len(extras)
    ins = [e.usage.total_input() for e in extras]
    out.extra_input_tokens = None if any(v is None for v in ins) else sum(v or 0 for v in ins)
    outs = [e.usage.output_tokens for e in extras]
    out.extra_output_tokens = None if any(v is None for v in outs) else sum(v or 0 for v in outs)
    return out


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
