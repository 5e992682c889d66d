"""Every dialect's real recorded stream through a real mitmdump: bytes unchanged, numbers right.

Streams are split at varied chunk boundaries; costs are checked against hand-computed figures
from the providers' list prices (per million tokens).
"""

from __future__ import annotations

import json

import pytest
from conftest import Stack, fixture_bytes

from tokenpak_mitm.sim.upstream import Script, Step

pytestmark = pytest.mark.e2e  # every test here runs a real mitmdump

GEMINI_PATH = "/v1beta/models/gemini-3-pro-preview:streamGenerateContent?alt=sse&key=AIzaSyCANARYcanary0123456789abcdefg"

CASES = [
    # name, path, expected row values, hand-computed cost (USD)
    ("openai_chat_include_usage.sse", "/v1/chat/completions",
     dict(provider="openai", api="chat.completions", model="gpt-4o-2024-08-06", input_tokens=79, cache_read_tokens=None, output_tokens=1, reasoning_tokens=0, frames=5, stop_reason="length"),
     (79 * 2.50 + 1 * 10.0) / 1e6),
    ("openai_responses_basic_text.sse", "/v1/responses",
     dict(provider="openai", api="responses", input_tokens=10, cache_read_tokens=0, output_tokens=62, reasoning_tokens=0, frames=68),
     None),
    ("gemini_crlf_thoughts.sse", GEMINI_PATH,
     dict(provider="gemini", api="generate_content", model="gemini-3-pro-preview", input_tokens=131, output_tokens=110, reasoning_tokens=95, frames=4),
     (131 * 2.0 + 110 * 12.0) / 1e6),
]


@pytest.mark.parametrize("name, path, expected, cost", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("chunk", [1, 13, 4096])
def test_recorded_streams_of_every_dialect(stack: Stack, name, path, expected, cost, chunk):
    data = fixture_bytes(name)
    steps = [Step(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    resp, key = stack.call(Script(headers=[("content-type", "text/event-stream")], steps=steps), path=path,
                           body=b'{"model":"x","stream":true}')
    assert resp.body == data
    row = stack.row(key)
    assert row["terminal_state"] == "completed" and row["usage_source"] == "final" and row["stream"] == 1
    for k, v in expected.items():
        assert row[k] == v, (k, row[k], v)
    if cost is not None:
        assert row["cost_usd"] == pytest.approx(cost)
    assert "key=" not in (row["path"] or "")


def test_openai_cached_tokens_are_not_counted_twice(stack: Stack):
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2000, "completion_tokens": 10, "total_tokens": 2010,
                  "prompt_tokens_details": {"cached_tokens": 1536}, "completion_tokens_details": {"reasoning_tokens": 0}},
    }
    resp, key = stack.call(Script(headers=[("content-type", "application/json")], steps=[Step(json.dumps(body).encode())], chunked=False),
                           path="/v1/chat/completions", body=b'{"model":"gpt-4o"}')
    row = stack.row(key)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (464, 1536, 10)
    # gpt-4o: $2.50 input, $1.25 cached input, $10 output per MTok.
    assert row["cost_usd"] == pytest.approx((464 * 2.5 + 1536 * 1.25 + 10 * 10) / 1e6)
    assert row["cache_origin"] == "unknown"  # provider-side caching nobody marked: not ours


def test_chat_stream_without_include_usage_is_absent_not_zero(stack: Stack):
    frames = [
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n',
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    resp, key = stack.call(Script(headers=[("content-type", "text/event-stream")], steps=[Step(f) for f in frames]),
                           path="/v1/chat/completions", body=b'{"model":"gpt-4o","stream":true}')
    row = stack.row(key)
    assert row["usage_source"] == "absent" and row["input_tokens"] is None and row["output_tokens"] is None
    assert row["cost_usd"] is None and row["terminal_state"] == "completed"


def test_gemini_json_array_stream_is_measured_and_unchanged(stack: Stack):
    data = fixture_bytes("gemini_crlf_thoughts.sse")
    chunks = [json.loads(line[len(b"data: "):]) for line in data.split(b"\r\n\r\n") if line.startswith(b"data: ")]
    array = b"[" + b",\r\n".join(json.dumps(c).encode() for c in chunks) + b"]"
    steps = [Step(array[i : i + 100]) for i in range(0, len(array), 100)]
    resp, key = stack.call(Script(headers=[("content-type", "application/json; charset=UTF-8")], steps=steps),
                           path="/v1beta/models/gemini-3-pro-preview:streamGenerateContent", body=b"{}")
    assert resp.body == array
    row = stack.row(key)
    assert (row["input_tokens"], row["output_tokens"], row["reasoning_tokens"]) == (131, 110, 95)
    assert row["stream"] == 1


@pytest.mark.parametrize(
    "path, status, body, error",
    [
        ("/v1/chat/completions", 429, b'{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}', None),
        ("/v1beta/models/gemini-2.5-flash:generateContent", 429, b'{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}', "RESOURCE_EXHAUSTED"),
        ("/v1/responses", 400, b'{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}', "invalid_request_error"),
    ],
)
def test_http_error_bodies_of_each_provider(stack: Stack, path, status, body, error):
    script = Script(status=status, reason="Error", headers=[("content-type", "application/json")], steps=[Step(body)], chunked=False)
    resp, key = stack.call(script, path=path, body=b"{}")
    row = stack.row(key)
    assert row["terminal_state"] == "error_response" and row["status_code"] == status
    assert row["error"] is not None
    if error:
        assert row["error"] == error


def test_responses_error_event_in_stream(stack: Stack):
    frames = [
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1","model":"gpt-4o","status":"in_progress","usage":null}}\n\n',
        b'event: error\ndata: {"type":"error","sequence_number":1,"error":{"type":"tokens","code":"rate_limit_exceeded","message":"Rate limit","param":null}}\n\n',
        b'event: response.failed\ndata: {"type":"response.failed","sequence_number":2,"response":{"id":"resp_1","model":"gpt-4o","status":"failed","error":{"code":"rate_limit_exceeded","message":"Rate limit"},"usage":null}}\n\n',
    ]
    resp, key = stack.call(Script(headers=[("content-type", "text/event-stream")], steps=[Step(f) for f in frames]), path="/v1/responses", body=b"{}")
    row = stack.row(key)
    assert row["terminal_state"] == "stream_error" and row["error"] == "rate_limit_exceeded"


# ---- issue 18: each price factor, through the proxy ------------------------------------------------
def _json_reply(obj: dict) -> Script:
    return Script(headers=[("content-type", "application/json")], steps=[Step(json.dumps(obj).encode())], chunked=False)


def _sse_reply(events: list[dict]) -> Script:
    frames = [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]
    return Script(headers=[("content-type", "text/event-stream")], steps=[Step(f) for f in frames])


def test_price_factors_reach_the_row(stack: Stack):
    # Anthropic, streamed: a compaction iteration outside the top-level usage, pinned to the US.
    events = [
        {"type": "message_start", "message": {"id": "m1", "model": "claude-opus-4-6", "usage": {"input_tokens": 23000, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {
            "input_tokens": 23000, "output_tokens": 1000, "inference_geo": "us", "service_tier": "standard", "speed": "standard",
            "iterations": [{"type": "compaction", "input_tokens": 180000, "output_tokens": 3500},
                           {"type": "message", "input_tokens": 23000, "output_tokens": 1000}]}},
        {"type": "message_stop"},
    ]
    _, key = stack.call(_sse_reply(events))
    row = stack.row(key)
    assert (row["input_tokens"], row["output_tokens"], row["extra_iterations"], row["extra_input_tokens"]) == (203000, 4500, 1, 180000)
    assert row["inference_geo"] == "us" and row["price_multiplier"] == pytest.approx(1.1)
    assert row["cost_usd"] == pytest.approx((203000 * 5 + 4500 * 25) / 1e6 * 1.1)

    # Gemini: 9,000 audio + 1,000 text prompt tokens.
    body = {"modelVersion": "gemini-2.5-flash", "candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10000, "candidatesTokenCount": 50, "totalTokenCount": 10050,
                              "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 9000}, {"modality": "TEXT", "tokenCount": 1000}]}}
    _, key = stack.call(_json_reply(body), path="/v1beta/models/gemini-2.5-flash:generateContent", body=b"{}")
    row = stack.row(key)
    assert row["input_audio_tokens"] == 9000 and row["cost_usd"] == pytest.approx(0.009425)

    # OpenAI priority tier; and an unknown model stays unpriced with its reason.
    chat = {"id": "c", "object": "chat.completion", "model": "gpt-5.4-mini", "service_tier": "priority", "choices": [],
            "usage": {"prompt_tokens": 5000, "completion_tokens": 300, "total_tokens": 5300, "prompt_tokens_details": {"cached_tokens": 2048}}}
    _, key = stack.call(_json_reply(chat), path="/v1/chat/completions", body=b'{"model":"gpt-5.4-mini"}')
    row = stack.row(key)
    assert row["service_tier"] == "priority" and row["cost_usd"] == pytest.approx((2952 * 1.5 + 2048 * 0.15 + 300 * 9) / 1e6)
    _, key = stack.call(_json_reply({**chat, "model": "gpt-imaginary-9", "service_tier": "default"}), path="/v1/chat/completions", body=b"{}")
    row = stack.row(key)
    assert row["cost_usd"] is None and row["unpriced_reason"] == "unknown_model"
