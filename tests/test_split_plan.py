"""split_plan: the learning planner split between the worker process and the proxy decides exactly
as in-process planning does, and leaves the memory in the same state.

Each example is a run of related requests (continued, repeated, branched, after gaps from half a
second to over an hour), planned twice: `insert_markers` with memory A, and the three steps the
proxy takes for a many-block body (digests, snapshot, plan against it, record) with memory B.
"""
from __future__ import annotations

import copy
import gzip
import json
import math
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_cache_insert import MESSAGES, requests
from test_openai_cache import DOC
from test_openai_cache import MESSAGE as OPENAI_MESSAGE

from tokenpak_mitm.core.plan.cache_insert import CacheOptions, InsertResult, insert_markers, remove_spans
from tokenpak_mitm.core.plan.learning_planner import Memory, observe_usage
from tokenpak_mitm.core.plan.openai_cache import insert_openai_breakpoint
from tokenpak_mitm.core.plan.prefix_index import PrefixIndex, boundaries
from tokenpak_mitm.core.plan.split_plan import (
    Digests,
    Snapshot,
    apply_record,
    apply_record_stepwise,
    plan_openai_with_snapshot,
    plan_with_snapshot,
    prompt_digests,
    take_snapshot,
    trailer_drops,
)

OPTIONS = st.sampled_from([CacheOptions(ttl="auto"), CacheOptions(), CacheOptions(ttl="1h"), CacheOptions(mode="top-level")])


def _split(body: bytes, encoding: str | None, api: str, plan: Callable[[Snapshot], Any], memory: Memory, now: float,
           step: int) -> InsertResult:
    """What the addon's `_plan_split` does, the worker's two calls made in this process (`plan`: the second)."""
    digests = prompt_digests(body, encoding, api)
    ds = digests.split() if digests is not None else []
    known = b"".join(take_snapshot(memory, ds[i:i + step], now) for i in range(0, len(ds), step))
    bpt = memory.calibration.bytes_per_token(digests.model if digests is not None else None)
    result, call = plan(Snapshot(known, bpt, trailer_drops(memory, ds)))
    *pauses, done = apply_record_stepwise(memory, ds, result, call, step)
    assert all(p is None for p in pauses) and done is not None
    return done


def split(body: bytes, encoding: str | None, opts: CacheOptions, memory: Memory, now: float, step: int) -> InsertResult:
    return _split(body, encoding, "anthropic", lambda snap: plan_with_snapshot(body, encoding, opts, snap, now), memory, now, step)


@st.composite
def runs(draw):
    """Related requests with the gaps between them: a conversation that goes on, repeats and branches."""
    request = draw(requests())
    out, now = [], 1_000.0
    for _ in range(draw(st.integers(1, 5))):
        out.append((copy.deepcopy(request), now))
        now += draw(st.sampled_from([0.5, 3.0, 90.0, 400.0, 4_000.0]))
        move = draw(st.sampled_from(["continue", "continue", "repeat", "branch"]))
        if move == "continue":
            request["messages"] = request["messages"] + draw(MESSAGES)
        elif move == "branch":
            keep = draw(st.integers(0, len(request["messages"]) - 1))
            request["messages"] = request["messages"][:keep] + draw(MESSAGES)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=runs(), opts=OPTIONS, step=st.sampled_from([1, 3, 2048]), gzipped=st.booleans(), data=st.data())
def test_split_planning_decides_and_remembers_exactly_as_in_process_planning(run, opts, step, gzipped, data):
    in_process, split_memory = Memory(), Memory()
    for request, now in run:
        raw = json.dumps(request).encode()
        body, encoding = (gzip.compress(raw), "gzip") if gzipped else (raw, None)
        a = insert_markers(body, encoding, opts, in_process, now)
        b = split(body, encoding, opts, split_memory, now, step)
        assert b == a  # body, spans, decision, reasons and the ticket (its Recorded included)
        if a.spans:
            assert remove_spans(gzip.decompress(b.body) if gzipped else b.body, b.spans) == raw
        assert split_memory.index.dump() == in_process.index.dump()
        digests = [x.digest for x in boundaries(request)]
        assert split_memory.index.stats(digests, now) == in_process.index.stats(digests, now)  # in-flight marks too
        if a.ticket is not None and data.draw(st.booleans()):  # the response side, on both
            written = data.draw(st.sampled_from([0, 100]))  # 0: the provider cached nothing, the entries are forgotten
            for memory, ticket in ((in_process, a.ticket), (split_memory, b.ticket)):
                memory.index.response_began(ticket.recorded)
                # 2 bytes per token: the calibration moves away from its default for this model
                observe_usage(memory, ticket, prompt_tokens=ticket.prompt_bytes // 2, read_tokens=0, write_tokens=written)


def split_openai(body: bytes, encoding: str | None, api: str, memory: Memory, now: float, step: int) -> InsertResult:
    return _split(body, encoding, api, lambda snap: plan_openai_with_snapshot(body, encoding, api, snap, now), memory, now, step)


OPENAI_MESSAGES = st.lists(st.one_of(OPENAI_MESSAGE, st.just({"role": "user", "content": DOC[:1500]})), min_size=1, max_size=4)


@st.composite
def openai_runs(draw):
    """Related Chat Completions or Responses requests (same moves as `runs`), sometimes with a client cache field."""
    api = draw(st.sampled_from(["openai_chat", "openai_responses"]))
    key = "messages" if api == "openai_chat" else "input"
    model = draw(st.sampled_from(["gpt-5.6-sol", "gpt-5.6", "gpt-6-luna", "gpt-4o"]))
    extra = draw(st.sampled_from([{}, {}, {"prompt_cache_key": "k"}]))
    items = [{"role": "system", "content": DOC}, *draw(OPENAI_MESSAGES)]
    out, now = [], 1_000.0
    for _ in range(draw(st.integers(1, 5))):
        out.append(({"model": model, **extra, key: copy.deepcopy(items + [{"role": "user", "content": f"q {now}"}])}, now))
        now += draw(st.sampled_from([0.5, 3.0, 90.0, 400.0, 4_000.0]))
        move = draw(st.sampled_from(["continue", "continue", "repeat", "branch"]))
        if move == "continue":
            items = items + draw(OPENAI_MESSAGES)
        elif move == "branch":
            items = items[:draw(st.integers(1, len(items)))] + draw(OPENAI_MESSAGES)
    return api, out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run=openai_runs(), step=st.sampled_from([1, 3, 2048]), gzipped=st.booleans(), data=st.data())
def test_split_openai_planning_decides_and_remembers_exactly_as_in_process_planning(run, step, gzipped, data):
    api, requests_ = run
    in_process, split_memory = Memory(), Memory()
    for request, now in requests_:
        raw = json.dumps(request).encode()
        body, encoding = (gzip.compress(raw), "gzip") if gzipped else (raw, None)
        a = insert_openai_breakpoint(body, encoding, api, memory=in_process, now=now)
        b = split_openai(body, encoding, api, split_memory, now, step)
        assert b == a  # body, spans, decision, reasons and the ticket (its Recorded included)
        assert a.decision != "error"
        event(f"{api} {a.decision}")
        if a.spans:
            assert remove_spans(gzip.decompress(b.body) if gzipped else b.body, b.spans) == raw
        assert split_memory.index.dump() == in_process.index.dump()
        digests = [x.digest for x in boundaries(request, api)]
        assert split_memory.index.stats(digests, now) == in_process.index.stats(digests, now)
        if a.ticket is not None and data.draw(st.booleans()):
            written = data.draw(st.sampled_from([0, 100]))
            for memory, ticket in ((in_process, a.ticket), (split_memory, b.ticket)):
                memory.index.response_began(ticket.recorded)
                observe_usage(memory, ticket, prompt_tokens=ticket.prompt_bytes // 2, read_tokens=0, write_tokens=written)


def test_an_openai_body_the_planner_is_not_given_is_answered_without_a_record():
    """Unreadable, not an object, too old a model: no digests, no record, the in-process answer."""
    old = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": DOC}]}).encode()
    for body, encoding in ((b"not json", None), (b"\x1f\x8b broken", "gzip"), (b'["gpt-5.6"]', None), (old, None),
                           (b'{"model": "gpt-5.6", "messages": [', None)):
        for api in ("openai_chat", "openai_responses"):
            assert prompt_digests(body, encoding, api) is None
            result, call = plan_openai_with_snapshot(body, encoding, api, Snapshot(b"", 3.0), 1.0)
            assert call is None and result.body is body and result.spans == ()
            assert result == insert_openai_breakpoint(body, encoding, api, memory=Memory(), now=1.0)


def test_a_body_the_planner_cannot_read_is_answered_without_a_record():
    for body, encoding in ((b"not json", None), (b"\x1f\x8b broken", "gzip"), (b"[1, 2]", None)):
        assert prompt_digests(body, encoding) is None
        result, call = plan_with_snapshot(body, encoding, CacheOptions(), Snapshot(b"", 3.0), 1.0)
        assert call is None and result.body is body and result.spans == ()
        assert result == insert_markers(body, encoding, CacheOptions(), Memory(), 1.0)


def test_a_record_for_other_blocks_than_step_one_is_refused():
    """A mismatch means the worker planned another prompt than it fingerprinted: the addon's
    `_plan` then forwards the body unchanged with decision "error"."""
    body = json.dumps({"model": "claude-opus-5", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * 9000}]}).encode()
    result, call = plan_with_snapshot(body, None, CacheOptions(), Snapshot(b"", 3.0), 1.0)
    assert call is not None and call.count == 1
    try:
        apply_record(Memory(), Digests(b"", None), result, call)
    except ValueError as e:
        assert "other blocks" in str(e)
    else:
        raise AssertionError("a mismatched record was applied")


def test_exported_stats_read_back_equal_to_stats():
    """Every field, in-flight writes, a read entry without a TTL of its own, and unknown digests."""
    index = PrefixIndex()
    a = [bytes([i]) * 16 for i in range(6)]
    index.record(a[:4], 10.0, writes={3: "1h"}, read=None)
    index.record(a[:5], 12.5, writes={4: "5m"}, read=1)  # reads position 1: cached_until without a TTL
    index.record(a[:2] + [a[5]], 20.0)
    digests = [*a, b"\x09" * 16]
    stats = index.stats(digests, 30.0)
    back = PrefixIndex.stats_from_export(index.export_stats(digests, 30.0))
    assert [back.get(d) for d in digests] == list(stats)
    assert any(s is not None and s.in_flight for s in stats) and stats[-1] is None
    assert any(s is not None and s.cached_until is not None and s.cached_ttl is None for s in stats)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 12), st.floats(0, 5_000)), min_size=1, max_size=8),
       st.integers(1, 5))
def test_recording_in_slices_equals_recording_at_once(steps, step):
    whole, sliced = PrefixIndex(max_entries=20), PrefixIndex(max_entries=20)
    now = 0.0
    for start, length, gap in steps:
        now += gap
        digests = [bytes([(start + i) % 256]) * 16 for i in range(length)]
        writes = {length - 1: "5m"}
        a = whole.record(digests, now, writes=writes, read=0)
        *pauses, b = sliced.record_stepwise(digests, now, writes=writes, read=0, step=step)
        assert all(p is None for p in pauses) and len(pauses) == math.ceil(length / step) - 1
        assert a == b and whole.dump() == sliced.dump() and whole.evicted == sliced.evicted
