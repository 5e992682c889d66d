"""Pricing: the fast flat-price path must equal genai-prices' own calc_price, to the cent and below."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.pricing import PRICE_TABLE_VERSION, _model_price, _search_price, _table_total, _utc_day, price
from tokenpak_mitm.usage import Usage

MODELS = [
    ("anthropic", "anthropic", "claude-sonnet-4-6"),
    ("anthropic", "anthropic", "claude-opus-4-8"),
    ("anthropic", "anthropic", "claude-haiku-4-5-20251001"),
    ("anthropic", "anthropic", "claude-sonnet-4-5-20250929"),  # long-context tiers: table path
    ("openai", "openai", "gpt-4o"),
    ("openai", "openai", "gpt-4.1-mini"),
    ("gemini", "google", "gemini-2.5-flash"),
    ("gemini", "google", "gemini-2.5-pro"),  # tiered
]

counts = st.one_of(st.none(), st.integers(min_value=0, max_value=400_000))


@settings(max_examples=150, deadline=None)
@given(which=st.sampled_from(MODELS), fresh=counts, read=counts, w5=counts, w1h=counts, out=counts, searches=st.one_of(st.none(), st.integers(0, 5)))
def test_fast_path_equals_calc_price(which, fresh, read, w5, w1h, out, searches):
    provider, pid, model = which
    write = None if w5 is None and w1h is None else (w5 or 0) + (w1h or 0)
    u = Usage(input_tokens=fresh, cache_read_tokens=read, cache_write_tokens=write, cache_write_5m_tokens=w5,
              cache_write_1h_tokens=w1h, output_tokens=out, web_search_requests=searches)
    got = price(provider, model, u)
    if u.total_input() is None and out is None:
        assert got.cost_usd is None
        return
    if write and _model_price(pid, model, (), _utc_day()).cache_write_mtok is None:
        # gpt-4o / Gemini bill no cache writes: reported writes there have no known price.
        assert got.cost_usd is None and got.unpriced_reason == "no_cache_write_price"
        return
    search = float(_search_price(_model_price(pid, model, (), _utc_day()), searches))
    assert got.cost_usd == pytest.approx(float(_table_total(pid, model, u, cached=True)) + search, rel=1e-12, abs=1e-15)
    uncached = float(_table_total(pid, model, u, cached=False)) + search
    assert got.savings_usd == pytest.approx(uncached - got.cost_usd, rel=1e-9, abs=1e-12)
    assert got.price_version == PRICE_TABLE_VERSION


def test_hand_computed_anthropic_row():
    # claude-sonnet-4-6: $3 input, $3.75 5m write, $6 1h write, $0.30 read, $15 output per MTok.
    u = Usage(input_tokens=50, cache_read_tokens=1800, cache_write_tokens=248, cache_write_5m_tokens=148,
              cache_write_1h_tokens=100, output_tokens=503)
    got = price("anthropic", "claude-sonnet-4-6", u)
    assert got.cost_usd == pytest.approx((50 * 3 + 148 * 3.75 + 100 * 6 + 1800 * 0.30 + 503 * 15) / 1e6)
    assert got.savings_usd == pytest.approx(((50 + 1800 + 248) * 3 + 503 * 15) / 1e6 - got.cost_usd)


def test_unknown_model_and_missing_usage_are_unknown_not_zero():
    assert price("anthropic", "claude-imaginary-9", Usage(input_tokens=10, output_tokens=1)).cost_usd is None
    assert price("anthropic", "claude-sonnet-4-6", Usage()).cost_usd is None
    assert price("anthropic", None, Usage(input_tokens=10)).cost_usd is None


def test_long_context_tier_is_priced_by_the_table():
    # Above 200k input tokens Sonnet 4.5 bills $6 input; the flat path must not apply base rates.
    u = Usage(input_tokens=250_000, cache_read_tokens=0, cache_write_tokens=0, output_tokens=0)
    got = price("anthropic", "claude-sonnet-4-5-20250929", u)
    assert got.cost_usd == pytest.approx(250_000 * 6 / 1e6)
