"""Price multipliers the ``genai-prices`` table does not model, each with its source (pure data).

genai-prices (pinned in the lock) models per-model list prices, cache reads and writes (5m and 1h),
long-context tiers, prompt modalities (audio), OpenAI service tiers and Anthropic fast mode
(``speed: fast``) as request-context price variants. What it does not model is listed here and
applied on top by ``pricing.py``; everything else goes through genai-prices.

Keep this table small and sourced: a multiplier that is not documented by the provider does not
belong here (an unknown surcharge makes the cost unknown instead, see ``pricing.price``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["MULTIPLIERS", "NEUTRAL_GEOS", "Multiplier", "anthropic_version", "geo_multiplier"]


@dataclass(frozen=True, slots=True)
class Multiplier:
    provider: str  # our provider name (anthropic, openai, gemini)
    factor: str  # the request property: inference_geo, ...
    value: str  # its value, lower-case
    min_version: tuple[int, int]  # first model generation it applies to (Anthropic: (4, 6) = Claude 4.6)
    multiplier: Decimal
    applies_to: str  # which charges it multiplies
    source: str


MULTIPLIERS: tuple[Multiplier, ...] = (
    Multiplier(
        provider="anthropic",
        factor="inference_geo",
        value="us",
        min_version=(4, 6),
        multiplier=Decimal("1.1"),
        applies_to="every token category (input, cache read, cache writes, output); not server-tool fees",
        # Anthropic pricing page, "Data residency pricing": "inference_geo: "us" on Claude 4.6+
        # x1.1 on all token categories"; "These multipliers stack with other pricing modifiers,
        # including the Batch API discount and data residency" (prompt-caching pricing).
        # https://platform.claude.com/docs/en/about-claude/pricing ; shared/research/protocols.md
        # section 1.8 and provider-facts-2026-11.md ("inference_geo: "us" costs 1.1x on 4.6+ models").
        source="https://platform.claude.com/docs/en/about-claude/pricing#data-residency-pricing",
    ),
)

# inference_geo values that bill at the global rate: the default routing, and what models that
# do not offer regional pinning report (recorded usage shows "not_available").
NEUTRAL_GEOS = frozenset({"global", "not_available", ""})

_ANTHROPIC_VERSION = re.compile(r"claude-(?:opus|sonnet|haiku|fable|mythos)-(\d{1,2})(?:-(\d{1,2}))?(?![0-9])")


def anthropic_version(model: str) -> tuple[int, int] | None:
    """``claude-opus-4-6-20260101`` -> (4, 6); ``claude-opus-5`` -> (5, 0); older names -> None."""
    m = _ANTHROPIC_VERSION.search(model.lower())
    if m is None:
        return None
    return int(m[1]), int(m[2] or 0)


def geo_multiplier(provider: str, model: str, geo: str | None) -> Decimal | None:
    """The multiplier a pinned region adds: 1 when none applies, None when it is unknown.

    Unknown means a region value the table does not list on a model new enough to offer
    regional pricing: the cost is then left unknown rather than guessed.
    """
    if geo is None or geo.lower() in NEUTRAL_GEOS:
        return Decimal(1)
    version = anthropic_version(model) if provider == "anthropic" else None
    for entry in MULTIPLIERS:
        if entry.provider == provider and entry.factor == "inference_geo" and entry.value == geo.lower():
            if version is None:
                return None  # a pinned region on a model we cannot place: unknown, not guessed
            return entry.multiplier if version >= entry.min_version else Decimal(1)
    if provider == "anthropic" and version is not None and version < (4, 6):
        return Decimal(1)  # older models do not bill by region
    return None
