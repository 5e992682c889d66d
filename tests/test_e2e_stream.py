"""End to end through a real mitmdump: bytes unchanged, nothing buffered, exactly one correct row."""

from __future__ import annotations

import gzip
import json
import threading
import zlib

import pytest
from conftest import Stack, fixture_bytes

from tokenpak_mitm.core.observe.sse import SSEParser
from tokenpak_mitm.sim.upstream import Script, Step, sse_script

pytestmark = pytest.mark.e2e  # every test here runs a real mitmdump


def frames(data: bytes) -> list[bytes]:
    p = SSEParser()
    out = p.feed(data)
    tail, rest = p.close()
    return out + tail + ([rest] if rest else [])


ANTHROPIC_BASIC = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-6","content":[],"stop_reason":null,"usage":{"input_tokens":20,"cache_creation_input_tokens":100,"cache_read_input_tokens":3000,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":0},"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
    b'event: ping\ndata: {"type": "ping"}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}\n\n',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


def test_stream_bytes_unchanged_and_one_correct_row(stack: Stack):
    # Frames deliberately split across chunk boundaries, several frames per chunk too.
    body = b"".join(ANTHROPIC_BASIC)
    cuts = [body[:50], body[50:51], body[51:700], body[700:]]
    resp, key = stack.call(Script(headers=[("content-type", "text/event-stream")], steps=[Step(c) for c in cuts]))
    assert resp.status == 200 and resp.complete
    assert resp.body == body
    row = stack.row(key)
    assert row["terminal_state"] == "completed"
    assert row["usage_source"] == "final"
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"], row["output_tokens"]) == (20, 3000, 100, 15)
    assert (row["cache_write_5m_tokens"], row["cache_write_1h_tokens"]) == (100, 0)
    assert row["model"] == "claude-sonnet-4-6" and row["response_id"] == "msg_1" and row["stop_reason"] == "end_turn"
    assert row["stream"] == 1 and row["frames"] == len(ANTHROPIC_BASIC) and row["response_bytes"] == len(body)
    assert row["provider"] == "anthropic" and row["api"] == "messages"
    # claude-sonnet-4-6: $3 in, $3.75 5m write, $0.30 read, $15 out per MTok.
    assert row["cost_usd"] == pytest.approx((20 * 3 + 100 * 3.75 + 3000 * 0.30 + 15 * 15) / 1e6)
    assert row["savings_usd"] == pytest.approx(((3120 * 3) - (20 * 3 + 100 * 3.75 + 3000 * 0.30)) / 1e6)
    assert row["ttfb_ms"] is not None and row["ttft_ms"] is not None and row["ttft_ms"] >= row["ttfb_ms"]
    assert row["proxy_request_ms"] is not None and row["proxy_request_ms"] >= 0


def test_frame_before_upstream_pause_reaches_client_during_the_pause(stack: Stack):
    # The upstream holds the rest of the stream until the client says it has frame 1 (or 5 s
    # pass). If the proxy buffered, the client could only see frame 1 after the upstream gave up
    # waiting, and `waited` would record a time-out. No clock is compared.
    got_first = threading.Event()
    paused = Step(b"".join(ANTHROPIC_BASIC[1:]), wait_for=got_first, wait_timeout=5)

    def on_piece(piece: bytes, resp) -> None:
        if b"message_start" in resp.body:
            got_first.set()

    resp, key = stack.call(Script(headers=[("content-type", "text/event-stream")], steps=[Step(ANTHROPIC_BASIC[0]), paused]), on_piece=on_piece)
    assert paused.waited == [True], "frame 1 reached the client only after the upstream pause"
    assert resp.body == b"".join(ANTHROPIC_BASIC)
    assert len(resp.pieces) >= 2  # the frame and the rest arrived as separate reads
    assert stack.row(key)["terminal_state"] == "completed"


def test_client_disconnect_mid_stream_gives_one_partial_row(stack: Stack):
    steps = [Step(f, delay=0.05) for f in ANTHROPIC_BASIC]

    def hang_up(piece: bytes, resp) -> bool:
        return b"text_delta" in resp.body

    resp, key = stack.call(Script(headers=[("content-type", "text/event-stream")], steps=steps), on_piece=hang_up)
    assert resp.disconnected_early
    row = stack.row(key)
    assert row["terminal_state"] == "client_disconnected"
    assert row["usage_source"] == "partial"
    assert row["input_tokens"] == 20 and row["cache_read_tokens"] == 3000  # from message_start


def test_upstream_reset_mid_stream_gives_one_row(stack: Stack):
    resp, key = stack.call(sse_script(ANTHROPIC_BASIC, reset_after=4))
    assert not resp.complete
    assert resp.body == b"".join(ANTHROPIC_BASIC[:4])  # everything sent before the reset arrived
    row = stack.row(key)
    assert row["terminal_state"] == "upstream_disconnected"
    assert row["usage_source"] == "partial"
    assert row["frames"] == 4


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_compressed_sse_arrives_unchanged_and_is_measured(stack: Stack, encoding: str):
    plain = b"".join(ANTHROPIC_BASIC)
    if encoding == "gzip":
        wire = gzip.compress(plain)
    elif encoding == "deflate":
        wire = zlib.compress(plain)
    elif encoding == "br":
        import brotli

        wire = brotli.compress(plain)
    else:
        from tokenpak_mitm.core.observe.decoders import zstd

        wire = zstd.compress(plain)
    steps = [Step(wire[i : i + 37]) for i in range(0, len(wire), 37)]
    script = Script(headers=[("content-type", "text/event-stream"), ("content-encoding", encoding)], steps=steps)
    resp, key = stack.call(script)
    assert resp.header("content-encoding") == encoding
    assert resp.body == wire  # still compressed, byte-identical
    row = stack.row(key)
    assert (row["input_tokens"], row["output_tokens"], row["frames"]) == (20, 15, len(ANTHROPIC_BASIC))
    assert row["response_bytes"] == len(wire)


def test_non_streamed_json_response(stack: Stack):
    msg = {
        "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001",
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 5},
    }
    body = json.dumps(msg).encode()
    resp, key = stack.call(Script(headers=[("content-type", "application/json")], steps=[Step(body)], chunked=False))
    assert resp.body == body
    row = stack.row(key)
    assert row["stream"] == 0 and row["terminal_state"] == "completed" and row["usage_source"] == "final"
    assert (row["input_tokens"], row["output_tokens"], row["model"]) == (10, 5, "claude-haiku-4-5-20251001")
    assert row["cost_usd"] == pytest.approx((10 * 1 + 5 * 5) / 1e6)


def test_http_429_gives_error_response(stack: Stack):
    body = b'{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"},"request_id":"req_x"}'
    script = Script(status=429, reason="Too Many Requests", headers=[("content-type", "application/json")], steps=[Step(body)], chunked=False)
    resp, key = stack.call(script)
    assert resp.status == 429 and resp.body == body
    row = stack.row(key)
    assert row["terminal_state"] == "error_response" and row["error"] == "rate_limit_error"
    assert row["status_code"] == 429 and row["usage_source"] == "absent"
    assert row["cost_usd"] == 0.0 and row["price_version"] == "unbilled"  # rejected, not billed: $0, not unpriced
    assert row["model"] == "claude-sonnet-4-6"  # the response names none: the request's model


def test_error_frame_inside_stream(stack: Stack):
    err = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    resp, key = stack.call(sse_script(ANTHROPIC_BASIC[:4] + [err]))
    row = stack.row(key)
    assert row["terminal_state"] == "stream_error" and row["error"] == "overloaded_error"
    assert row["usage_source"] == "partial"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("anthropic_tool_use.sse", dict(input_tokens=377, cache_read_tokens=0, cache_write_tokens=0, output_tokens=65, frames=14, stop_reason="tool_use")),
        ("anthropic_extended_thinking.sse", dict(input_tokens=50, cache_read_tokens=0, cache_write_tokens=0, output_tokens=452, frames=47)),
        ("anthropic_web_search_citations.sse", dict(input_tokens=9911, output_tokens=343, web_search_requests=1, frames=76)),
    ],
)
@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_recorded_anthropic_streams_give_their_numbers(stack: Stack, name: str, expected: dict, chunk: int):
    data = fixture_bytes(name)
    steps = [Step(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    resp, key = stack.call(Script(headers=[("content-type", "text/event-stream")], steps=steps))
    assert resp.body == data
    row = stack.row(key)
    assert row["terminal_state"] == "completed" and row["usage_source"] == "final"
    for k, v in expected.items():
        assert row[k] == v, (k, row[k], v)


def test_unmatched_paths_pass_through_unrecorded(stack: Stack):
    body = b'{"ok":true}'
    resp, key = stack.call(Script(headers=[("content-type", "application/json")], steps=[Step(body)], chunked=False), path="/v1/models")
    assert resp.body == body
    assert stack.received(key).body == b'{"model":"claude-sonnet-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
    from conftest import wait_for_rows

    assert wait_for_rows(stack.db, "upstream_request_id = ?", (key,), timeout=1.0) == []


def test_no_secret_reaches_the_database(stack: Stack):
    stack.call(sse_script(ANTHROPIC_BASIC))
    stack.proxy  # rows of this module were written with an x-api-key canary header
    raw = stack.db.read_bytes()
    assert b"sk-ant-canary" not in raw


def test_the_openai_sdk_closing_right_after_done_is_a_completed_stream(tmp_path):
    """Issue 26 item 10: the OpenAI SDK's sync client closes the response as soon as it reads
    ``data: [DONE]``; when the end of the body (the last chunk) had not arrived yet the row said
    ``client_disconnected`` although every frame and the usage were delivered. The upstream here
    ends its body a moment after [DONE], as a busy server may, so every call meets that case."""
    import openai

    from tokenpak_mitm.sim.upstream import FakeUpstream, Received

    frames = [
        b'data: {"id":"chatcmpl-sdk","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n',
        b'data: {"id":"chatcmpl-sdk","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        b'data: {"id":"chatcmpl-sdk","object":"chat.completion.chunk","created":1,"model":"gpt-4.1","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14}}\n\n',
        b"data: [DONE]\n\n",
    ]

    def handler(_: Received) -> Script:
        return Script(headers=[("content-type", "text/event-stream")], steps=[*(Step(f) for f in frames), Step(b"", delay=0.3)])

    from conftest import wait_for_rows

    from tokenpak_mitm.sim.mitmdump import MitmdumpProcess

    up = FakeUpstream(handler).start()
    db = tmp_path / "t.db"
    proxy = MitmdumpProcess(f"reverse:{up.url}", db=db, confdir=tmp_path).start()
    calls = 12
    try:
        for _ in range(calls):
            client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-proj-canary-not-a-real-key-00000000", max_retries=0)
            try:
                chunks = list(client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], stream=True,
                                                             stream_options={"include_usage": True}))
            finally:
                client.close()
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2
        rows = wait_for_rows(db, "1=1", (), n=calls)
    finally:
        proxy.stop()
        up.stop()
    assert len(rows) == calls
    assert [(r["terminal_state"], r["usage_source"], r["output_tokens"], r["error"]) for r in rows] == [("completed", "final", 2, None)] * calls
