"""OpenAI Chat Completions tracker: recorded stream, hand-computed buckets and costs, errors, fuzz."""

from __future__ import annotations

import json

import pytest
from dialect_helpers import ANY_JSON, feed_split, mutated
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.conformance.error_shapes import check_error_shape
from tokenpak_mitm.conformance.scenarios import FIXTURES
from tokenpak_mitm.core.account.pricing import price
from tokenpak_mitm.core.account.telemetry import RequestRecord, build_row
from tokenpak_mitm.core.dialects.openai_chat import OpenAIChatTracker
from tokenpak_mitm.core.routes import classify, tracker_for

FIXTURE = (FIXTURES / "openai_chat_include_usage.sse").read_bytes()
MTOK = 1_000_000




def chunk(choices: object = None, *, usage: object = None, model: str = "gpt-4o-2024-08-06", **extra: object) -> bytes:
    obj = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": model, **extra}
    if choices is not ...:
        obj["choices"] = choices if choices is not None else []
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def delta(content: str | None = None, finish: str | None = None, **fields: object) -> dict:
    d: dict = dict(fields)
    if content is not None:
        d["content"] = content
    return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}


DONE = b"data: [DONE]\n\n"


def run(*frames: bytes) -> OpenAIChatTracker:
    t = OpenAIChatTracker()
    feed_split(t, b"".join(frames))
    return t


# -- recorded stream ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(FIXTURE)), max_size=40))
def test_recorded_stream_gives_readme_numbers_at_any_split(cuts: list[int]) -> None:
    t = OpenAIChatTracker()
    flags = feed_split(t, FIXTURE, cuts)
    x = t.extract
    assert flags == [False, True, False, False, False]  # only the '{"' delta is content
    assert x.model == "gpt-4o-2024-08-06"
    assert x.response_id == "chatcmpl-ABfw3Oqj8RD0z6aJiiX37oTjV2HFh"
    assert x.stop_reason == "length"
    assert (x.usage.input_tokens, x.usage.output_tokens, x.usage.reasoning_tokens) == (79, 1, 0)
    assert x.usage.cache_read_tokens is None and x.usage.cache_write_tokens is None
    assert x.usage_source == "final" and x.terminal_seen and not x.stream_error
    assert x.content_frames == 1


def test_recorded_stream_cost_by_hand() -> None:
    x = run(FIXTURE).extract
    # gpt-4o: $2.50 input, $10 output per MTok
    assert price("openai", x.model, x.usage).cost_usd == pytest.approx(79 * 2.50 / MTOK + 1 * 10 / MTOK, rel=1e-12)


def test_recorded_stream_buffered_as_a_body_gives_the_same_numbers() -> None:
    t = OpenAIChatTracker()
    t.feed_body(FIXTURE, 200)  # an SSE body that arrived mislabelled as JSON
    assert t.extract.usage == run(FIXTURE).extract.usage
    assert t.extract.usage_source == "final"


# -- buckets and costs -------------------------------------------------------------------------


def test_cached_tokens_are_subtracted_from_prompt_tokens() -> None:
    usage = {"prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300,
             "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0}}
    x = run(chunk([delta("hi")]), chunk([delta(finish="stop")]), chunk([], usage=usage, model="gpt-4o"), DONE).extract
    assert x.usage.input_tokens == 464  # 2000 - 1536 fresh; 2000 would double count the reads
    assert x.usage.cache_read_tokens == 1536
    assert x.usage.total_input() == 2000
    cost = price("openai", x.model, x.usage).cost_usd
    # gpt-4o: 464 x $2.50 + 1536 x $1.25 (cached input) + 300 x $10, per MTok
    assert cost == pytest.approx((464 * 2.50 + 1536 * 1.25 + 300 * 10) / MTOK, rel=1e-12)
    assert cost == pytest.approx(0.00608, rel=1e-12)
    double_counted = (2000 * 2.50 + 1536 * 1.25 + 300 * 10) / MTOK
    assert cost != pytest.approx(double_counted)


def test_cache_writes_are_subtracted_and_priced_as_writes() -> None:
    usage = {"prompt_tokens": 3000, "completion_tokens": 100,
             "prompt_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 1280}}
    x = run(chunk([], usage=usage, model="gpt-5.6-terra"), DONE).extract
    assert (x.usage.input_tokens, x.usage.cache_read_tokens, x.usage.cache_write_tokens) == (696, 1024, 1280)
    # gpt-5.6-terra: $2 input, $0.20 cached, $2.50 cache write, $12 output per MTok
    expected = (696 * 2 + 1024 * 0.20 + 1280 * 2.50 + 100 * 12) / MTOK
    assert price("openai", x.model, x.usage).cost_usd == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.0059968, rel=1e-12)


def test_reasoning_is_inside_completion_tokens_not_added() -> None:
    usage = {"prompt_tokens": 100, "completion_tokens": 500, "completion_tokens_details": {"reasoning_tokens": 400}}
    x = run(chunk([], usage=usage, model="o3"), DONE).extract
    assert (x.usage.output_tokens, x.usage.reasoning_tokens) == (500, 400)
    # o3: $2 input, $8 output per MTok; 500 output tokens, not 900
    assert price("openai", "o3", x.usage).cost_usd == pytest.approx((100 * 2 + 500 * 8) / MTOK, rel=1e-12)


def test_deepseek_style_cache_hit_tokens_are_subtracted() -> None:
    usage = {"prompt_tokens": 1000, "completion_tokens": 10, "prompt_cache_hit_tokens": 768, "prompt_cache_miss_tokens": 232}
    x = run(chunk([], usage=usage, model="deepseek-chat"), DONE).extract
    assert (x.usage.input_tokens, x.usage.cache_read_tokens) == (232, 768)


# -- usage presence ----------------------------------------------------------------------------


def test_stream_without_include_usage_is_absent_not_zero() -> None:
    x = run(chunk([delta("Hel", role="assistant")]), chunk([delta("lo")]), chunk([delta(finish="stop")]), DONE).extract
    assert x.usage_source == "absent"
    assert all(v is None for v in x.usage.as_dict().values())
    assert x.terminal_seen and x.stop_reason == "stop" and x.content_frames == 2
    route = classify("POST", "api.openai.com", "/v1/chat/completions")
    assert route is not None
    row = build_row(RequestRecord("k", route, 0.0, "api.openai.com", "/v1/chat/completions", stream=True, status_code=200, extract=x))
    assert row["usage_source"] == "absent" and row["input_tokens"] is None and row["output_tokens"] is None
    assert row["cost_usd"] is None  # unknown, never $0
    assert row["terminal_state"] == "completed"


@pytest.mark.parametrize("choices", [None, ...], ids=["choices-null", "choices-missing"])
def test_compatible_server_usage_chunk_with_null_or_missing_choices(choices: object) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 3}
    frames = [chunk([delta("ok")]), chunk([delta(finish="stop")])]
    obj = {"id": "x", "model": "llama-3", "usage": usage}
    if choices is None:
        obj["choices"] = None
    frames.append(b"data: " + json.dumps(obj).encode() + b"\n\n")
    x = run(*frames).extract  # no [DONE]: usage is still the final total
    assert x.usage_source == "final" and (x.usage.input_tokens, x.usage.output_tokens) == (12, 3)
    assert not x.terminal_seen


def test_running_usage_on_content_chunks_is_partial_until_done() -> None:
    frames = [chunk([delta("a")], usage={"prompt_tokens": 5, "completion_tokens": 1}),
              chunk([delta("b", finish="stop")], usage={"prompt_tokens": 5, "completion_tokens": 2})]
    t = run(*frames)
    assert t.extract.usage_source == "partial" and t.extract.usage.output_tokens == 2
    feed_split(t, DONE)
    assert t.extract.usage_source == "final" and t.extract.terminal_seen


def test_interrupted_stream_keeps_no_usage_and_no_terminal() -> None:
    x = run(chunk([delta("a")]), b'data: {"id":"chatcmpl-test","choices":[{"delta":{"content":"tru').extract
    assert x.usage_source == "absent" and not x.terminal_seen


# -- content frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        (delta("x"), True),
        (delta(""), False),
        (delta(None, role="assistant"), False),
        (delta(None, refusal="I can't"), True),
        (delta(None, refusal=None), False),
        (delta(None, reasoning_content="think"), True),
        (delta(None, reasoning="think"), True),
        (delta(None, tool_calls=[{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]), True),
        (delta(None, tool_calls=[]), False),
        (delta(None, finish="stop"), False),
        (delta('say "content":"x" here'), True),
    ],
)
def test_content_frame_detection_is_the_same_on_fast_and_decoded_paths(d: dict, expected: bool) -> None:
    frame = chunk([d])
    fresh = OpenAIChatTracker()  # first frame: decoded for model and id
    assert fresh.feed_frame(frame) is expected
    warm = OpenAIChatTracker()
    warm.feed_frame(chunk([delta(None, role="assistant")]))
    assert warm.feed_frame(frame) is expected  # later frames: byte regex unless decoding is needed


def test_done_inside_content_is_not_terminal_and_comments_are_ignored() -> None:
    x = run(b": keep-alive\n\n", chunk([delta("data: [DONE]")]), b"id: 7\n\n").extract
    assert not x.terminal_seen and x.content_frames == 1


# -- errors ------------------------------------------------------------------------------------

SERVER_ERROR = {"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": None, "code": None}}
RATE_LIMIT = {"error": {"message": "Rate limit reached for gpt-4o on tokens per min.", "type": "tokens", "param": None, "code": "rate_limit_exceeded"}}


def test_mid_stream_error_chunk_is_a_stream_error() -> None:
    assert check_error_shape("openai_chat", SERVER_ERROR) == []
    x = run(chunk([delta("partial")]), b"data: " + json.dumps(SERVER_ERROR).encode() + b"\n\n").extract
    assert x.stream_error and x.error_type == "server_error"
    assert x.error_message == SERVER_ERROR["error"]["message"]
    route = classify("POST", "api.openai.com", "/v1/chat/completions")
    assert route is not None
    row = build_row(RequestRecord("k", route, 0.0, "h", "/v1/chat/completions", stream=True, status_code=200, extract=x))
    assert row["terminal_state"] == "stream_error" and row["error"] == "server_error"


def test_error_event_line_from_compatible_server() -> None:
    x = run(b'event: error\ndata: {"message":"upstream overloaded","type":"overloaded"}\n\n').extract
    assert x.stream_error and x.error_type == "overloaded"


def test_error_body_uses_code_before_type() -> None:
    assert check_error_shape("openai_chat", RATE_LIMIT) == []
    t = OpenAIChatTracker()
    t.feed_body(json.dumps(RATE_LIMIT).encode(), 429)
    x = t.extract
    assert x.error_type == "rate_limit_exceeded" and not x.stream_error and x.usage_source == "absent"
    route = classify("POST", "api.openai.com", "/v1/chat/completions")
    assert route is not None
    row = build_row(RequestRecord("k", route, 0.0, "h", "/v1/chat/completions", status_code=429, extract=x))
    assert row["terminal_state"] == "error_response" and row["error"] == "rate_limit_exceeded"


def test_error_object_in_a_200_body_is_not_completed() -> None:
    t = OpenAIChatTracker()
    t.feed_body(json.dumps(SERVER_ERROR).encode(), 200)
    assert t.extract.stream_error and t.extract.error_type == "server_error"


# -- non-streamed ------------------------------------------------------------------------------


def test_non_streamed_completion_body() -> None:
    body = {
        "id": "chatcmpl-abc", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 20, "total_tokens": 1220,
                  "prompt_tokens_details": {"cached_tokens": 1024}, "completion_tokens_details": {"reasoning_tokens": 0}},
    }
    t = OpenAIChatTracker()
    t.feed_body(json.dumps(body).encode(), 200)
    x = t.extract
    assert (x.model, x.response_id, x.stop_reason) == ("gpt-4o-2024-08-06", "chatcmpl-abc", "stop")
    assert (x.usage.input_tokens, x.usage.cache_read_tokens, x.usage.output_tokens) == (176, 1024, 20)
    assert x.usage_source == "final" and x.terminal_seen
    assert price("openai", x.model, x.usage).cost_usd == pytest.approx((176 * 2.50 + 1024 * 1.25 + 20 * 10) / MTOK, rel=1e-12)


def test_registered_for_the_chat_route() -> None:
    route = classify("POST", "api.openai.com", "/v1/chat/completions")
    assert route is not None and isinstance(tracker_for(route), OpenAIChatTracker)


# -- fuzz --------------------------------------------------------------------------------------



@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(100, 599))
def test_arbitrary_bytes_never_raise(data: bytes, status: int) -> None:
    t = OpenAIChatTracker()
    t.feed_frame(data)
    t.feed_frame(b"data: " + data + b"\n\n")
    t.feed_body(data, status)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_recorded_frames_never_raise(data: st.DataObject) -> None:
    raw = mutated(FIXTURE, data)
    t = OpenAIChatTracker()
    feed_split(t, raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    t.feed_body(raw, 200)


@settings(max_examples=300, deadline=None)
@given(ANY_JSON, ANY_JSON, ANY_JSON, ANY_JSON)
def test_wrong_types_in_known_fields_never_raise(choices: object, usage: object, error: object, model: object) -> None:
    obj = {"id": "x", "model": model, "choices": choices, "usage": usage, "error": error}
    frame = b"data: " + json.dumps(obj).encode() + b"\n\n"
    t = OpenAIChatTracker()
    t.feed_frame(frame)
    t.feed_frame(frame)
    t.feed_body(json.dumps(obj).encode(), 200)
    u = t.extract.usage
    assert all(v is None or (isinstance(v, int) and v >= 0) for v in u.as_dict().values())


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    t = OpenAIChatTracker()
    deep = b"[" * 100_000
    assert t.feed_frame(b'data: {"usage": {"x": ' + deep + b"\n\n") is False
    t.feed_body(deep, 200)
