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

from tokenpak_mitm.cache_insert import remove_spans
from tokenpak_mitm.testing.client import build_request, request
from tokenpak_mitm.testing.fake_anthropic import fake_anthropic_in_thread
from tokenpak_mitm.testing.proxy import MitmdumpProcess
from tokenpak_mitm.testing.upstream import Script, Step

MODEL = "claude-sonnet-4-6"
# claude-sonnet-4-6 list prices, USD per million tokens.
IN, W5, READ, OUT = 3.0, 3.75, 0.30, 15.0
SYSTEM = " ".join(f"Rule {i}: answer tersely, cite the policy section {i} and never invent facts." for i in range(160))


@pytest.fixture(scope="module")
def fake_stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("insert")
    with fake_anthropic_in_thread() as fake:
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
    # Savings by hand: the same tokens billed as fresh input, minus what they cost.
    expected = sum(
        ((u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]) * IN
         - u["cache_read_input_tokens"] * READ - u["cache_creation_input_tokens"] * W5) / 1e6
        for u in usage
    )
    assert sum(r["savings_usd"] for r in got) == pytest.approx(expected)
    assert expected > 0
    assert {r["stream"] for r in got} == {0, 1}


def test_upstream_receives_the_client_bytes_plus_only_the_recorded_spans(fake_stack):
    fake, proxy, db = fake_stack
    body = json.dumps({"model": MODEL, "max_tokens": 20, "system": SYSTEM,
                       "messages": [{"role": "user", "content": "hello   there"}]}, indent=1).encode()
    resp = request(proxy.port, build_request("POST", "/v1/messages", body, [("content-type", "application/json"), ("x-api-key", "sk-ant-x")]))
    assert resp.status == 200
    sent = fake.requests[-1]
    assert sent != body and b'"cache_control"' in sent
    row = rows(db, 1)[-1]
    assert row["cache_origin"] == "proxy" and row["markers_inserted"] >= 1
    # Find the spans the proxy recorded by diffing: removing the cache_control insertions must
    # give back the client's bytes exactly (no re-serialisation anywhere).
    from tokenpak_mitm.cache_insert import insert_markers

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
    with fake_anthropic_in_thread() as fake:
        with MitmdumpProcess(f"reverse:{fake.url}", db=tmp_path / "t.db", confdir=tmp_path, options=["tokenpak_cache=off"]) as proxy:
            body = json.dumps({"model": MODEL, "max_tokens": 5, "system": SYSTEM, "messages": [{"role": "user", "content": "hi"}]}).encode()
            request(proxy.port, build_request("POST", "/v1/messages", body, [("content-type", "application/json")]))
            row = rows(tmp_path / "t.db", 1)[-1]
        assert fake.requests[-1] == body
    assert row["cache_decision"] == "off" and row["cache_origin"] == "none"
