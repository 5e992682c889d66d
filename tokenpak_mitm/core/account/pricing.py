"""Cost and cache savings per request, from pydantic's maintained ``genai-prices`` table.

Prices are never hand-written here: the table is dated and versioned, and every row records the
version that priced it. What it does not model is a small sourced table of multipliers
(``price_multipliers.py``). A request whose price cannot be known (unknown model, a service tier
or fast mode the table has no price for, an unknown region) prices as ``None`` with the reason in
``unpriced_reason``, never as 0.

What changes the price, and where it comes from (see docs/dialects.md, "Pricing"):

* prompt modalities (Gemini audio): the usage's modality parts go to genai-prices, which prices
  each at its own rate;
* service tier (OpenAI ``default``/``flex``/``priority``, Anthropic ``batch``, Gemini tiers) and
  Anthropic fast mode (``speed: fast``): genai-prices price variants (``price_context``);
* Anthropic ``inference_geo: us`` on Claude 4.6+: x1.1 on every token category (our table);
* billed iterations outside the top-level usage (Anthropic compaction, advisor calls): already in
  the buckets; each is priced separately at its own model's rates (an advisor may be another
  model, and each iteration is its own sampling step for long-context tiers).

``savings_usd`` is what the same tokens would have cost with no prompt caching at all (every
cache read and write billed as fresh input, same tier, region and modality) minus what they did
cost. It is negative when a cache write is never read back, which is exactly what users need.

Speed: pricing runs once per request on mitmproxy's event loop, and ``calc_price`` validates and
walks the table each call (about 0.2 ms). The model's price entry is therefore looked up once per
model, price context and day, and when it is flat (plain per-MTok figures, no context tiers) and
the usage has no modality parts the sum is computed directly — the same arithmetic, proven equal
to ``calc_price`` by the tests. Everything else goes through ``calc_price``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any

import genai_prices
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from tokenpak_mitm.core.account.price_multipliers import geo_multiplier
from tokenpak_mitm.core.observe.usage import ExtraIteration, Usage

__all__ = ["PRICE_TABLE_VERSION", "UNPRICED_REASONS", "UPDATE_HINT", "Cost", "PriceFactors", "price", "price_context", "request_price_hints"]

logger = logging.getLogger(__name__)

PRICE_TABLE_VERSION = f"genai-prices {genai_prices.__version__}"
UPDATE_HINT = (
    "raise the genai-prices upper bound in pyproject.toml (e.g. genai-prices>=0.2.3,<0.4), run `make lock` "
    "to refresh requirements/*.txt, then `make venv` (plain `pip install -U genai-prices` inside the venv "
    "also works, but only within the locked range)"
)

# Our provider names -> genai-prices provider ids.
_PROVIDER_IDS = {"anthropic": "anthropic", "openai": "openai", "gemini": "google"}
_MTOK = Decimal(1_000_000)

UNPRICED_REASONS: Mapping[str, str] = {
    "no_model": "the response named no model",
    "no_usage": "the provider reported no usage",
    "incomplete_usage": "the fresh input or output count was missing or malformed",
    "unknown_model": "the price table does not know the model (update genai-prices)",
    "unknown_service_tier": "the table has no price for this service tier on this model",
    "unknown_speed": "the table has no fast-mode price for this model",
    "unknown_region": "a pinned inference region with no documented multiplier for this model",
    "no_cache_write_price": "cache writes were billed but the table has no cache-write price for the model",
    "pricing_error": "the price table failed on this usage (logged)",
}


@dataclass(frozen=True, slots=True)
class PriceFactors:
    """What changes the price besides the token counts, as the provider reported it (lower-case)."""

    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None


NO_FACTORS = PriceFactors()


@dataclass(frozen=True, slots=True)
class Cost:
    cost_usd: float | None
    savings_usd: float | None
    price_version: str | None
    unpriced_reason: str | None = None  # one of UNPRICED_REASONS when cost_usd is None
    multiplier: float | None = None  # our table's multiplier on token charges (1.0: none applied)


class _Unpriced(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def price(
    provider: str,
    model: str | None,
    usage: Usage,
    factors: PriceFactors = NO_FACTORS,
    extras: tuple[ExtraIteration, ...] = (),
) -> Cost:
    """Price exclusive buckets; never raises (an unpriceable request is ``cost_usd=None``).

    ``usage`` holds every billed token (``extras`` included, see ``usage.with_extras``); the
    extras are subtracted back out and priced on their own, at their own model's rates.
    """
    if not model:
        return Cost(None, None, None, "no_model")
    if usage.is_empty() or (usage.total_input() is None and usage.output_tokens is None):
        return Cost(None, None, None, "no_usage")
    if usage.input_tokens is None or usage.output_tokens is None:
        # A count the provider sent malformed (or left out) would price as 0: unknown, never short.
        return Cost(None, None, None, "incomplete_usage")
    pid = _PROVIDER_IDS.get(provider, provider)
    try:
        ctx = price_context(provider, factors)
        mult = geo_multiplier(provider, model, factors.inference_geo)
        if mult is None:
            raise _Unpriced("unknown_region")
        actual = uncached = Decimal(0)
        for part_model, part in [(model, _without(usage, extras)), *((e.model or model, e.usage) for e in extras)]:
            a, u = _part_totals(pid, part_model, part, ctx)
            actual += a
            uncached += u
        search = _search_price(_model_price(pid, model, ctx, _utc_day()), usage.web_search_requests)
    except _Unpriced as e:
        return Cost(None, None, None, e.reason)
    except Exception:  # a price-table bug must not cost us the row
        logger.warning("tokenpak: pricing failed for %s/%s", provider, model, exc_info=True)
        return Cost(None, None, None, "pricing_error")
    # Searches are billed the same with or without caching, and not by region: they cancel out of savings.
    cost = actual * mult + search
    return Cost(float(cost), float((uncached - actual) * mult), PRICE_TABLE_VERSION, None, float(mult))


def warm() -> None:
    """Load genai-prices' tables now: its first lookup reads them (~35 ms), and on the proxy's event
    loop that would stall every connection at the first request's row. Never raises."""
    try:
        price("anthropic", "claude-sonnet-4-5", Usage(input_tokens=1, output_tokens=1))
    except Exception:  # noqa: BLE001 - a warm-up; the first real row loads what this could not
        logger.debug("tokenpak: price table warm-up failed", exc_info=True)


def price_context(provider: str, f: PriceFactors) -> tuple[tuple[str, str], ...]:
    """genai-prices ``price_context`` items for the factors (empty: standard prices).

    Anthropic reports ``service_tier`` standard / priority / batch: batch is the table's
    ``processing: batch`` variant; priority (committed capacity) has no list price, so it is
    priced as unknown. ``speed: fast`` is the table's fast-mode variant. OpenAI and Gemini name
    the tier itself (``default``/``auto``/``standard`` are the standard price).
    """
    items: list[tuple[str, str]] = []
    tier = (f.service_tier or "").lower()
    if tier and tier not in ("default", "auto", "standard", "standard_only", "unspecified", "on_demand"):
        if provider == "anthropic":
            if tier != "batch":
                raise _Unpriced("unknown_service_tier")
            items.append(("processing", "batch"))
        else:
            items.append(("service_tier", tier))
    speed = (f.speed or "").lower()
    if speed and speed != "standard":
        items.append(("speed", speed))
    return tuple(items)


def _without(u: Usage, extras: tuple[ExtraIteration, ...]) -> Usage:
    """The top-level part of a usage that includes ``extras`` (what the main model billed)."""
    if not extras:
        return u
    out = Usage(**u.as_dict())
    for name in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "output_tokens"):
        value = getattr(u, name)
        if value is not None:
            setattr(out, name, max(0, value - sum(getattr(e.usage, name) or 0 for e in extras)))
    return out


def _part_totals(pid: str, model: str, u: Usage, ctx: tuple[tuple[str, str], ...]) -> tuple[Decimal, Decimal]:
    """(cost as billed, cost with every cached token billed as fresh input), tokens only."""
    entry = _model_price(pid, model, ctx, _utc_day())
    if entry is None:
        raise _Unpriced("unknown_model")
    if ctx and not _has_variants(pid, model, ctx):
        raise _Unpriced("unknown_speed" if any(k == "speed" for k, _ in ctx) else "unknown_service_tier")
    if (u.cache_write_tokens or 0) > 0 and getattr(entry, "cache_write_mtok", None) is None:
        raise _Unpriced("no_cache_write_price")
    if not u.has_modalities():
        actual = _flat_total(entry, u, cached=True)
        uncached = _flat_total(entry, u, cached=False)
        if actual is not None and uncached is not None:
            return actual, uncached
    return _table_total(pid, model, u, ctx, cached=True), _table_total(pid, model, u, ctx, cached=False)


def _utc_day() -> int:
    return int(time.time() // 86400)


@lru_cache(maxsize=1024)
def _model_price(provider_id: str, model: str, ctx: tuple[tuple[str, str], ...], day: int) -> Any | None:
    """The table's price entry for a model and context (memoised per day: dated changes still apply)."""
    try:
        return calc_price(GPUsage(input_tokens=1), model_ref=model, provider_id=provider_id, price_context=dict(ctx) or None).model_price
    except LookupError:
        return None


@lru_cache(maxsize=1024)
def _has_variants(provider_id: str, model: str, ctx: tuple[tuple[str, str], ...]) -> bool:
    """Does the table define a price variant for each context item (else the standard price would
    be silently used for a request billed at another rate)?"""
    info = calc_price(GPUsage(input_tokens=1), model_ref=model, provider_id=provider_id).model
    whens = [v.when for v in info.price_variants or ()]
    return all(any(w == {key: value} for w in whens) for key, value in ctx)


def _flat(value: object) -> Decimal | None:
    return value if isinstance(value, Decimal) else None


def _flat_total(entry: object, u: Usage, *, cached: bool) -> Decimal | None:
    """Σ tokens × per-MTok price when every price involved is a flat figure, else None."""
    fresh, read, write = u.input_tokens or 0, u.cache_read_tokens or 0, u.cache_write_tokens or 0
    w1h = min(u.cache_write_1h_tokens or 0, write)
    out = u.output_tokens or 0
    parts: list[tuple[int, str]] = [(out, "output_mtok")]
    if cached:
        parts += [(fresh, "input_mtok"), (read, "cache_read_mtok"), (write - w1h, "cache_write_mtok"), (w1h, "cache_write_1h_mtok")]
    else:
        parts += [(fresh + read + write, "input_mtok")]
    for attr in ("input_mtok", "output_mtok"):
        if not isinstance(getattr(entry, attr, None), Decimal | None):
            return None  # tiered: let the table decide
    total = Decimal(0)
    for tokens, attr in parts:
        if not tokens:
            continue
        rate = _flat(getattr(entry, attr, None))
        if rate is None:
            return None  # missing or tiered: the table's own rules apply
        total += tokens * rate
    return total / _MTOK


def _table_total(provider_id: str, model: str, u: Usage, ctx: tuple[tuple[str, str], ...] = (), *, cached: bool) -> Decimal:
    """Tokens priced by ``calc_price`` (genai-prices' ``input_tokens`` means *all* input)."""
    fresh, read, write = u.input_tokens or 0, u.cache_read_tokens or 0, u.cache_write_tokens or 0
    w1h = min(u.cache_write_1h_tokens or 0, write)
    modal: dict[str, int] = {}
    for m in ("audio", "image", "video"):
        fresh_part = getattr(u, f"input_{m}_tokens") or 0
        read_part = min(getattr(u, f"cache_read_{m}_tokens") or 0, read)
        if fresh_part + read_part:
            modal[f"input_{m}_tokens"] = fresh_part + read_part  # genai-prices: all input of that modality
        if cached and read_part:
            modal[f"cache_{m}_read_tokens"] = read_part
    if cached:
        gp = GPUsage(
            input_tokens=fresh + read + write,
            cache_read_tokens=read,
            cache_write_tokens=write,  # 5m + 1h; the 1h part is priced at its own rate
            cache_write_1h_tokens=w1h,
            output_tokens=u.output_tokens or 0,
            **modal,
        )
    else:
        gp = GPUsage(input_tokens=fresh + read + write, output_tokens=u.output_tokens or 0, **modal)
    return calc_price(gp, model_ref=model, provider_id=provider_id, price_context=dict(ctx) or None).total_price


def _search_price(entry: object, searches: int | None) -> Decimal:
    per_k = _flat(getattr(entry, "web_searches_kcount", None))
    if not searches or per_k is None:
        return Decimal(0)
    return per_k * searches / 1000


_HINT_KEYS = (b'"speed"', b'"inference_geo"')
HINT_MAX_BYTES = 1 << 20  # above this the request is not parsed for hints (the response says them)


def request_price_hints(body: bytes | None) -> tuple[str | None, str | None]:
    """(speed, inference_geo) an Anthropic request asked for, from its top-level fields.

    The response's usage normally reports both; these are the fallback for servers and older
    API versions that do not. Cheap on ordinary requests: the body is parsed only when one of
    the two keys appears in its bytes (inside a JSON string a quote is escaped, so user text
    rarely matches), and only up to ``HINT_MAX_BYTES``. Never raises.
    """
    if not body or len(body) > HINT_MAX_BYTES or not any(body.find(k) >= 0 for k in _HINT_KEYS):
        return None, None
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    speed, geo = obj.get("speed"), obj.get("inference_geo")
    return (speed.lower() if isinstance(speed, str) and speed else None,
            geo.lower() if isinstance(geo, str) and geo else None)
