"""Cache-marker insertion end to end: a real SDK, a real mitmdump, a provider-faithful upstream.

The upstream is the package's cache simulator (markers honoured the way the provider documents
them), so cache reads appear only when the proxy's markers really make the prefix cacheable.
"""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import pytest
from conftest import Stack, wait_for_rows

from tokenpak_mitm.core.plan.cache_insert import remove_spans
from tokenpak_mitm.sim.client import build_request, request
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.provider import FakeProvider
from tokenpak_mitm.sim.upstream import Script, Step

pytestmark = pytest.mark.e2e  # every test here runs a real mitmdump

MODEL = "claude-sonnet-4-6"
# claude-sonnet-4-6 list prices, USD per million tokens.
IN, W5, W1, READ, OUT = 3.0, 3.75, 6.0, 0.30, 15.0
SYSTEM = " ".join(f"Rule {i}: answer tersely, cite the policy section {i} and never invent facts." for i in range(160))


@pytest.fixture(scope="module")
def fake_stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("insert")
    with FakeProvider() as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=tmp / "t.db", confdir=tmp).start()
        try:
            yield fake, proxy, tmp / "t.db"
        finally:
            proxy.stop()


def rows(db: Path, n: int) -> list[dict]:
    got = wait_for_rows(db, "1=1 ORDER BY id", (), n=n)
    assert len(got) >= n
    return got


def test_sdk_conversation_gets_cache_reads_from_turn_two_and_savings_add_up(fake_stack):
    fake, proxy, db = fake_stack
    before = len(fake.results)
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-api03-canary-not-a-real-key-000000", max_retries=0)
    history: list[dict] = []
    for turn in range(10):
        history.append({"role": "user", "content": f"Question {turn}: what does rule {turn} say?"})
        if turn % 2:
            with client.messages.stream(model=MODEL, max_tokens=50, system=SYSTEM, messages=history) as s:
                reply = s.get_final_message()
        else:
            reply = client.messages.create(model=MODEL, max_tokens=50, system=SYSTEM, messages=history)
        history.append({"role": "assistant", "content": reply.content[0].text})
    got = rows(db, before + 10)[-10:]
    usage = [r.usage for r in fake.results[before:]]

    assert [r["cache_origin"] for r in got] == ["proxy"] * 10
    assert all(r["markers_inserted"] >= 1 and r["cache_decision"] == "inserted" for r in got)
    assert got[0]["cache_read_tokens"] == 0 and got[0]["cache_write_tokens"] > 0
    assert all(r["cache_read_tokens"] > 0 for r in got[1:]), [r["cache_read_tokens"] for r in got]
    # The rows carry exactly what the provider reported.
    for r, u in zip(got, usage):
        assert (r["input_tokens"], r["cache_read_tokens"], r["cache_write_tokens"], r["output_tokens"]) == (
            u["input_tokens"], u["cache_read_input_tokens"], u["cache_creation_input_tokens"], u["output_tokens"])
    # Savings by hand: the same tokens billed as fresh input, minus what they cost (a 1h
    # checkpoint, insurance against a pause, is billed at the 1h write price).
    expected = sum(
        ((u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]) * IN - u["cache_read_input_tokens"] * READ
         - u["cache_creation"]["ephemeral_5m_input_tokens"] * W5 - u["cache_creation"]["ephemeral_1h_input_tokens"] * W1) / 1e6
        for u in usage
    )
    assert sum(r["savings_usd"] for r in got) == pytest.approx(expected)
    assert expected > 0
    assert {r["stream"] for r in got} == {0, 1}


def test_upstream_receives_the_client_bytes_plus_only_the_recorded_spans(fake_stack):
    fake, proxy, db = fake_stack
    # A system prompt this proxy has not seen (the conversation above shares SYSTEM): with no
    # history the learning planner applies today's fixed rules, which `insert_markers` recomputes.
    body = json.dumps({"model": MODEL, "max_tokens": 20, "system": "Unseen. " + SYSTEM,
                       "messages": [{"role": "user", "content": "hello   there"}]}, indent=1).encode()
    resp = request(proxy.port, build_request("POST", "/v1/messages", body, [("content-type", "application/json"), ("x-api-key", "sk-ant-x")]))
    assert resp.status == 200
    sent = fake.requests[-1]
    assert sent != body and b'"cache_control"' in sent
    row = rows(db, 1)[-1]
    assert row["cache_origin"] == "proxy" and row["markers_inserted"] >= 1
    # Find the spans the proxy recorded by diffing: removing the cache_control insertions must
    # give back the client's bytes exactly (no re-serialisation anywhere).
    from tokenpak_mitm.core.plan.cache_insert import insert_markers

    again = insert_markers(body, None)
    assert again.body == sent
    assert remove_spans(sent, again.spans) == body


def test_short_unmarked_request_with_provider_cache_reads_is_unknown(stack: Stack):
    usage = {"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2048, "output_tokens": 3}
    msg = {"id": "m", "type": "message", "model": MODEL, "content": [], "stop_reason": "end_turn", "usage": usage}
    body = b'{"model":"claude-sonnet-4-6","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
    resp, key = stack.call(Script(headers=[("content-type", "application/json")], steps=[Step(json.dumps(msg).encode())], chunked=False), body=body)
    row = stack.row(key)
    assert stack.received(key).body == body  # below the minimum: nothing inserted
    assert row["cache_decision"] == "below_minimum" and row["markers_inserted"] == 0
    assert row["cache_origin"] == "unknown"


def test_client_marked_request_reaches_upstream_byte_identical(stack: Stack):
    body = (b'{"model": "claude-sonnet-4-6", "max_tokens": 5, "system": [{"type": "text", "text": "' + SYSTEM.encode()
            + b'", "cache_control": {"type": "ephemeral", "ttl": "1h"}}], "messages": [{"role": "user", "content": "hi"}]}')
    usage = {"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 3000, "output_tokens": 3}
    msg = {"id": "m", "type": "message", "model": MODEL, "content": [], "stop_reason": "end_turn", "usage": usage}
    resp, key = stack.call(Script(headers=[("content-type", "application/json")], steps=[Step(json.dumps(msg).encode())], chunked=False), body=body)
    assert stack.received(key).body == body
    row = stack.row(key)
    assert row["cache_decision"] == "stood_down" and row["client_markers"] == 1 and row["markers_inserted"] == 0
    assert row["cache_origin"] == "client" and row["savings_usd"] > 0


def test_insertion_off_sends_client_bytes(tmp_path: Path):
    with FakeProvider() as fake:
        with MitmdumpProcess(f"reverse:{fake.url}", db=tmp_path / "t.db", confdir=tmp_path, options=["tokenpak_cache=off"]) as proxy:
            body = json.dumps({"model": MODEL, "max_tokens": 5, "system": SYSTEM, "messages": [{"role": "user", "content": "hi"}]}).encode()
            request(proxy.port, build_request("POST", "/v1/messages", body, [("content-type", "application/json")]))
            row = rows(tmp_path / "t.db", 1)[-1]
        assert fake.requests[-1] == body
    assert row["cache_decision"] == "off" and row["cache_origin"] == "none"


def test_a_document_batch_through_mitmdump_marks_the_shared_document_and_says_why(fake_stack):
    """The learning planner runs in the proxy: the unique question is left unmarked (from the first
    request: a trailing text block is a per-turn trailer), the shared document is read, and every
    row says why."""
    fake, proxy, db = fake_stack
    before = len(fake.results)
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-api03-canary-not-a-real-key-000000", max_retries=0)
    document = " ".join(f"Clause {i}: the supplier delivers part {i} within {i % 9 + 1} days." for i in range(400))
    for i in range(5):
        client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": [
            {"type": "text", "text": document}, {"type": "text", "text": f"Question {i}: when is part {i * 7} due?"}]}])
    got = rows(db, before + 5)[-5:]
    usage = [r.usage for r in fake.results[before:]]
    reasons = [json.loads(r["cache_reasons"]) for r in got]
    # The first request: today's rules, and the question after the document is a per-turn trailer
    # (a trailing text block after the user's content): it is never the last breakpoint.
    assert reasons[0] and all(n["why"] == "no_history" for n in reasons[0] if not n.get("skipped"))
    assert {n["at"]: n["why"] for n in reasons[0]}["messages.0.content.0"] == "no_history"
    assert any(n["at"] == "messages.0.content.1" and n.get("skipped") for n in reasons[0])
    for row_reasons in reasons[2:]:
        by_place = {n["at"]: n for n in row_reasons}
        assert by_place["messages.0.content.0"]["why"] == "shared_prefix" and "ttl" in by_place["messages.0.content.0"]
        assert by_place["messages.0.content.1"] == {**by_place["messages.0.content.1"], "why": "tail_not_reused", "skipped": True}
    assert all(u["cache_read_input_tokens"] > 0 for u in usage[2:])
    assert all(u["cache_creation_input_tokens"] == 0 for u in usage[3:])  # nothing written that is not read back


# ---- OpenAI explicit breakpoints (GPT-5.6+), through a real mitmdump ------------------------------
OPENAI_DOC = " ".join(f"Clause {i}: the tenant keeps the premises clean and pays the rent on the first day." for i in range(120))


def _openai_reply(path: str, usage: dict) -> Script:
    if path.endswith("/responses"):
        obj = {"id": "resp_1", "object": "response", "model": "gpt-5.6-sol", "status": "completed", "output": [], "usage": usage}
    else:
        obj = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-5.6-sol", "service_tier": "default",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}], "usage": usage}
    return Script(headers=[("content-type", "application/json")], steps=[Step(json.dumps(obj).encode())], chunked=False)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_openai_gpt_5_6_request_without_cache_fields_gets_a_breakpoint(stack: Stack, path: str):
    from tokenpak_mitm.core.plan.openai_cache import insert_openai_breakpoint

    if path.endswith("/responses"):
        request_obj = {"model": "gpt-5.6-sol", "instructions": "Answer from the lease.",
                       "input": [{"role": "developer", "content": [{"type": "input_text", "text": OPENAI_DOC + " (r)"}]},
                                 {"role": "user", "content": "What does clause 7 say?"}]}
        usage = {"input_tokens": 1500, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 1400},
                 "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 1520}
        api = "openai_responses"
    else:
        request_obj = {"model": "gpt-5.6-sol", "messages": [{"role": "system", "content": OPENAI_DOC + " (c)"},
                                                           {"role": "user", "content": "What does clause 7 say?"}]}
        usage = {"prompt_tokens": 1500, "completion_tokens": 20, "total_tokens": 1520,
                 "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 1400}}
        api = "openai_chat"
    body = json.dumps(request_obj, indent=1).encode()
    resp, key = stack.call(_openai_reply(path, usage), body=body, path=path, headers=[("authorization", "Bearer sk-test-canary")])
    assert resp.status == 200
    sent = stack.received(key).body
    assert b'"prompt_cache_breakpoint":{"mode":"explicit"}' in sent and b'"prompt_cache_key":"tpk-' in sent
    # The same splice, recomputed without history, explains every added byte.
    again = insert_openai_breakpoint(body, None, api)  # type: ignore[arg-type]
    assert again.body == sent and remove_spans(sent, again.spans) == body
    row = stack.row(key)
    assert row["cache_decision"] == "inserted" and row["markers_inserted"] == 1 and row["cache_origin"] == "proxy"
    assert (row["input_tokens"], row["cache_write_tokens"], row["cache_read_tokens"]) == (100, 1400, 0)
    # gpt-5.6-sol: $4 input, writes 1.25x ($5), $20 output per MTok; a write never read costs 0.25x more.
    assert row["cost_usd"] == pytest.approx((100 * 4 + 1400 * 5 + 20 * 20) / 1e6)
    assert row["savings_usd"] == pytest.approx(-1400 * 1 / 1e6)


CACHE_FIELDS = [
    ("prompt_cache_key", {"prompt_cache_key": "mine"}),
    ("prompt_cache_options", {"prompt_cache_options": {"mode": "implicit", "ttl": "30m"}}),
    ("prompt_cache_retention", {"prompt_cache_retention": "24h"}),
    ("breakpoint", None),
]


@pytest.mark.parametrize("name,extra", CACHE_FIELDS, ids=[c[0] for c in CACHE_FIELDS])
def test_openai_request_with_any_cache_field_reaches_upstream_byte_identical(stack: Stack, name, extra):
    system: object = OPENAI_DOC + f" ({name})"
    if extra is None:  # a client breakpoint of its own, on the system prompt
        system, extra = [{"type": "text", "text": system, "prompt_cache_breakpoint": {"mode": "explicit"}}], {}
    body = json.dumps({"model": "gpt-5.6-sol", **extra, "messages": [{"role": "system", "content": system},
                                                                      {"role": "user", "content": "hi"}]}).encode()
    usage = {"prompt_tokens": 1500, "completion_tokens": 2, "total_tokens": 1502, "prompt_tokens_details": {"cached_tokens": 1408}}
    resp, key = stack.call(_openai_reply("/v1/chat/completions", usage), body=body, path="/v1/chat/completions")
    assert resp.status == 200
    assert stack.received(key).body == body
    row = stack.row(key)
    assert row["cache_decision"] == "stood_down" and row["markers_inserted"] == 0 and row["client_markers"] >= 1
    assert row["cache_origin"] == "client" and row["savings_usd"] > 0


def test_openai_models_before_5_6_are_left_alone(stack: Stack):
    body = json.dumps({"model": "gpt-4o", "messages": [{"role": "system", "content": OPENAI_DOC}, {"role": "user", "content": "hi"}]}).encode()
    usage = {"prompt_tokens": 1500, "completion_tokens": 2, "total_tokens": 1502}
    resp, key = stack.call(_openai_reply("/v1/chat/completions", usage), body=body, path="/v1/chat/completions")
    assert stack.received(key).body == body
    row = stack.row(key)
    assert row["cache_decision"] is None and row["markers_inserted"] == 0 and row["cache_origin"] == "none"


def _without_ours(obj: object) -> object:
    """The request with our breakpoints, prompt_cache_key and prompt_cache_options removed."""
    if isinstance(obj, dict):
        return {k: _without_ours(v) for k, v in obj.items() if k not in ("prompt_cache_breakpoint", "prompt_cache_key", "prompt_cache_options")}
    if isinstance(obj, list):
        return [_without_ours(v) for v in obj]
    return obj


def test_openai_agent_loop_live_uses_the_learning_planner_and_marks_tool_results(stack: Stack):
    """Through mitmdump, the proxy's one memory learns from each request of a Responses agent loop:
    from the second turn the stable prefix before the per-turn context item ends on the last tool
    result, which gets the breakpoint (the savings tool's decision, not a rule of the proxy's own),
    and every row says why."""
    usage = {"input_tokens": 3000, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 2500},
             "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 3010}
    items: list[dict] = [{"role": "user", "content": [{"type": "input_text", "text": OPENAI_DOC + " (agent)"}]}]
    sent_bodies, keys = [], []
    for turn in range(4):
        context = {"role": "user", "content": [{"type": "input_text", "text": f"<turn_context>turn {turn}</turn_context>"}]}
        request_obj = {"model": "gpt-5.6-sol", "instructions": "You are a coding agent.", "input": [*items, context]}
        resp, key = stack.call(_openai_reply("/v1/responses", usage), body=json.dumps(request_obj).encode(), path="/v1/responses")
        assert resp.status == 200
        sent = json.loads(stack.received(key).body)
        assert _without_ours(sent) == request_obj  # only our fields were added
        sent_bodies.append(sent)
        keys.append(key)
        items += [{"type": "function_call", "call_id": f"c{turn}", "name": "read", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": f"c{turn}",
                   "output": [{"type": "input_text", "text": f"file {turn}: " + OPENAI_DOC[: 2000 + 300 * turn]}]}]
    tool_marked = [any("prompt_cache_breakpoint" in part for item in body["input"] if item.get("type") == "function_call_output"
                       for part in item["output"]) for body in sent_bodies]
    assert any(tool_marked[1:]), tool_marked
    for body in sent_bodies:
        assert not any("prompt_cache_breakpoint" in json.dumps(item) for item in body["input"] if item.get("type") == "function_call")
    for key, marked in zip(keys, tool_marked, strict=True):
        row = stack.row(key)
        assert row["cache_decision"] in ("inserted", "not_worth") and row["cache_reasons"]
        reasons = json.loads(row["cache_reasons"])
        assert all(r["why"] and r["at"].startswith("input.") for r in reasons)
        if marked:  # the row names the tool result it marked, in the request's own terms
            assert any(".output." in r["at"] and "ttl" in r for r in reasons), reasons
