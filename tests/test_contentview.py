"""mitmweb's "LLM (tokenpak)" content view, through mitmproxy's own contentview API, on every
recorded flow in flows/ (Anthropic, OpenAI Chat and Responses, Gemini; streamed or not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mitmproxy import contentviews, io
from mitmproxy.test import taddons, tflow

from tokenpak_mitm.proxy.contentview import VIEW, ContentviewAddon

FLOWS = Path(__file__).resolve().parent.parent / "flows"
RECORDED = sorted(FLOWS.glob("*.mitm"))


@pytest.fixture(autouse=True)
def registered():
    ContentviewAddon().load(None)  # what the addon script does on load
    with taddons.context():
        yield


def load(path: Path):
    with open(path, "rb") as f:
        return next(iter(io.FlowReader(f).stream()))


def test_every_dialect_is_in_the_corpus():
    dialects = {p.name.split("_")[0] for p in RECORDED} | {"openai_responses" for p in RECORDED if p.name.startswith("openai_responses")}
    assert {"anthropic", "openai", "gemini", "openai_responses"} <= dialects


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_the_view_summarises_each_recorded_flow_as_the_row_does(path: Path):
    flow = load(path)
    golden = json.loads(path.with_suffix("").with_suffix(".golden.json").read_text())
    req = contentviews.prettify_message(flow.request, flow)
    assert req.view_name == VIEW.name and "request" in req.text.splitlines()[0]
    if flow.response is None:
        return  # the upstream closed before answering: nothing to show
    res = contentviews.prettify_message(flow.response, flow)
    assert res.view_name == VIEW.name, res.text  # chosen automatically over the JSON / raw views
    text = res.text
    assert f"HTTP {flow.response.status_code}" in text.splitlines()[0]
    assert f"model: {golden['model'] or '?'}" in text
    if golden["usage_source"] == "absent":
        assert "usage: not reported" in text
    else:
        assert f"output {golden['output_tokens'] or 0:,}" in text and f"cache read {golden['cache_read_tokens'] or 0:,}" in text
    if golden["cost_usd"]:
        assert f"cost: ${golden['cost_usd']:.6f}" in text  # the same price as the telemetry row
    elif golden["cost_usd"] == 0.0 and golden["status_code"] >= 400:
        assert "cost: $0 (rejected, not billed)" in text
    if golden["status_code"] < 400 and golden["terminal_state"] == "completed" and golden["api"] != "messages.count_tokens":
        assert "\ntext:\n" in text or "\ntool call: " in text or "\nreasoning:\n" in text  # the assembled output
    if golden["error"] and golden["terminal_state"] in ("error_response", "stream_error"):
        assert "error: " in text
    assert "data:" not in text  # no raw SSE


def test_tool_calls_and_reasoning_are_assembled():
    tool = contentviews.prettify_message(*_response("anthropic_fixture_tool_use")).text
    assert "tool call: get_weather" in tool and '"location": "Paris"' in tool
    thinking = contentviews.prettify_message(*_response("anthropic_fixture_extended_thinking")).text
    assert "\nreasoning:\n" in thinking and "\ntext:\n" in thinking
    gemini = contentviews.prettify_message(*_response("gemini_fixture_crlf_thoughts")).text
    assert "\nreasoning:\n" in gemini
    responses = contentviews.prettify_message(*_response("openai_responses_fixture_basic")).text
    assert "\ntext:\n" in responses and "model: gpt-" in responses


def test_cache_verdict_and_markers_come_from_the_flow():
    hit = contentviews.prettify_message(*_response("anthropic_json_proxy_insert")).text
    assert "cache: hit; markers: 2 inserted by the proxy, 0 from the client; planner: inserted" in hit


def test_the_providers_cache_verdict_and_the_diagnostics_request_are_shown():
    response, flow = _response("anthropic_stream_cache_diagnostics")
    text = contentviews.prettify_message(response, flow).text
    assert "cache diagnostics (the provider's verdict): system_changed, 3,310 input tokens after the divergence" in text
    request = contentviews.prettify_message(flow.request, flow).text
    assert "cache diagnostics asked, against: msg_corpus_diag_prev" in request


def test_mid_conversation_system_messages_are_shown_in_the_request():
    from tokenpak_mitm.core.routes import Route
    from tokenpak_mitm.proxy.llm_view import describe_request

    body = json.dumps({"model": "claude-opus-4-8", "messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "French"}]}).encode()
    assert "mid-conversation system messages: 1 (at #1)" in describe_request(Route("anthropic", "messages", "anthropic"), body)


def test_other_traffic_keeps_mitmproxys_views():
    f = tflow.tflow(resp=True)
    f.request.host, f.request.path, f.request.method = "example.com", "/api", "POST"
    f.response.headers["content-type"] = "application/json"
    f.response.content = b'{"a": 1}'
    assert contentviews.prettify_message(f.response, f).view_name != VIEW.name


def _response(stem: str):
    flow = load(FLOWS / f"{stem}.mitm")
    return flow.response, flow
