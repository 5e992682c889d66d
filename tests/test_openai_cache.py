"""OpenAI explicit breakpoints: where they go, that they are pure insertions, and the stand-down."""

from __future__ import annotations

import gzip
import json

from hypothesis import event, given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.plan.cache_insert import remove_spans
from tokenpak_mitm.core.plan.learning_planner import Memory
from tokenpak_mitm.core.plan.openai_cache import client_cache_fields, insert_openai_breakpoint, plan_positions
from tokenpak_mitm.core.plan.openai_eligibility import breakpoint_eligible
from tokenpak_mitm.core.plan.prefix_index import boundaries

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


def marked_at(res) -> list[tuple[int, int | None]]:
    """(message, part) of every breakpoint in a spliced Chat body (part None: a wrapped string)."""
    sent = json.loads(res.body)
    return [(i, j) for i, m in enumerate(sent["messages"]) if isinstance(m.get("content"), list)
            for j, part in enumerate(m["content"]) if "prompt_cache_breakpoint" in part]


def test_without_history_the_shared_document_is_marked_not_the_question():
    body = json.dumps(chat({"role": "system", "content": DOC}, {"role": "user", "content": "What about section 4?"})).encode()
    res = insert_openai_breakpoint(body, None, "openai_chat")
    assert res.decision == "inserted" and marked_at(res) == [(0, 0)]  # the string content, wrapped
    assert json.loads(res.body)["messages"][0]["content"] == [{"type": "text", "text": DOC, "prompt_cache_breakpoint": {"mode": "explicit"}}]
    assert [n.reason for n in res.notes] == ["no_history"] and res.ticket is not None


def test_without_history_the_last_eligible_block_before_the_final_user_turn_is_marked():
    req = chat({"role": "system", "content": DOC}, {"role": "user", "content": [{"type": "text", "text": "first question"}]},
               {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "second question"})
    res = insert_openai_breakpoint(json.dumps(req).encode(), None, "openai_chat")
    assert marked_at(res) == [(1, 0)]


def test_short_prompts_and_no_boundary_are_left_alone():
    def decision(*messages: dict, model: str = "gpt-5.6-sol") -> str:
        return insert_openai_breakpoint(json.dumps(chat(*messages, model=model)).encode(), None, "openai_chat").decision
    assert decision({"role": "system", "content": "short"}, {"role": "user", "content": "q"}) == "below_minimum"
    assert decision({"role": "user", "content": DOC}) == "no_eligible_block"
    assert decision({"role": "system", "content": DOC}, {"role": "user", "content": "q"}, model="gpt-5.5") == "not_supported"


def test_history_moves_the_breakpoint_to_the_shared_document():
    """A shared system prompt AND a shared document in the first user turn, then a new question:
    with no history only the system prompt can be marked (the document sits in the final user
    turn); once the proxy's memory has seen requests share the document, the breakpoint is on it
    and the unique question is never marked."""
    memory = Memory()

    def request(q: int) -> bytes:
        return json.dumps(chat({"role": "system", "content": DOC},
                               {"role": "user", "content": [{"type": "text", "text": DOC + " appendix"},
                                                            {"type": "text", "text": f"question {q}"}]})).encode()

    results = []
    for q in range(4):
        res = insert_openai_breakpoint(request(q), None, "openai_chat", memory=memory, now=30.0 * q)
        assert res.ticket is not None
        memory.index.response_began(res.ticket.recorded)
        results.append(res)
    assert marked_at(results[0]) == [(0, 0)]
    for res in results[2:]:
        assert res.decision == "inserted" and (1, 0) in marked_at(res) and (1, 1) not in marked_at(res)


def test_tool_results_may_carry_a_breakpoint_in_both_apis():
    """Tool-result content is eligible (provider facts: "system, user and tool-result content");
    the planner, the splice and the simulator all say so through one function."""
    responses = {"model": "gpt-5.6", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "go"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": DOC}]},
        {"type": "function_call_output", "call_id": "c2", "output": DOC},
        {"role": "assistant", "content": [{"type": "output_text", "text": DOC}]},
        {"type": "reasoning", "content": [{"type": "reasoning_text", "text": DOC}]},
        {"role": "user", "content": "next"}]}
    bounds = boundaries(responses, "openai_responses")
    eligible = [(b.message, b.block) for b in bounds if breakpoint_eligible(responses, "openai_responses", b)]
    assert eligible == [(0, 0), (2, 0), (6, None)]  # never the call, the string output, assistant output or reasoning
    body = json.dumps(responses).encode()
    position = next(b.position for b in bounds if b.message == 2)
    res = insert_openai_breakpoint(body, None, "openai_responses", decide=lambda _req: ([position], False))
    sent = json.loads(res.body)
    assert res.decision == "inserted" and sent["input"][2]["output"][0]["prompt_cache_breakpoint"] == {"mode": "explicit"}
    assert remove_spans(res.body, res.spans) == body
    chat_req = chat({"role": "system", "content": "be brief"}, {"role": "user", "content": "read the file"},
                    {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": DOC}]},
                    {"role": "user", "content": "and now?"})
    bounds = boundaries(chat_req, "openai_chat")
    tool = next(b.position for b in bounds if b.message == 3)
    assert plan_positions(chat_req, "openai_chat", [tool]).decision == "inserted"
    res = insert_openai_breakpoint(json.dumps(chat_req).encode(), None, "openai_chat")  # no history: the tool result
    assert marked_at(res) == [(3, 0)]


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
    memory = Memory() if history else None
    if memory is not None:  # previous requests sharing the prefix
        for t in (0.0, 30.0):
            insert_openai_breakpoint(body, None, "openai_chat", memory=memory, now=t)
    res = insert_openai_breakpoint(body, None, "openai_chat", memory=memory, now=60.0)
    if not res.spans:
        assert res.body is body
        return
    assert res.decision == "inserted" and model != "gpt-4o"
    assert remove_spans(res.body, res.spans) == body
    sent = json.loads(res.body)
    assert breakpoints(sent) <= (4 if "prompt_cache_options" in sent else 3)
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
    memory = Memory()
    for t in (0.0, 10.0):  # with or without history
        res = insert_openai_breakpoint(body, None, "openai_chat", memory=memory, now=t)
        assert res.body is body and res.decision == "stood_down" and res.client_markers >= 1


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), api=st.sampled_from(["openai_chat", "openai_responses"]))
def test_garbage_never_raises_and_is_never_changed(data, api):
    res = insert_openai_breakpoint(b'{"model":"gpt-5.6-sol",' + data, None, api)
    if res.decision != "inserted":
        assert res.body == b'{"model":"gpt-5.6-sol",' + data


# ---- the learning planner's decisions, spliced by this module ------------------------------------
def test_the_learning_planners_positions_are_spliced_for_a_document_batch():
    memory = Memory()
    results = []
    for q in range(6):  # one shared document, a different question each time, a minute apart
        req = {"model": "gpt-5.6-sol", "input": [
            {"role": "developer", "content": [{"type": "input_text", "text": DOC}]},
            {"role": "user", "content": [{"type": "input_text", "text": f"question {q}: what does section {q} say?"}]}]}
        body = json.dumps(req).encode()
        res = insert_openai_breakpoint(body, None, "openai_responses", memory=memory, now=60.0 * q)
        assert res.body is body or remove_spans(res.body, res.spans) == body
        assert res.ticket is not None
        memory.index.response_began(res.ticket.recorded)
        results.append(res)
    assert all(r.decision == "inserted" for r in results), [r.decision for r in results]
    for r in results:
        sent = json.loads(r.body)
        assert sent["input"][0]["content"][0]["prompt_cache_breakpoint"] == {"mode": "explicit"}  # the shared document
        assert breakpoints(sent["input"][1]) == 0  # never the unique question
        assert 1 <= breakpoints(sent) <= 4
    assert any(n.reason == "shared_prefix" for n in results[-1].notes)


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


@settings(max_examples=150, deadline=None)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=6), steps=st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0.5, 30.0, 400.0])), max_size=4),
       style=st.integers(0, 2))
def test_whatever_the_planner_decides_is_exactly_what_goes_upstream(messages, steps, style):
    """Parity as a property: with any history, the splice sends the planner's positions (read back
    from the bytes, as the simulator reads them) and explicit-only mode, or the planner chose nothing."""
    from tokenpak_mitm.core.plan import learning_planner
    from tokenpak_mitm.sim.cache_sim import analyse_openai

    live, shadow = Memory(), Memory()
    now, current = 0.0, list(messages)
    for grow, gap in [(0, 0.0), *steps]:
        now += gap
        current = current + [{"role": "user", "content": DOC[: 200 * (grow + 1)]}] * grow
        request = chat(*current, {"role": "user", "content": f"now {now}"})
        body = render(request, style)
        res = insert_openai_breakpoint(body, None, "openai_chat", memory=live, now=now)
        plan, ticket = learning_planner.plan_openai(json.loads(body), "openai_chat", shadow, now)
        assert res.decision != "error"
        event(f"{plan.decision} {len(plan.positions)} explicit_only={plan.explicit_only}")
        if plan.decision == "inserted":
            sent = analyse_openai(json.loads(res.body), "openai_chat")
            assert (res.decision, sent.explicit, sent.explicit_only) == ("inserted", plan.positions, plan.explicit_only)
            assert remove_spans(res.body, res.spans) == body
        else:
            assert res.body is body and res.decision == plan.decision
        for memory, t in ((live, res.ticket), (shadow, ticket)):
            if t is not None:
                memory.index.response_began(t.recorded)


# ---- the one pass: the client's bytes of each block, proven to be that block ---------------------
# `_insert` parses and maps the body in one pass (`jsonscan.parse_and_scan`) and hands the planner
# the client's bytes of every block (`_raw_blocks`), which `prefix_index.boundaries` hashes where
# they are canonical. A block given the wrong bytes would fingerprint wrongly and corrupt the
# planner's memory, so: every address holds exactly its block, for every item shape the planner
# fingerprints and any spelling of the body, and the result is the two-pass path's, field for field.

import random  # noqa: E402
from contextlib import contextmanager  # noqa: E402

from spelling import raw_threshold, spell  # noqa: E402

from tokenpak_mitm.core.plan import (
    openai_cache,  # noqa: E402
    prefix_index,
)
from tokenpak_mitm.core.plan.jsonscan import agrees_with, parse_and_scan  # noqa: E402
from tokenpak_mitm.core.plan.prefix_index import prompt_blocks  # noqa: E402

S_TEXT = st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(["", 'a "q" \\ / \n\t\x01 é ☃ 𝄞', "instructions", "input"])
LONG = st.builds(lambda words, n: (" ".join(words) + " ") * n,
                 st.lists(st.sampled_from(["cache", "prefix", 'quote"d', "back\\slash", "line\n", "tab\t", "é", "☃", "/", "𝄞"]),
                          min_size=1, max_size=5), st.integers(20, 700))
ANY_TEXT = S_TEXT | LONG
S_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False) | S_TEXT,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(S_TEXT, inner, max_size=3), max_leaves=6)
CALL = st.builds(lambda i, n, a: {"id": i, "type": "function", "function": {"name": n, "arguments": a}}, S_TEXT, S_TEXT, S_TEXT)
CHAT_PART = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, ANY_TEXT),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u, "detail": "auto"}}, S_TEXT),
    st.builds(lambda d: {"type": "input_audio", "input_audio": {"data": d, "format": "wav"}}, S_TEXT),
    S_JSON,
)
CHAT_MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
                           "content": ANY_TEXT | st.none() | st.lists(CHAT_PART, max_size=3)},
                          optional={"name": S_TEXT}),
    st.fixed_dictionaries({"role": st.just("assistant"), "tool_calls": st.lists(CALL, min_size=1, max_size=2)},
                          optional={"content": st.none() | S_TEXT, "refusal": st.none()}),
    st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": S_TEXT, "content": ANY_TEXT | st.lists(CHAT_PART, max_size=2)}),
    S_JSON,
)
CHAT_TOOL = st.builds(lambda n, d, p: {"type": "function", "function": {"name": n, "description": d, "parameters": p}}, S_TEXT, ANY_TEXT, S_JSON) | S_JSON
CHAT_BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-5.6", "gpt-5.6-sol", "gpt-6-luna"]), "messages": st.lists(CHAT_MESSAGE, max_size=6)},
    optional={"tools": st.lists(CHAT_TOOL, max_size=3), "temperature": st.floats(0, 2), "tool_choice": st.just("auto"),
              "max_completion_tokens": st.integers(1, 4096), "stream": st.booleans()},
)
RESPONSES_PART = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, ANY_TEXT),
    st.builds(lambda t: {"text": t, "type": "input_text"}, ANY_TEXT),  # another key order: not the exact canonical form
    st.builds(lambda t: {"type": "output_text", "text": t, "annotations": []}, ANY_TEXT),
    st.builds(lambda u: {"type": "input_image", "image_url": u, "detail": "auto"}, S_TEXT),
    st.builds(lambda f: {"type": "input_file", "file_id": f}, S_TEXT),
    S_JSON,
)
RESPONSES_ITEM = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant"]),
                           "content": ANY_TEXT | st.lists(RESPONSES_PART, max_size=3)},
                          optional={"type": st.just("message"), "id": S_TEXT, "status": st.just("completed")}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": S_TEXT, "name": S_TEXT, "arguments": ANY_TEXT},
                          optional={"id": S_TEXT}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": S_TEXT,
                           "output": ANY_TEXT | st.lists(RESPONSES_PART, max_size=3)}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": S_TEXT,  # content AND output: content wins
                           "output": st.lists(RESPONSES_PART, max_size=2), "content": ANY_TEXT | st.lists(RESPONSES_PART, max_size=2)}),
    st.fixed_dictionaries({"type": st.just("reasoning"), "id": S_TEXT,
                           "summary": st.lists(st.builds(lambda t: {"type": "summary_text", "text": t}, ANY_TEXT), max_size=2)},
                          optional={"encrypted_content": ANY_TEXT,
                                    "content": st.lists(st.builds(lambda t: {"type": "reasoning_text", "text": t}, ANY_TEXT), max_size=2)}),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search_call", "file_search_call", "computer_call", "item_reference"]),
                           "id": S_TEXT}, optional={"status": st.just("completed"), "action": S_JSON}),
    S_JSON,
)
RESPONSES_TOOL = st.builds(lambda n, d, p: {"type": "function", "name": n, "description": d, "parameters": p}, S_TEXT, ANY_TEXT, S_JSON) | S_JSON
RESPONSES_BODY = st.fixed_dictionaries(
    {"model": st.sampled_from(["gpt-5.6", "gpt-5.6-sol", "gpt-6-luna"]),
     "input": ANY_TEXT | st.lists(RESPONSES_ITEM, max_size=6)},
    optional={"instructions": ANY_TEXT | st.none() | st.lists(RESPONSES_ITEM, max_size=2),
              "system": ANY_TEXT | st.lists(st.builds(lambda t: {"type": "text", "text": t}, ANY_TEXT), max_size=2),  # a decoy
              "tools": st.lists(RESPONSES_TOOL, max_size=3), "max_output_tokens": st.integers(1, 4096),
              "reasoning": st.just({"effort": "low"}), "store": st.booleans()},
)
BODIES = st.one_of(st.tuples(st.just("openai_chat"), CHAT_BODY), st.tuples(st.just("openai_responses"), RESPONSES_BODY))


def shuffled(value: object, rnd: random.Random) -> object:
    """`value` with every object's members in a random order (the client's key order is kept by both paths)."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rnd) for v in value]
    return value


def spelled_body(request: dict, seed: int, style: int) -> bytes:
    """Any spelling: compact canonical, json.dumps' default and indented (ASCII-escaped or not), or
    spelling.spell's (whitespace, \\u and \\/ escapes, -0, exponents, earlier duplicate names)."""
    rnd = random.Random(seed)
    value = shuffled(request, rnd)
    if style == 0:
        return spell(value, rnd, canonical=True).encode()
    if style == 1:
        return json.dumps(value).encode()  # ASCII: every non-ASCII character a \\u escape
    if style == 2:
        return json.dumps(value, indent=rnd.choice([None, 1, 2]), ensure_ascii=False).encode()
    return spell(value, rnd, canonical=False).encode()


def same_json(a: object, b: object) -> bool:
    """Equal, with the same types and the same key order."""
    return a == b and json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


@settings(max_examples=400, deadline=None)
@given(BODIES, st.integers(0, 2**32), st.integers(0, 3), st.sampled_from([0, 8, 512]))
def test_every_block_address_holds_exactly_that_block_and_hashes_the_same(api_request, seed, style, threshold):
    api, request = api_request
    body = spelled_body(request, seed, style)
    both = parse_and_scan(body, openai_cache.ITEMS_KEY[api])
    assert both is not None  # a valid body is always answered
    parsed, body_map = both
    assert same_json(parsed, json.loads(body)) and agrees_with(parsed, body_map, openai_cache.ITEMS_KEY[api])
    blocks = list(prompt_blocks(parsed, api))
    locs = openai_cache._block_locs(body_map, parsed, api)
    assert len(locs) == len(blocks)
    for (section, _, block, _, value), loc in zip(blocks, locs):
        if loc is None:  # only an `instructions` list's items are not mapped
            assert api == "openai_responses" and section == "system" and block is not None
            continue
        assert same_json(json.loads(body[loc.start:loc.end]), value)  # the address holds exactly this block
    expected = boundaries(parsed, api)
    prefix_index._STEPS.clear()
    with raw_threshold(threshold):
        raw = openai_cache._raw_blocks(body, body_map, parsed, api)
        assert boundaries(parsed, api, raw=raw) == expected  # from the bytes
        assert boundaries(parsed, api, raw=openai_cache._raw_blocks(body, body_map, parsed, api)) == expected  # from the step memo
        assert boundaries(parsed, api, 4.0, raw) == boundaries(parsed, api, 4.0)


@contextmanager
def two_pass():
    """`insert_openai_breakpoint` as it was before the one pass: json.loads, then the map only for a splice, no raw bytes."""
    saved = openai_cache.parse_and_scan
    openai_cache.parse_and_scan = lambda *_args, **_kw: None  # type: ignore[assignment]
    try:
        yield
    finally:
        openai_cache.parse_and_scan = saved  # type: ignore[assignment]


def outcome(res) -> tuple:
    return (res.body, res.spans, res.decision, res.markers_inserted, res.client_markers, res.client_ttls,
            res.prefix_tokens_est, res.model, res.content_encoding, res.notes, res.ticket)


# Bodies the planner marks: a long system / developer prompt (or instructions) and a final user turn.
MARKABLE_CHAT = st.builds(lambda system, history, q, extra: {**extra, "messages": [{"role": "system", "content": system}, *history, {"role": "user", "content": q}]},
                          LONG | st.lists(st.builds(lambda t: {"type": "text", "text": t}, LONG), min_size=1, max_size=2),
                          st.lists(CHAT_MESSAGE, max_size=3), S_TEXT,
                          st.fixed_dictionaries({"model": st.sampled_from(["gpt-5.6", "gpt-6-luna"])}, optional={"tools": st.lists(CHAT_TOOL, max_size=2)}))
MARKABLE_RESPONSES = st.builds(
    lambda doc, history, q, extra: {**extra, "input": [{"role": "developer", "content": doc}, *history,
                                                       {"role": "user", "content": [{"type": "input_text", "text": q}]}]},
    LONG | st.lists(st.builds(lambda t: {"type": "input_text", "text": t}, LONG), min_size=1, max_size=2),
    st.lists(RESPONSES_ITEM, max_size=3), S_TEXT,
    st.fixed_dictionaries({"model": st.sampled_from(["gpt-5.6", "gpt-6-luna"])},
                          optional={"instructions": ANY_TEXT, "tools": st.lists(RESPONSES_TOOL, max_size=2)}))


@settings(max_examples=250, deadline=None)
@given(st.one_of(st.tuples(st.just("openai_chat"), MARKABLE_CHAT | CHAT_BODY), st.tuples(st.just("openai_responses"), MARKABLE_RESPONSES | RESPONSES_BODY)),
       st.integers(0, 2**32), st.integers(0, 3), st.sampled_from([0, 512]),
       st.lists(st.sampled_from([0.5, 30.0, 400.0]), max_size=3), st.none() | st.tuples(st.lists(st.integers(-1, 12), max_size=4), st.booleans()))
def test_the_one_pass_gives_exactly_the_two_pass_result(api_request, seed, style, threshold, gaps, decided):
    """Body, spans, decision, counters, notes and the planner's ticket: identical, with any history
    (the same requests replayed into two memories), any spelling, the bytes used for every block
    (threshold 0) or only the big ones; and for positions chosen by something other than the planner."""
    api, request = api_request
    body = spelled_body(request, seed, style)
    decide = None if decided is None else (lambda _req: decided)
    one, two = Memory(), Memory()
    prefix_index._STEPS.clear()
    with raw_threshold(threshold):
        now = 0.0
        for gap in [*gaps, 0.0]:
            got = insert_openai_breakpoint(body, None, api, memory=one, now=now, decide=decide)
            with two_pass():
                want = insert_openai_breakpoint(body, None, api, memory=two, now=now, decide=decide)
            assert outcome(got) == outcome(want)
            assert one.index.dump() == two.index.dump()  # the planner's memory: the same digests, the same counts
            event(f"{api} {got.decision}")
            for memory, res in ((one, got), (two, want)):
                if res.ticket is not None:
                    memory.index.response_began(res.ticket.recorded)
            now += gap
