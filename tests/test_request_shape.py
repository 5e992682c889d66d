"""request_shape: the per-block view of a prompt the session tracker compares (properties)."""

from __future__ import annotations

import copy
from typing import Any

from dialect_helpers import ANY_JSON
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.account.request_shape import mask_volatile, shape_of
from tokenpak_mitm.core.plan.prefix_index import boundaries

text = st.text(min_size=1, max_size=30)
block = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, text),
    st.builds(lambda t, i: {"type": "tool_result", "tool_use_id": f"id{i}", "content": [{"type": "text", "text": t}]}, text, st.integers(0, 9)),
)
content = st.one_of(text, st.lists(block, min_size=1, max_size=4))
message = st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["user", "assistant"]), content)
request = st.builds(
    lambda sys, msgs, tools: {"model": "claude-sonnet-4-6", "max_tokens": 5, "system": sys, "messages": msgs, "tools": tools},
    st.one_of(text, st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), min_size=1, max_size=3)),
    st.lists(message, min_size=1, max_size=6),
    st.lists(st.builds(lambda n: {"name": n, "input_schema": {"type": "object"}}, text), max_size=3),
)


def _mark_everything(req: dict[str, Any], ttl: str | None) -> dict[str, Any]:
    out = copy.deepcopy(req)
    marker = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    for tool in out["tools"]:
        tool["cache_control"] = marker
    if isinstance(out["system"], list):
        for b in out["system"]:
            b["cache_control"] = marker
    for m in out["messages"]:
        if isinstance(m["content"], list):
            for b in m["content"]:
                b["cache_control"] = marker
    out["cache_control"] = marker
    return out


@settings(max_examples=150, deadline=None)
@given(request, st.sampled_from([None, "5m", "1h"]))
def test_markers_change_no_fingerprint_and_are_read_back(req: dict[str, Any], ttl: str | None):
    plain, marked = shape_of(req), shape_of(_mark_everything(req, ttl))
    assert plain is not None and marked is not None
    key = [(b.prefix, b.digest, b.masked, b.tokens, b.section, b.index) for b in plain.blocks]
    assert key == [(b.prefix, b.digest, b.masked, b.tokens, b.section, b.index) for b in marked.blocks]
    assert plain.turn_keys == marked.turn_keys
    assert not plain.marked and marked.marked and marked.top_level_ttl == (ttl or "5m")
    assert [b.prefix for b in plain.blocks] == [b.digest for b in boundaries(req)]  # the one fingerprint scheme


@settings(max_examples=150, deadline=None)
@given(request)
def test_a_system_change_keeps_the_conversation_key_and_a_message_change_does_not(req: dict[str, Any]):
    other = copy.deepcopy(req)
    other["system"] = "something else entirely"
    a, b = shape_of(req), shape_of(other)
    assert a is not None and b is not None and a.turn_keys == b.turn_keys
    edited = copy.deepcopy(req)
    edited["messages"][0]["content"] = "edited first message"
    c = shape_of(edited)
    assert c is not None
    if req["messages"][0]["content"] != "edited first message":
        assert c.turn_keys[0] != a.turn_keys[0]


@settings(max_examples=200, deadline=None)
@given(ANY_JSON)
def test_any_json_gives_a_shape_or_none_and_never_raises(value: Any):
    for api in ("anthropic", "openai_chat", "openai_responses", "gemini"):
        shape = shape_of(value, api)
        assert shape is None or all(b1.position < b2.position for b1, b2 in zip(shape.blocks, shape.blocks[1:]))


def test_volatile_values_are_masked_and_words_are_not():
    assert mask_volatile("Today is Monday, 30 November 2026, 10:00:01") == mask_volatile("Today is Tuesday, 1 December 2026, 11:59:59")
    assert mask_volatile("id 1b4e28ba-2fa1-11d2-883f-0016d3cca427") == mask_volatile("id 6fa459ea-ee8a-3ca4-894e-db77e160355e")
    assert mask_volatile("Answer in French.") != mask_volatile("Answer in German.")


# ---- the shape from the client's bytes (planning's byte map) is the shape ------------------------

import json  # noqa: E402
import random  # noqa: E402

from spelling import REQUESTS, raw_threshold, spell  # noqa: E402

from tokenpak_mitm.core.account import request_shape
from tokenpak_mitm.core.plan import prefix_index  # noqa: E402
from tokenpak_mitm.core.plan.cache_insert import _raw_blocks  # noqa: E402
from tokenpak_mitm.core.plan.jsonscan import agrees_with, scan  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(REQUESTS, st.integers(0, 2**32), st.booleans(), st.sampled_from([0, 512]))
def test_shape_from_the_clients_bytes_is_the_same(req, seed, canonical, threshold):
    body = spell(req, random.Random(seed), canonical).encode()
    parsed = json.loads(body)
    body_map = scan(body)
    assert agrees_with(parsed, body_map)
    expected = shape_of(parsed)
    prefix_index._STEPS.clear()
    request_shape._DIGESTS.clear()
    request_shape._MASKED_CACHE.clear()
    with raw_threshold(threshold):
        assert shape_of(parsed, "anthropic", _raw_blocks(body, body_map, parsed)) == expected  # computed from the bytes
        assert shape_of(parsed, "anthropic", _raw_blocks(body, body_map, parsed)) == expected  # remembered


@settings(max_examples=200, deadline=None)
@given(REQUESTS, st.integers(0, 2**32), st.booleans(), st.sampled_from(["anthropic", "openai_chat", "openai_responses"]),
       st.sampled_from([0, 512]))
def test_parse_shape_is_json_loads_then_shape_of(req, seed, canonical, api, threshold):
    body = spell(req, random.Random(seed), canonical).encode()
    parsed = json.loads(body)
    expected = (parsed, shape_of(parsed, api))
    request_shape._DIGESTS.clear()
    with raw_threshold(threshold):
        assert request_shape.parse_shape(body, api) == expected
        assert request_shape.parse_shape(body, api) == expected  # remembered
        assert request_shape.parse_shape(body + b"x", api) == (None, None)
