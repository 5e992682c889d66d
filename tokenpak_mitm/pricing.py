"""Cost and cache savings per request, from pydantic's maintained ``genai-prices`` table.

Prices are never hand-written here: the table is dated and versioned, and every row records the
version that priced it. An unknown model prices as ``None`` (unknown), never as 0.

``savings_usd`` is what the same tokens would have cost with no prompt caching at all (every
cache read and write billed as fresh input) minus what they did cost. It is negative when a
cache write is never read back, which is exactly what users need to see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import genai_prices
from genai_prices import Usage as GPUsage
from genai_prices import calc_price

from tokenpak_mitm.usage import Usage

__all__ = ["Cost", "price", "PRICE_TABLE_VERSION"]

logger = logging.getLogger(__name__)

PRICE_TABLE_VERSION = f"genai-prices {genai_prices.__version__}"

# Our provider names -> genai-prices provider ids.
_PROVIDER_IDS = {"anthropic": "anthropic", "openai": "openai", "gemini": "google"}


@dataclass(frozen=True, slots=True)
class Cost:
    cost_usd: float | None
    savings_usd: float | None
    price_version: str | None


_UNKNOWN = Cost(None, None, None)


def price(provider: str, model: str | None, usage: Usage) -> Cost:
    """Price exclusive buckets; never raises (an unpriceable request is ``cost_usd=None``)."""
    if not model or usage.is_empty() or (usage.total_input() is None and usage.output_tokens is None):
        return _UNKNOWN
    pid = _PROVIDER_IDS.get(provider, provider)
    try:
        actual = _calc(pid, model, usage, cached=True)
        if actual is None:
            return _UNKNOWN
        uncached = _calc(pid, model, usage, cached=False)
    except Exception:  # a price-table bug must not cost us the row
        logger.warning("tokenpak: pricing failed for %s/%s", provider, model, exc_info=True)
        return _UNKNOWN
    savings = None if uncached is None else float(uncached - actual)
    return Cost(float(actual), savings, PRICE_TABLE_VERSION)


def _calc(provider_id: str, model: str, u: Usage, *, cached: bool) -> Decimal | None:
    fresh = u.input_tokens or 0
    read = u.cache_read_tokens or 0
    write = u.cache_write_tokens or 0
    w1h = u.cache_write_1h_tokens or 0
    if cached:
        gp = GPUsage(
            input_tokens=fresh + read + write,  # genai-prices' input_tokens means *all* input
            cache_read_tokens=read,
            cache_write_tokens=write,
            output_tokens=u.output_tokens or 0,
        )
        if w1h:
            gp = _with_1h(gp, w1h)
    else:
        gp = GPUsage(input_tokens=fresh + read + write, output_tokens=u.output_tokens or 0)
    result = _lookup(provider_id, model)
    if result is None:
        return None
    calc = calc_price(gp, model_ref=model, provider_id=provider_id)
    total = calc.total_price
    if u.web_search_requests:
        # Searches are billed the same with or without caching; they cancel out of savings.
        total += _search_price(calc, u.web_search_requests)
    return total


def _with_1h(gp: GPUsage, w1h: int) -> GPUsage:
    """Split writes into 5m and 1h when the table supports it (1h writes cost 2x, not 1.25x)."""
    try:
        return GPUsage(
            input_tokens=gp.input_tokens,
            cache_read_tokens=gp.cache_read_tokens,
            cache_write_tokens=gp.cache_write_tokens,
            output_tokens=gp.output_tokens,
            cache_write_1h_tokens=w1h,
        )
    except TypeError:
        return gp


def _search_price(calc: object, searches: int) -> Decimal:
    per_k = getattr(getattr(calc, "model_price", None), "web_searches_kcount", None)
    if per_k is None:
        return Decimal(0)
    try:
        return Decimal(str(per_k)) * searches / 1000
    except Exception:
        return Decimal(0)


@lru_cache(maxsize=512)
def _lookup(provider_id: str, model: str) -> bool | None:
    """Memoised "is this model in the table" so unknown models cost one failed lookup, ever."""
    try:
        calc_price(GPUsage(input_tokens=1), model_ref=model, provider_id=provider_id)
    except LookupError:
        return None
    return True
