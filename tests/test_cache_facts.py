"""cache_facts: the one per-model table the planner, the simulator and the savings tool share."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tokenpak_mitm.core.plan import cache_facts, cache_planner
from tokenpak_mitm.core.plan.cache_facts import (
    OPENAI_GPT56,
    OPENAI_LEGACY,
    facts_for,
    minimum_tokens,
)
from tokenpak_mitm.sim import cache_sim


@pytest.mark.parametrize("model, minimum, read", [
    ("claude-opus-5-5", 512, 0.05), ("claude-sonnet-5-5", 512, 0.05), ("claude-haiku-5-5", 512, 0.1),
    ("claude-fable-5-1", 512, 0.1), ("claude-mythos-5-1", 512, 0.1),
    ("claude-opus-5", 512, 0.1), ("claude-fable-5-20260301", 512, 0.1), ("claude-mythos-5", 512, 0.1),
    ("claude-sonnet-5", 1024, 0.1), ("claude-opus-4-8", 1024, 0.1), ("claude-sonnet-4-6", 1024, 0.1),
    ("claude-opus-4-7", 2048, 0.1), ("claude-mythos-preview", 2048, 0.1),
    ("claude-opus-4-6", 4096, 0.1), ("claude-haiku-4-5-20251001", 4096, 0.1),
    ("us.anthropic.claude-opus-4-5-20251101-v1:0", 4096, 0.1),
])
def test_anthropic_facts(model, minimum, read):
    facts = facts_for(model)
    assert (facts.provider, facts.minimum_tokens, facts.read) == ("anthropic", minimum, read)
    assert facts.write_multiplier("5m") == 1.25 and facts.write_multiplier("1h") == 2.0
    assert facts.max_breakpoints == 4 and facts.lookback_blocks == 20


def test_a_newer_point_release_is_not_its_parent():
    assert facts_for("claude-opus-5-5").family == "claude-opus-5-5"
    assert facts_for("claude-opus-4-9").assumption  # not claude-opus-4: unknown, fallback


@pytest.mark.parametrize("model, facts", [
    ("gpt-5.6", OPENAI_GPT56), ("gpt-5.6-mini-2026-09-01", OPENAI_GPT56), ("gpt-5.7", OPENAI_GPT56), ("gpt-6", OPENAI_GPT56),
    ("gpt-5.5", OPENAI_LEGACY), ("gpt-5", OPENAI_LEGACY), ("gpt-4o", OPENAI_LEGACY), ("o3", OPENAI_LEGACY),
])
def test_openai_generations(model, facts):
    assert facts_for(model) is facts


def test_openai_gpt56_charges_writes_and_has_no_lookback_limit():
    assert OPENAI_GPT56.write_multiplier("30m") == 1.25 and OPENAI_GPT56.read == 0.1
    assert OPENAI_GPT56.lookback_blocks is None and OPENAI_GPT56.ttls == ("30m",)
    assert OPENAI_LEGACY.write_multiplier("") == 1.0 and not OPENAI_LEGACY.explicit_markers
    assert OPENAI_LEGACY.cached_granularity == 128


@pytest.mark.parametrize("model, minimum", [("gemini-2.5-flash", 2048), ("gemini-3-pro", 4096), ("models/gemini-3.1-pro", 4096)])
def test_gemini_minimums(model, minimum):
    assert minimum_tokens(model, "gemini") == minimum


def test_planner_and_simulator_read_the_same_table():
    for facts in cache_facts.ANTHROPIC:
        assert cache_planner.minimum_cacheable_tokens(facts.family) == facts.minimum_tokens
        assert cache_sim.min_cacheable_tokens(facts.family) == facts.minimum_tokens
    assert cache_planner.minimum_cacheable_tokens("claude-next") == cache_sim.min_cacheable_tokens("claude-next")


def test_every_value_has_a_source_comment():
    source = Path(cache_facts.__file__).read_text()
    for line in source.splitlines():
        if re.match(r"\s*(_claude|CacheFacts)\(\"", line):
            assert "#" in line, line


def test_missing_facts_ttl_parsing_and_the_openai_breakpoint_window():
    from tokenpak_mitm.core.plan.cache_facts import OPENAI_GPT56, missing_facts, ttl_seconds

    assert missing_facts("claude-sonnet-4-6", "anthropic") is False
    assert missing_facts("claude-nova-7", "anthropic") and missing_facts("claude-nova-7")
    assert missing_facts("gpt-9", "openai") is False and missing_facts("gpt-9") is False  # every GPT maps to a documented entry
    assert missing_facts("gemini-9-pro", "gemini") and not missing_facts("gemini-2.5-flash", "gemini")
    assert missing_facts(None, "anthropic") is False and missing_facts("x", "deepseek") is False
    assert (ttl_seconds("30m"), ttl_seconds("24h"), ttl_seconds("1h")) == (1800.0, 86400.0, 3600.0)
    assert ttl_seconds("in_memory") is None and ttl_seconds("0m") is None and ttl_seconds(30) is None
    assert OPENAI_GPT56.breakpoint_window == 80 and OPENAI_GPT56.lookback_blocks is None
