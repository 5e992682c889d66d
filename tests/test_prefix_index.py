"""prefix_index: fingerprints of the cacheable prefix, and the bounded index that remembers them."""
from __future__ import annotations

import copy
import json
import random
import threading
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from spelling import BLOCKS, REQUESTS, TEXTS, raw_threshold, spell

from tokenpak_mitm.core.plan import prefix_index
from tokenpak_mitm.core.plan.cache_insert import _raw_blocks
from tokenpak_mitm.core.plan.jsonscan import agrees_with, scan
from tokenpak_mitm.core.plan.prefix_index import PrefixIndex, boundaries, first_difference, prompt_blocks

TOOLS = [{"name": f"t{i}", "description": "does a thing " * 20, "input_schema": {"type": "object"}} for i in range(3)]


def body(**fields):
    base = {"model": "claude-sonnet-4-6", "max_tokens": 10, "tools": TOOLS, "system": "You help. " * 50,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "doc " * 400}, {"type": "text", "text": "q1"}]}]}
    return {**copy.deepcopy(base), **fields}


def test_boundaries_follow_provider_order_and_grow():
    b = boundaries(body())
    assert [x.section for x in b] == ["tools"] * 3 + ["system"] + ["messages"] * 2
    assert [x.position for x in b] == list(range(6))
    assert all(x.tokens_est < y.tokens_est for x, y in pairwise(b))
    assert (b[-1].message, b[-1].block, b[-1].role) == (0, 1, "user")
    assert b[3].block is None  # string system: one block


def test_markers_and_string_form_do_not_change_digests():
    plain = body()
    marked = body()
    marked["messages"][0]["content"][0]["cache_control"] = {"type": "ephemeral"}
    marked["system"] = [{"type": "text", "text": plain["system"], "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert [x.digest for x in boundaries(plain)] == [x.digest for x in boundaries(marked)]


def test_shared_document_differs_only_at_the_question():
    a, b = boundaries(body()), boundaries(body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "doc " * 400}, {"type": "text", "text": "q2"}]}]))
    assert first_difference(a, b) == 5


def test_invalidating_parameters_change_only_their_sections():
    base = boundaries(body())
    thinking = boundaries(body(thinking={"type": "enabled", "budget_tokens": 2000}))
    speed = boundaries(body(speed="fast"))
    tools_changed = boundaries(body(tools=TOOLS[:2] + [{**TOOLS[2], "description": "other"}]))
    assert first_difference(base, thinking) == 4  # first messages block
    assert first_difference(base, speed) == 3  # the system section
    assert first_difference(base, tools_changed) == 2
    assert first_difference(base, boundaries(body(model="claude-opus-5"))) == 0


def test_openai_shapes():
    chat = boundaries({"model": "gpt-5.6", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, "openai_chat")
    assert [(x.section, x.message, x.block) for x in chat] == [("messages", 0, None), ("messages", 1, 0)]
    responses = boundaries({"model": "gpt-5.6", "instructions": "be brief", "input": "hello"}, "openai_responses")
    assert [x.section for x in responses] == ["system", "messages"]


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3), max_leaves=10))
@settings(max_examples=200)
def test_boundaries_never_raise_on_odd_shapes(junk):
    for api in ("anthropic", "openai_chat", "openai_responses", "gemini"):
        boundaries({"model": "m", "messages": junk, "tools": junk, "system": junk, "input": junk, "contents": junk}, api)


def test_continuation_and_branch_are_told_apart():
    index = PrefixIndex()
    first = boundaries(body())
    index.record([x.digest for x in first], 0.0)
    sibling = boundaries(body(messages=[{"role": "user", "content": [{"type": "text", "text": "doc " * 400}, {"type": "text", "text": "q2"}]}]))
    rec = index.record([x.digest for x in sibling], 1.0)
    assert rec.branch_of == first[4].digest and rec.continuation_of is None
    follow = body()
    follow["messages"] += [{"role": "assistant", "content": "answer"}, {"role": "user", "content": "more"}]
    rec = index.record([x.digest for x in boundaries(follow)], 30.0)
    assert rec.continuation_of == first[-1].digest
    (doc,) = index.stats([first[4].digest], 31.0)
    assert doc is not None and doc.seen == 3 and doc.branches == 1 and doc.clusters == ((0.0, 2), (30.0, 1))


def test_writes_are_in_flight_until_the_response_begins_and_expire():
    index = PrefixIndex()
    digests = [x.digest for x in boundaries(body())]
    rec = index.record(digests, 0.0, writes={4: "5m"})
    (s,) = index.stats([digests[4]], 1.0)
    assert s is not None and s.in_flight and not s.live(1.0)
    index.response_began(rec)
    (s,) = index.stats([digests[4]], 2.0)
    assert s is not None and s.live(2.0) and not s.live(301.0)


def test_entries_expire_after_the_horizon():
    index = PrefixIndex(horizon=3600.0)
    index.record([b"a" * 16, b"b" * 16], 0.0)
    index.record([b"c" * 16], 3000.0)
    assert index.stats([b"a" * 16, b"c" * 16], 3700.0)[0] is None
    assert len(index) == 1


def test_memory_bound_holds_under_100k_distinct_prefixes():
    index = PrefixIndex(max_entries=50_000)
    for i in range(100_000):
        index.record([i.to_bytes(16, "big")], float(i) * 0.001)
    assert len(index) == 50_000 and index.evicted == 50_000
    kept = index.stats([(99_999).to_bytes(16, "big"), (0).to_bytes(16, "big")], 100.0)
    assert kept[0] is not None and kept[1] is None  # least recently seen went first


def test_dump_and_load_keep_digests_and_timings_only():
    index = PrefixIndex()
    digests = [x.digest for x in boundaries(body())]
    index.response_began(index.record(digests, 10.0, writes={5: "1h"}))
    index.record(digests, 100.0)
    data = index.dump()
    assert b"doc" not in data and b"You help" not in data
    restored = PrefixIndex()
    assert restored.load(data, 120.0) == len(digests)
    (s,) = restored.stats([digests[5]], 120.0)
    assert s is not None and s.seen == 2 and s.cached_ttl == "1h" and s.live(120.0) and s.clusters == ((10.0, 1), (100.0, 1))


def test_concurrent_records_lose_nothing():
    index = PrefixIndex()
    shared = b"s" * 16

    def work(n: int) -> None:
        for i in range(500):
            index.record([shared, (n * 1000 + i).to_bytes(16, "big")], float(i))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (s,) = index.stats([shared], 500.0)
    assert s is not None and s.seen == 2000


@given(st.lists(st.tuples(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.floats(0, 5000), st.booleans()), max_size=60),
       st.integers(1, 30))
@settings(max_examples=150, deadline=None)
def test_any_sequence_of_requests_keeps_the_bound_and_the_counts(requests, cap):
    index = PrefixIndex(max_entries=cap, horizon=3600.0)
    now = 0.0
    for chain, gap, began in requests:
        now += gap
        digests = [n.to_bytes(16, "big") for n in dict.fromkeys(chain)]
        rec = index.record(digests, now, writes={len(digests) - 1: "5m"})
        if began:
            index.response_began(rec)
        assert len(index) <= cap
        for s in index.stats(digests, now):
            assert s is None or (s.seen >= 1 and s.ends <= s.seen and s.first_seen <= s.last_seen <= now
                                 and sum(n for _, n in s.clusters) <= s.seen)
    assert PrefixIndex(max_entries=cap).load(index.dump(), now) == len(index)


@pytest.mark.parametrize(("api", "request_"), [
    ("anthropic", {"model": "m", "tools": [{"name": "t"}], "system": [{"type": "text", "text": "s"}],
                   "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "tool_use", "id": "1", "name": "t", "input": {}}]}]}),
    ("openai_chat", {"model": "gpt-5", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "q"}]}]}),
    ("openai_responses", {"model": "gpt-5", "instructions": "s", "input": [{"role": "user", "content": "q"}, {"type": "function_call", "name": "f"}]}),
    ("gemini", {"systemInstruction": {"parts": [{"text": "s"}]}, "contents": [{"role": "user", "parts": [{"text": "q"}, {"text": "r"}]}]}),
])
def test_prompt_blocks_walks_exactly_what_boundaries_fingerprints(api, request_):
    walked = list(prompt_blocks(request_, api))
    bounds = boundaries(request_, api)
    assert len(walked) == len(bounds) > 0
    assert [(s, m, b, r) for s, m, b, r, _ in walked] == [(x.section, x.message, x.block, x.role) for x in bounds]


# ---- hashing from the client's bytes gives exactly the digests of re-serialising ---------------


@settings(max_examples=400, deadline=None)
@given(REQUESTS, st.integers(0, 2**32), st.booleans(), st.sampled_from([0, 8, 512]))
def test_hashing_the_clients_bytes_gives_the_same_digests(request_, seed, canonical, threshold):
    body = spell(request_, random.Random(seed), canonical).encode()
    parsed = json.loads(body)
    body_map = scan(body)
    assert agrees_with(parsed, body_map)
    raw = _raw_blocks(body, body_map, parsed)
    expected = boundaries(parsed)
    prefix_index._STEPS.clear()
    with raw_threshold(threshold):
        assert boundaries(parsed, raw=raw) == expected  # from the bytes
        assert boundaries(parsed, raw=_raw_blocks(body, body_map, parsed)) == expected  # from the step memo
        assert boundaries(parsed, "anthropic", 4.0, raw) == boundaries(parsed, "anthropic", 4.0)


@settings(max_examples=400, deadline=None)
@given(BLOCKS | TEXTS, st.integers(0, 2**32), st.booleans())
def test_canonical_from_raw_is_the_canonical_form_or_nothing(value, seed, canonical):
    raw = spell(value, random.Random(seed), canonical).encode()
    parsed = json.loads(raw)
    got = prefix_index.canonical_from_raw(parsed, raw)
    assert got is None or got == prefix_index._canonical(parsed)
    if (canonical and isinstance(value, dict) and value.get("type") in ("text", "input_text") and "cache_control" not in value
            and "\\u" not in raw.decode()):  # (a \\u00XX escape, for a rare control character, is left to the slow path)
        assert got is not None  # the common block takes the fast path


def test_step_memo_is_bounded_by_entries_and_bytes():
    memo = prefix_index._StepMemo(max_entries=3, max_bytes=100)
    for i in range(10):
        memo.put((b"h", b"r", bytes([i]) * 10), (b"d", i))
    assert len(memo._steps) == 3 and memo.get((b"h", b"r", bytes([9]) * 10)) == (b"d", 9)
    memo.put((b"h", b"r", b"x" * 60), (b"d", 60))
    assert memo._bytes <= 100
    memo.put((b"h", b"r", b"y" * 26), (b"d", 0))  # over a quarter of the bound: not kept
    assert memo.get((b"h", b"r", b"y" * 26)) is None
