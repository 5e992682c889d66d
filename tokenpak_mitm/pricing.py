"""Cost and cache savings per request, from pydantic's maintained ``genai-prices`` table.

Prices are never hand-written here: the table is dated and versioned, and every row records the
version that priced it. An unknown model prices as ``None`` (unknown), never as 0.

``savings_usd`` is what the same tokens would have cost with no prompt caching at all (every
cache read and write billed as fresh input) minus what they did cost. It is negative when a
cache write is never read back, which is exactly what users need to see.

Speed: pricing runs once per request on mitmproxy's event loop, and ``calc_price`` validates and
walks the table each call (about 0.2 ms). The model's price entry is therefore looked up once per
model and day, and when it is flat (plain per-MTok figures, no context tiers) the sum is computed
directly — the same arithmetic, proven equal to ``calc_price`` by the tests. Tiered entries
(long-context prices) always go through ``calc_price``.
"""

from __future__ import annotations

import logging
import time
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
_MTOK = Decimal(1_000_000)


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
        entry = _model_price(pid, model, _utc_day())
        if entry is None:
            return _UNKNOWN
        actual = _flat_total(entry, usage, cached=True)
        if actual is None:
            actual = _table_total(pid, model, usage, cached=True)
        uncached = _flat_total(entry, usage, cached=False)
        if uncached is None:
            uncached = _table_total(pid, model, usage, cached=False)
    except Exception:  # a price-table bug must not cost us the row
        logger.warning("tokenpak: pricing failed for %s/%s", provider, model, exc_info=True)
        return _UNKNOWN
    return Cost(float(actual), float(uncached - actual), PRICE_TABLE_VERSION)


def _utc_day() -> int:
    return int(time.time() // 86400)


@lru_cache(maxsize=1024)
def _model_price(provider_id: str, model: str, day: int) -> object | None:
    """The table's price entry for a model (memoised per day: dated price changes still apply)."""
    try:
        return calc_price(GPUsage(input_tokens=1), model_ref=model, provider_id=provider_id).model_price
    except LookupError:
        return None


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
    return total / _MTOK + _search_price(entry, u.web_search_requests)


def _table_total(provider_id: str, model: str, u: Usage, *, cached: bool) -> Decimal:
    fresh, read, write = u.input_tokens or 0, u.cache_read_tokens or 0, u.cache_write_tokens or 0
    w1h = min(u.cache_write_1h_tokens or 0, write)
    if cached:
        gp = GPUsage(
            input_tokens=fresh + read + write,  # genai-prices' input_tokens means *all* input
            cache_read_tokens=read,
            cache_write_tokens=write,  # 5m + 1h; the 1h part is priced at its own rate
            cache_write_1h_tokens=w1h,
            output_tokens=u.output_tokens or 0,
        )
    else:
        gp = GPUsage(input_tokens=fresh + read + write, output_tokens=u.output_tokens or 0)
    calc = calc_price(gp, model_ref=model, provider_id=provider_id)
    # Searches are billed the same with or without caching; they cancel out of savings.
    return calc.total_price + _search_price(calc.model_price, u.web_search_requests)


def _search_price(entry: object, searches: int | None) -> Decimal:
    per_k = _flat(getattr(entry, "web_searches_kcount", None))
    if not searches or per_k is None:
        return Decimal(0)
    return per_k * searches / 1000
