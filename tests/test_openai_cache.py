"""OpenAI explicit breakpoints: where they go, that they are pure insertions, and the stand-down."""

from __future__ import annotations

import gzip
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.cache_insert import remove_spans
from tokenpak_mitm.openai_cache import (
    client_cache_fields,
    insert_openai_breakpoint,
    plan_openai,
)
from tokenpak_mitm.prefix_index import PrefixIndex

DOC = " ".join(f"Section {i}: the service keeps records for seven years and answers within two days." for i in range(100))


def chat(*messages: dict, model: str = "gpt-5.6-sol", **extra: object) -> dict:
    return {"model": model, **extra, "messages": list(messages)}


def breakpoints(obj: object) -> int:
    pending, n = [obj], 0
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            n += "prompt_cache_breakpoint" in node
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return n


def test_stateless_rule_marks_the_shared_document_not_the_question():
    req = chat({"role": "system", "content": DOC}, {"role": "user", "content": "What about section 4?"})
    plan = plan_openai(req, "openai_chat")
    assert (plan.decision, plan.targets, plan.reason) == ("inserted", ((0, None),), "stateless")


def test_stateless_rule_picks_the_last_non_assistant_block_before_the_final_user_turn():
    req = chat({"role": "system", "content": DOC}, {"role": "user", "content": [{"type": "text", "text": "first question"}]},
               {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "second question"})
    plan = plan_openai(req, "openai_chat")
    assert plan.targets == ((1, 0),)


def test_short_prompts_and_no_boundary_are_left_alone():
    assert plan_openai(chat({"role": "system", "content": "short"}, {"role": "user", "content": "q"}), "openai_chat").decision == "below_minimum"
    assert plan_openai(chat({"role": "user", "content": DOC}), "openai_chat").decision == "no_eligible_block"
    assert plan_openai(chat({"role": "system", "content": DOC}, {"role": "user", "content": "q"}, model="gpt-5.5"), "openai_chat").decision == "not_supported"


def test_history_moves_the_breakpoint_to_the_deepest_recurring_prefix():
    """A shared system prompt AND a shared document in the first user turn: without history the
    stateless rule can only mark the system prompt (the document sits in the final user turn);
    once the index has seen the document recur, the breakpoint moves onto it."""
    index = PrefixIndex()

    def request(q: int) -> dict:
        return chat({"role": "system", "content": DOC},
                    {"role": "user", "content": [{"type": "text", "text": DOC + " appendix"}, {"type": "text", "text": f"question {q}"}]})

    first = plan_openai(request(0), "openai_chat", index, now=0.0)
    assert (first.targets, first.reason) == (((0, None),), "stateless")
    insert_openai_breakpoint(json.dumps(request(0)).encode(), None, "openai_chat", index=index, now=0.0)
    second = plan_openai(request(1), "openai_chat", index, now=10.0)
    assert (second.targets, second.reason) == (((1, 0),), "recurring_prefix")


def test_responses_input_is_addressed_and_assistant_output_never_marked():
    req = {"model": "gpt-6-sol", "instructions": "be brief", "input": [
        {"role": "developer", "content": [{"type": "input_text", "text": DOC}]},
        {"type": "function_call_output", "call_id": "c1", "output": DOC},
        {"role": "assistant", "content": [{"type": "output_text", "text": DOC}]},
        {"role": "user", "content": [{"type": "input_text", "text": "go on"}]}]}
    body = json.dumps(req).encode()
    res = insert_openai_breakpoint(body, None, "openai_responses")
    sent = json.loads(res.body)
    assert res.decision == "inserted" and sent["input"][0]["content"][0]["prompt_cache_breakpoint"] == {"mode": "explicit"}
    assert breakpoints(sent) == 1 and sent["prompt_cache_key"].startswith("tpk-")


def test_gzip_body_is_spliced_and_reencoded():
    body = json.dumps(chat({"role": "system", "content": DOC}, {"role": "user", "content": "q"})).encode()
    res = insert_openai_breakpoint(gzip.compress(body), "gzip", "openai_chat")
    assert res.decision == "inserted"
    assert remove_spans(gzip.decompress(res.body), res.spans) == body


def test_prompt_cache_key_is_stable_for_a_shared_prefix():
    a = insert_openai_breakpoint(json.dumps(chat({"role": "system", "content": DOC}, {"role": "user", "content": "a"})).encode(), None, "openai_chat")
    b = insert_openai_breakpoint(json.dumps(chat({"role": "system", "content": DOC}, {"role": "user", "content": "b"})).encode(), None, "openai_chat")
    assert json.loads(a.body)["prompt_cache_key"] == json.loads(b.body)["prompt_cache_key"]


# ---- properties -------------------------------------------------------------------------------
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": TEXT})}),
)
MESSAGE = st.fixed_dictionaries({
    "role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
    "content": st.one_of(TEXT, st.just(DOC), st.lists(PART, max_size=3)),
})
CACHE_FIELD = st.sampled_from(["prompt_cache_key", "prompt_cache_options", "prompt_cache_retention", "part", "cache_control"])


def render(obj: dict, style: int) -> bytes:
    if style == 0:
        return json.dumps(obj).encode()
    if style == 1:
        return json.dumps(obj, indent=2, ensure_ascii=False).encode()
    return json.dumps(obj, separators=(",", ":")).encode()


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=6), style=st.integers(0, 2),
       model=st.sampled_from(["gpt-5.6-sol", "gpt-6-luna", "gpt-4o"]), history=st.booleans())
def test_output_is_the_client_body_plus_removable_spans_and_at_most_four_breakpoints(messages, style, model, history):
    body = render(chat(*messages, model=model), style)
    index = PrefixIndex() if history else None
    if index is not None:  # a previous request sharing the prefix
        insert_openai_breakpoint(body, None, "openai_chat", index=index, now=0.0)
    res = insert_openai_breakpoint(body, None, "openai_chat", index=index, now=60.0)
    if not res.spans:
        assert res.body is body
        return
    assert res.decision == "inserted" and model != "gpt-4o"
    assert remove_spans(res.body, res.spans) == body
    sent = json.loads(res.body)
    assert 1 == breakpoints(sent) <= 4
    for message in sent["messages"]:  # never on assistant output
        if message["role"] == "assistant":
            assert breakpoints(message) == 0


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=5), field=CACHE_FIELD, where=st.integers(0, 10), style=st.integers(0, 2))
def test_any_client_cache_field_means_the_body_is_untouched(messages, field, where, style):
    req = chat({"role": "system", "content": DOC}, *messages, {"role": "user", "content": "q"})
    if field in ("part", "cache_control"):
        target = req["messages"][where % len(req["messages"])]
        key = "prompt_cache_breakpoint" if field == "part" else "cache_control"
        target["content"] = [{"type": "text", "text": "x", key: {"mode": "explicit"} if field == "part" else {"type": "ephemeral"}}]
    else:
        req[field] = "24h" if field == "prompt_cache_retention" else ({"mode": "explicit"} if field == "prompt_cache_options" else "k")
    body = render(req, style)
    assert client_cache_fields(req) >= 1
    res = insert_openai_breakpoint(body, None, "openai_chat", index=PrefixIndex(), now=0.0)
    assert res.body is body and res.decision == "stood_down" and res.client_markers >= 1


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), api=st.sampled_from(["openai_chat", "openai_responses"]))
def test_garbage_never_raises_and_is_never_changed(data, api):
    res = insert_openai_breakpoint(b'{"model":"gpt-5.6-sol",' + data, None, api)
    if res.decision != "inserted":
        assert res.body == b'{"model":"gpt-5.6-sol",' + data


# ---- the learning planner's decisions, spliced by this module ------------------------------------
def test_the_learning_planners_positions_are_spliced_for_a_document_batch():
    from tokenpak_mitm.learning_planner import Memory
    from tokenpak_mitm.openai_cache import learning_decide

    memory = Memory()
    results = []
    for q in range(6):  # one shared document, a different question each time, a minute apart
        req = {"model": "gpt-5.6-sol", "input": [
            {"role": "developer", "content": [{"type": "input_text", "text": DOC}]},
            {"role": "user", "content": [{"type": "input_text", "text": f"question {q}: what does section {q} say?"}]}]}
        body = json.dumps(req).encode()
        res = insert_openai_breakpoint(body, None, "openai_responses", decide=learning_decide(memory, "openai_responses", 60.0 * q))
        assert res.body is body or remove_spans(res.body, res.spans) == body
        results.append(res)
    inserted = [r for r in results if r.decision == "inserted"]
    assert inserted, [r.decision for r in results]
    for r in inserted:
        sent = json.loads(r.body)
        assert sent["input"][0]["content"][0]["prompt_cache_breakpoint"] == {"mode": "explicit"}  # the shared document
        assert breakpoints(sent["input"][1]) == 0  # never the unique question
        assert 1 <= breakpoints(sent) <= 4


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=6), positions=st.lists(st.integers(-2, 30), max_size=6),
       explicit_only=st.booleans(), style=st.integers(0, 2))
def test_any_positions_either_splice_cleanly_or_leave_the_body_alone(messages, positions, explicit_only, style):
    body = render(chat(*messages), style)
    res = insert_openai_breakpoint(body, None, "openai_chat", decide=lambda _req: (positions, explicit_only))
    if not res.spans:
        assert res.body is body
        return
    assert remove_spans(res.body, res.spans) == body
    sent = json.loads(res.body)
    assert breakpoints(sent) == len(set(positions)) <= (4 if explicit_only else 3)
    assert ("prompt_cache_options" in sent) == explicit_only
    for message in sent["messages"]:
        if message["role"] == "assistant":
            assert breakpoints(message) == 0
