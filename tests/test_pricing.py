"""Pricing: the fast flat-price path must equal genai-prices' own calc_price, to the cent and below."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from genai_prices import Usage as GPUsage
from genai_prices import calc_price, extract_usage
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.account.price_multipliers import anthropic_version
from tokenpak_mitm.core.account.pricing import PRICE_TABLE_VERSION, PriceFactors, _model_price, _search_price, _table_total, _utc_day, price
from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
from tokenpak_mitm.core.dialects.gemini import GeminiTracker
from tokenpak_mitm.core.dialects.openai_chat import OpenAIChatTracker
from tokenpak_mitm.core.dialects.openai_responses import OpenAIResponsesTracker
from tokenpak_mitm.core.observe.usage import Usage

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
    if fresh is None or out is None:  # a bucket unknown: never priced as if it were 0
        assert got.cost_usd is None and got.unpriced_reason == "incomplete_usage"
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


# ---- issue 18: every billed token priced right -------------------------------------------------
# Each case prices a realistic response body through the dialect that reads it (what the proxy
# does) and compares with an independent figure: genai-prices on the provider's raw usage where
# it covers the case, the provider's list prices by hand where it does not.



def _priced(tracker, provider: str, body: dict, model: str | None = None):
    tracker.feed_body(json.dumps(body).encode(), 200)
    x = tracker.extract
    return x, price(provider, model or x.model, x.usage, PriceFactors(x.service_tier, x.speed, x.inference_geo), x.extras)


def test_gemini_audio_prompt_is_priced_by_modality():
    # The example: 9,000 audio + 1,000 text prompt tokens on gemini-2.5-flash.
    body = {"modelVersion": "gemini-2.5-flash", "responseId": "r1",
            "candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10000, "candidatesTokenCount": 50, "totalTokenCount": 10050,
                              "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 9000}, {"modality": "TEXT", "tokenCount": 1000}]}}
    x, got = _priced(GeminiTracker(), "gemini", body)
    assert x.usage.input_audio_tokens == 9000 and x.usage.input_tokens == 10000
    independent = extract_usage(body, provider_id="google").calc_price().total_price
    assert independent == Decimal("0.009425")
    assert got.cost_usd == pytest.approx(float(independent))
    # By hand: audio $1.00, text $0.30, output $2.50 per MTok.
    assert got.cost_usd == pytest.approx((9000 * 1.0 + 1000 * 0.30 + 50 * 2.50) / 1e6)


def test_gemini_cached_audio_reads_at_the_audio_cache_rate():
    body = {"modelVersion": "gemini-2.5-flash", "candidates": [{"finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10000, "cachedContentTokenCount": 4000, "candidatesTokenCount": 0,
                              "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 9000}, {"modality": "TEXT", "tokenCount": 1000}],
                              "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 3000}, {"modality": "TEXT", "tokenCount": 1000}]}}
    x, got = _priced(GeminiTracker(), "gemini", body)
    assert (x.usage.input_tokens, x.usage.cache_read_tokens) == (6000, 4000)
    assert (x.usage.input_audio_tokens, x.usage.cache_read_audio_tokens) == (6000, 3000)
    independent = extract_usage(body, provider_id="google").calc_price().total_price
    assert got.cost_usd == pytest.approx(float(independent))
    # fresh audio 6000 x $1, cached audio 3000 x $0.10, cached text 1000 x $0.03 (per MTok)
    assert got.cost_usd == pytest.approx((6000 * 1.0 + 3000 * 0.10 + 1000 * 0.03) / 1e6)
    # Savings: the same tokens uncached (audio at the audio rate) minus what they cost.
    assert got.savings_usd == pytest.approx((9000 * 1.0 + 1000 * 0.30) / 1e6 - got.cost_usd)


def _anthropic_message(model: str, usage: dict) -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": "end_turn", "usage": usage}


def test_inference_geo_us_costs_1_1x_on_claude_4_6_and_later():
    usage = {"input_tokens": 2048, "cache_read_input_tokens": 1800, "cache_creation_input_tokens": 248, "output_tokens": 503,
             "cache_creation": {"ephemeral_5m_input_tokens": 148, "ephemeral_1h_input_tokens": 100},
             "server_tool_use": {"web_search_requests": 1}, "service_tier": "standard", "inference_geo": "us", "speed": "standard"}
    x, got = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-opus-4-6", usage))
    assert x.inference_geo == "us"
    # claude-opus-4-6: $5 in, $6.25 5m write, $10 1h write, $0.50 read, $25 out; search $10/1000 (not x1.1)
    tokens = (2048 * 5 + 148 * 6.25 + 100 * 10 + 1800 * 0.5 + 503 * 25) / 1e6
    assert got.cost_usd == pytest.approx(tokens * 1.1 + 0.01)
    assert got.multiplier == pytest.approx(1.1)
    assert got.savings_usd == pytest.approx(((2048 + 1800 + 248) * 5 + 503 * 25) / 1e6 * 1.1 - tokens * 1.1)
    # The same body at the global rate; and an older model (no regional pricing) is not uplifted.
    _, glob = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-opus-4-6", {**usage, "inference_geo": "global"}))
    assert glob.cost_usd == pytest.approx(tokens + 0.01)
    _, old = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-opus-4-5", usage))
    assert old.multiplier == 1.0
    # A region we have no multiplier for, on a model that bills by region: unknown, not guessed.
    _, eu = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-opus-4-6", {**usage, "inference_geo": "eu"}))
    assert eu.cost_usd is None and eu.unpriced_reason == "unknown_region"


def test_inference_geo_from_the_request_when_the_response_is_silent():
    from tokenpak_mitm.core.account.pricing import request_price_hints

    body = b'{"model":"claude-sonnet-4-6","inference_geo":"us","speed":"fast","messages":[{"role":"user","content":"say \\"speed\\""}]}'
    assert request_price_hints(body) == ("fast", "us")
    assert request_price_hints(b'{"model":"m","messages":[{"role":"user","content":"no hints here"}]}') == (None, None)
    assert request_price_hints(b'{"speed": not json') == (None, None)


@pytest.mark.parametrize("model", ["claude-opus-5", "claude-opus-4-8", "claude-opus-5-5"])
def test_fast_mode_uses_the_tables_fast_prices(model):
    usage = {"input_tokens": 3000, "cache_read_input_tokens": 10000, "cache_creation_input_tokens": 2000, "output_tokens": 800, "speed": "fast"}
    x, got = _priced(AnthropicTracker(), "anthropic", _anthropic_message(model, usage))
    assert x.speed == "fast"
    gp = GPUsage(input_tokens=15000, cache_read_tokens=10000, cache_write_tokens=2000, output_tokens=800)
    fast = calc_price(gp, model, provider_id="anthropic", price_context={"speed": "fast"}).total_price
    standard = calc_price(gp, model, provider_id="anthropic").total_price
    assert fast == 2 * standard  # documented: fast mode doubles the rates, caching multipliers on top
    assert got.cost_usd == pytest.approx(float(fast))


def test_fast_mode_without_a_fast_price_is_unknown():
    usage = {"input_tokens": 3000, "output_tokens": 800, "speed": "fast"}
    _, got = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-sonnet-4-6", usage))
    assert got.cost_usd is None and got.unpriced_reason == "unknown_speed"


def test_anthropic_priority_tier_is_unknown_and_batch_is_half():
    usage = {"input_tokens": 1000, "output_tokens": 100}
    _, prio = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-sonnet-4-6", {**usage, "service_tier": "priority"}))
    assert prio.cost_usd is None and prio.unpriced_reason == "unknown_service_tier"
    _, batch = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-sonnet-4-6", {**usage, "service_tier": "batch"}))
    assert batch.cost_usd == pytest.approx((1000 * 1.5 + 100 * 7.5) / 1e6)


def test_openai_service_tier_from_the_response():
    body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-5.4-mini", "service_tier": "priority",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5000, "completion_tokens": 300, "total_tokens": 5300,
                      "prompt_tokens_details": {"cached_tokens": 2048}}}
    x, got = _priced(OpenAIChatTracker(), "openai", body)
    assert x.service_tier == "priority"
    gp = extract_usage(body, provider_id="openai", api_flavor="chat").usage
    independent = calc_price(gp, "gpt-5.4-mini", provider_id="openai", price_context={"service_tier": "priority"}).total_price
    assert got.cost_usd == pytest.approx(float(independent))
    # priority: $1.50 input, $0.15 cached, $9 output per MTok
    assert got.cost_usd == pytest.approx((2952 * 1.5 + 2048 * 0.15 + 300 * 9) / 1e6)
    _, default = _priced(OpenAIChatTracker(), "openai", {**body, "service_tier": "default"})
    assert default.cost_usd == pytest.approx((2952 * 0.75 + 2048 * 0.075 + 300 * 4.5) / 1e6)
    _, nano = _priced(OpenAIChatTracker(), "openai", {**body, "model": "gpt-5-nano"})  # no priority price
    assert nano.cost_usd is None and nano.unpriced_reason == "unknown_service_tier"


def test_gpt_5_6_cache_writes_are_bucketed_and_priced_like_anthropic_writes():
    body = {"id": "resp_1", "object": "response", "model": "gpt-5.6-sol", "status": "completed", "service_tier": "default",
            "usage": {"input_tokens": 12000, "input_tokens_details": {"cached_tokens": 8000, "cache_write_tokens": 3000},
                      "output_tokens": 400, "output_tokens_details": {"reasoning_tokens": 100}, "total_tokens": 12400}}
    x, got = _priced(OpenAIResponsesTracker(), "openai", body)
    u = x.usage
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens, u.output_tokens) == (1000, 8000, 3000, 400)
    independent = extract_usage(body, provider_id="openai", api_flavor="responses").calc_price().total_price
    assert got.cost_usd == pytest.approx(float(independent))
    # gpt-5.6-sol from 2026-08-21: $4 input, writes 1.25x = $5, reads 0.1x = $0.40, $20 output.
    assert got.cost_usd == pytest.approx((1000 * 4 + 3000 * 5 + 8000 * 0.4 + 400 * 20) / 1e6)
    assert got.savings_usd == pytest.approx((11000 * 4 - 3000 * 5 - 8000 * 0.4) / 1e6)


def test_every_gpt_5_6_and_later_model_in_the_table_prices_cache_writes():
    """OpenAI bills writes at 1.25x input from GPT-5.6 on; a table entry without a write price
    would price them as plain input. (The row then says no_cache_write_price instead.)"""
    import re

    from genai_prices import data_snapshot

    openai = next(p for p in data_snapshot.get_snapshot().providers if p.id == "openai")
    newer = []
    for m in openai.models:
        v = re.match(r"gpt-(\d+)(?:\.(\d+))?", m.id)
        if v and (int(v[1]), int(v[2] or 0)) >= (5, 6):
            newer.append(m.id)
            rate = m.get_prices(__import__("datetime").datetime.now(__import__("datetime").UTC))
            assert rate.cache_write_mtok is not None, m.id
    assert len(newer) >= 4


def test_compaction_iterations_are_added_once_and_priced():
    # The compaction docs' example: the top level is the message iteration only.
    usage = {"input_tokens": 23000, "output_tokens": 1000,
             "iterations": [{"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
                            {"type": "message", "input_tokens": 23000, "output_tokens": 1000}]}
    x, got = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-opus-4-6", usage))
    u = x.usage
    assert (u.input_tokens, u.output_tokens) == (203000, 4500)  # not 226000 / 5500: counted once
    assert (u.extra_iterations, u.extra_input_tokens, u.extra_output_tokens) == (1, 180000, 3500)
    # Opus 4.6: $5 / $25 per MTok, flat across the 1M window; each iteration priced on its own.
    assert got.cost_usd == pytest.approx((203000 * 5 + 4500 * 25) / 1e6)
    assert got.savings_usd == pytest.approx(0)


def test_streamed_compaction_with_cache_tokens_in_the_iteration():
    frames = [
        {"type": "message_start", "message": {"id": "m", "model": "claude-sonnet-4-6", "usage": {"input_tokens": 0, "output_tokens": 1}}},
        {"type": "message_delta", "delta": {"stop_reason": "compaction"}, "usage": {
            "input_tokens": 0, "output_tokens": 0,
            "iterations": [{"type": "compaction", "input_tokens": 5000, "output_tokens": 300,
                            "cache_creation_input_tokens": 100, "cache_read_input_tokens": 4000}]}},
        {"type": "message_stop"},
    ]
    t = AnthropicTracker()
    for f in frames:
        t.feed_frame(f"event: {f['type']}\ndata: {json.dumps(f)}\n\n".encode())
    x = t.extract
    u = x.usage
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens, u.output_tokens) == (5000, 4000, 100, 300)
    got = price("anthropic", x.model, u, PriceFactors(), x.extras)
    assert got.cost_usd == pytest.approx((5000 * 3 + 4000 * 0.3 + 100 * 3.75 + 300 * 15) / 1e6)


def test_an_advisor_iteration_is_priced_at_its_own_models_rates():
    usage = {"input_tokens": 1000, "output_tokens": 200,
             "iterations": [{"type": "message", "model": None},
                            {"type": "advisor_message", "model": "claude-opus-4-8", "input_tokens": 4000, "output_tokens": 500}]}
    x, got = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-haiku-4-5", usage))
    assert (x.usage.input_tokens, x.usage.output_tokens) == (5000, 700)
    # haiku 4.5 $1/$5 for the message, opus 4.8 $5/$25 for the advisor call
    assert got.cost_usd == pytest.approx((1000 * 1 + 200 * 5 + 4000 * 5 + 500 * 25) / 1e6)


def test_a_malformed_iteration_count_makes_the_bucket_unknown_not_short():
    usage = {"input_tokens": 100, "output_tokens": 10, "iterations": [{"type": "compaction", "input_tokens": "lots", "output_tokens": 5}]}
    x, got = _priced(AnthropicTracker(), "anthropic", _anthropic_message("claude-sonnet-4-6", usage))
    assert x.usage.input_tokens is None and x.usage.output_tokens == 15
    assert got.cost_usd is None and got.unpriced_reason == "incomplete_usage"


def test_unknown_models_are_unpriced_with_a_reason():
    got = price("anthropic", "claude-mythos-5", Usage(input_tokens=10, output_tokens=1))
    assert got.cost_usd is None and got.savings_usd is None and got.unpriced_reason == "unknown_model"
    assert price("anthropic", None, Usage(input_tokens=1)).unpriced_reason == "no_model"
    assert price("anthropic", "claude-sonnet-4-6", Usage()).unpriced_reason == "no_usage"


def test_anthropic_version_parsing():
    assert anthropic_version("claude-opus-4-6-20260101") == (4, 6)
    assert anthropic_version("claude-opus-4-20250514") == (4, 0)
    assert anthropic_version("us.anthropic.claude-sonnet-5-5-v1:0") == (5, 5)
    assert anthropic_version("claude-3-5-sonnet") is None


def test_warm_up_never_raises_even_when_the_price_table_does(monkeypatch):
    import tokenpak_mitm.core.account.pricing as pricing_mod

    def broken(*args, **kwargs):
        raise RuntimeError("price table unreadable")

    monkeypatch.setattr(pricing_mod, "price", broken)
    pricing_mod.warm()  # the proxy starts anyway; the first real row reports its own pricing error
