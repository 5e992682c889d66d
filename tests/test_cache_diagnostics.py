"""cache_diagnostics: the opt-in splice of diagnostics.previous_message_id (pure parts)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.plan.cache_diagnostics import BETA, PreviousResponses, beta_header, conversation_keys, prepare, splice
from tokenpak_mitm.core.plan.cache_insert import remove_spans

_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10)
_objects = st.dictionaries(st.text(max_size=6).filter(lambda k: k != "diagnostics"), _values, max_size=5)


@settings(max_examples=200, deadline=None)
@given(_objects, st.sampled_from([None, 0, 1, 2]), st.sampled_from(["", " ", "\n  "]), st.none() | st.text(min_size=1, max_size=12))
def test_the_splice_adds_one_member_and_removing_its_span_gives_the_clients_bytes(obj, indent, lead, previous):
    body = (lead + json.dumps(obj, indent=indent)).encode()
    prepared = prepare(body)
    assert prepared is not None and not prepared.client_sent
    done = splice(body, prepared, previous)
    assert json.loads(done.body) == {"diagnostics": {"previous_message_id": previous}, **obj}
    assert remove_spans(done.body, [done.span]) == body
    assert done.body[:done.span.offset] == body[:done.span.offset]  # nothing before the opening brace moves


def test_what_is_never_touched():
    assert prepare(b"[1, 2]") is None and prepare(b"not json") is None and prepare(b'"s"') is None
    body = '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    assert json.loads(body.encode("utf-16")) and prepare(body.encode("utf-16")) is None  # json takes UTF-16 bytes: a splice would tear it
    assert prepare(body.encode("utf-16-le")) is None and prepare(b"\xef\xbb\xbf" + body.encode()) is None
    own = prepare(b'{"model": "m", "diagnostics": {"previous_message_id": null}, "messages": []}')
    assert own is not None and own.client_sent


def test_beta_header():
    assert beta_header(None) == BETA and beta_header("  ") == BETA
    assert beta_header("interleaved-thinking-2025-05-14") == "interleaved-thinking-2025-05-14," + BETA
    assert beta_header(f"a, {BETA}") is None


def test_conversation_keys_follow_the_history_not_markers_or_system_messages():
    turn1 = {"model": "m", "messages": [{"role": "user", "content": "q1"}]}
    turn2 = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "q1", "cache_control": {"type": "ephemeral"}}]},
                                        {"role": "system", "content": "be brief"},
                                        {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]}
    k1, k2 = conversation_keys(turn1), conversation_keys(turn2)
    assert len(k2) == 3 and k2[0] == k1[-1]  # a string and its one-block list, marker or not, are the same turn
    other_model = conversation_keys({**turn1, "model": "n"})
    assert other_model[-1] != k1[-1]
    assert conversation_keys({"messages": "x"}) == () and conversation_keys([]) == ()


def test_previous_responses_are_per_scope_longest_first_and_bounded():
    memory = PreviousResponses(cap=2)
    memory.note("s", b"k1", "msg_1")
    memory.note("s", b"k3", "msg_3")
    assert memory.lookup("s", [b"k1", b"k2", b"k3", b"k4"]) == "msg_3"
    assert memory.lookup("other", [b"k1"]) is None
    memory.note("s", b"k5", "msg_5")  # k1 was the least recently used
    assert len(memory) == 2 and memory.lookup("s", [b"k1"]) is None


def test_a_side_request_under_the_same_history_is_not_named_for_the_conversations_next_turn():
    """Claude Code resends a conversation's messages with another system prompt (a topic check):
    the next turn names the response of its own system prompt; a changed system prompt still finds one."""
    main_turn = {"model": "m", "system": "You are Claude Code.", "tools": [{"name": "t"}], "messages": [{"role": "user", "content": "q1"}]}
    side = {**main_turn, "system": "Is this a new topic?", "tools": []}
    a, b = (prepare(json.dumps(r).encode()) for r in (main_turn, side))
    assert a is not None and b is not None and a.keys == b.keys and a.flavor != b.flavor
    memory = PreviousResponses()
    memory.note("s", a.keys[-1], "msg_main", a.flavor)
    memory.note("s", b.keys[-1], "msg_side", b.flavor)  # answered after the main turn
    nxt = prepare(json.dumps({**main_turn, "messages": [*main_turn["messages"], {"role": "assistant", "content": "a1"},
                                                         {"role": "user", "content": "q2"}]}).encode())
    assert nxt is not None and memory.lookup("s", nxt.keys, nxt.flavor) == "msg_main"
    edited = prepare(json.dumps({**main_turn, "system": "You are Claude Code. Today is Monday."}).encode())
    assert edited is not None and memory.lookup("s", edited.keys, edited.flavor) == "msg_side"  # none of its flavor: the most recent


def test_openai_responses_are_read_and_spliced_the_same_way():
    from tokenpak_mitm.core.plan.cache_diagnostics import splice_openai

    stateless = {"model": "gpt-5.6", "input": [{"role": "user", "content": "q1"}, {"type": "function_call_output", "call_id": "c", "output": "x"}]}
    body = json.dumps(stateless).encode()
    prepared = prepare(body, "openai_responses")
    assert prepared is not None and not prepared.client_sent and len(prepared.keys) == 2 and prepared.model == "gpt-5.6"
    done = splice_openai(body, prepared, "resp_1")
    assert json.loads(done.body) == {"prompt_cache_options": {"comparison_response_id": "resp_1"}, **stateless}
    assert remove_spans(done.body, [done.span]) == body
    chained = prepare(json.dumps({"model": "gpt-5.6", "previous_response_id": "resp_0", "input": "more"}).encode(), "openai_responses")
    assert chained is not None and chained.previous_response_id == "resp_0" and chained.keys == ()
    own = prepare(json.dumps({**stateless, "prompt_cache_options": {"mode": "explicit"}}).encode(), "openai_responses")
    assert own is not None and own.client_sent  # an object the client (or the planner) wrote is never edited
