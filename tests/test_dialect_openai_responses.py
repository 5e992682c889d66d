"""OpenAI Responses tracker: recorded stream, buckets and costs, incomplete/failed, errors, fuzz."""

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
from tokenpak_mitm.core.dialects.openai_responses import OpenAIResponsesTracker
from tokenpak_mitm.core.observe.sse import SSEParser
from tokenpak_mitm.core.routes import classify, tracker_for

FIXTURE = (FIXTURES / "openai_responses_basic_text.sse").read_bytes()
MTOK = 1_000_000




def event(obj: dict, *, with_name: bool = True) -> bytes:
    head = f"event: {obj['type']}\n".encode() if with_name else b""
    return head + b"data: " + json.dumps(obj).encode() + b"\n\n"


def response(status: str, *, usage: dict | None = None, model: str = "gpt-4.1", **extra: object) -> dict:
    return {"id": "resp_test", "object": "response", "status": status, "model": model, "output": [],
            "error": None, "incomplete_details": None, "usage": usage, **extra}


def created(model: str = "gpt-4.1") -> bytes:
    return event({"type": "response.created", "sequence_number": 0, "response": response("in_progress", model=model)})


def text_delta(text: str, seq: int = 1) -> bytes:
    return event({"type": "response.output_text.delta", "sequence_number": seq, "item_id": "msg_1",
                  "output_index": 0, "content_index": 0, "delta": text})


def run(*frames: bytes) -> OpenAIResponsesTracker:
    t = OpenAIResponsesTracker()
    feed_split(t, b"".join(frames))
    return t


def row_for(x, status: int = 200) -> dict:
    route = classify("POST", "api.openai.com", "/v1/responses")
    assert route is not None
    return build_row(RequestRecord("k", route, 0.0, "api.openai.com", "/v1/responses", stream=True, status_code=status, extract=x))


# -- recorded stream ---------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(FIXTURE)), max_size=60))
def test_recorded_stream_gives_readme_numbers_at_any_split(cuts: list[int]) -> None:
    t = OpenAIResponsesTracker()
    flags = feed_split(t, FIXTURE, cuts)
    x = t.extract
    assert len(flags) == 68 and sum(flags) == 60  # 60 x response.output_text.delta
    assert flags[:4] == [False] * 4 and flags[-4:] == [False] * 4
    assert x.model == "gpt-4-0613"
    assert x.response_id == "resp_6859a4ad7d3c81999e9e02548c91e2a8077218073e9990d3"
    assert (x.usage.input_tokens, x.usage.cache_read_tokens, x.usage.output_tokens, x.usage.reasoning_tokens) == (10, 0, 62, 0)
    assert x.usage.cache_write_tokens is None
    assert x.usage_source == "final" and x.terminal_seen and not x.stream_error
    assert x.stop_reason == "completed"


def test_recorded_stream_cost_by_hand() -> None:
    x = run(FIXTURE).extract
    # gpt-4-0613 prices as gpt-4: $30 input, $60 output per MTok
    assert price("openai", x.model, x.usage).cost_usd == pytest.approx((10 * 30 + 62 * 60) / MTOK, rel=1e-12)


def test_events_without_event_lines_are_still_understood() -> None:
    stripped = b"".join(
        b"\n".join(line for line in frame.split(b"\n") if not line.startswith(b"event:"))
        for frame in SSEParser().feed(FIXTURE)
    )
    t = OpenAIResponsesTracker()
    flags = feed_split(t, stripped)
    assert sum(flags) == 60
    assert t.extract.usage == run(FIXTURE).extract.usage and t.extract.terminal_seen


# -- buckets and costs -------------------------------------------------------------------------


def test_cached_tokens_are_subtracted_from_input_tokens() -> None:
    usage = {"input_tokens": 5000, "input_tokens_details": {"cached_tokens": 4096},
             "output_tokens": 200, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 5200}
    x = run(created(), text_delta("hi"), event({"type": "response.completed", "response": response("completed", usage=usage)})).extract
    assert (x.usage.input_tokens, x.usage.cache_read_tokens) == (904, 4096)
    cost = price("openai", x.model, x.usage).cost_usd
    # gpt-4.1: 904 x $2 + 4096 x $0.50 (cached) + 200 x $8, per MTok
    assert cost == pytest.approx((904 * 2 + 4096 * 0.50 + 200 * 8) / MTOK, rel=1e-12)
    assert cost == pytest.approx(0.005456, rel=1e-12)
    assert cost != pytest.approx((5000 * 2 + 4096 * 0.50 + 200 * 8) / MTOK)  # the double count


def test_cache_writes_and_reasoning() -> None:
    usage = {"input_tokens": 3000, "input_tokens_details": {"cached_tokens": 1024, "cache_write_tokens": 1280},
             "output_tokens": 100, "output_tokens_details": {"reasoning_tokens": 64}}
    x = run(event({"type": "response.completed", "response": response("completed", usage=usage, model="gpt-5.6-terra")})).extract
    u = x.usage
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens, u.output_tokens, u.reasoning_tokens) == (696, 1024, 1280, 100, 64)
    # gpt-5.6-terra: $2 input, $0.20 cached, $2.50 cache write, $12 output per MTok
    assert price("openai", x.model, u).cost_usd == pytest.approx((696 * 2 + 1024 * 0.20 + 1280 * 2.50 + 100 * 12) / MTOK, rel=1e-12)


# -- incomplete and failed ---------------------------------------------------------------------


def test_response_incomplete_gives_reason_and_final_usage() -> None:
    usage = {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": 16384, "output_tokens_details": {"reasoning_tokens": 16384}}
    final = response("incomplete", usage=usage, model="gpt-5-2025-08-07", incomplete_details={"reason": "max_output_tokens"})
    x = run(created("gpt-5-2025-08-07"),
            event({"type": "response.reasoning_summary_text.delta", "delta": "Thinking"}),
            event({"type": "response.incomplete", "response": final})).extract
    assert x.stop_reason == "max_output_tokens"
    assert x.terminal_seen and x.usage_source == "final" and not x.stream_error
    assert (x.usage.output_tokens, x.usage.reasoning_tokens) == (16384, 16384)
    assert x.content_frames == 1
    # gpt-5: $1.25 input, $10 output per MTok
    assert price("openai", x.model, x.usage).cost_usd == pytest.approx((50 * 1.25 + 16384 * 10) / MTOK, rel=1e-12)
    assert row_for(x)["terminal_state"] == "completed"


QUOTA_MSG = "You exceeded your current quota."


@pytest.mark.parametrize(
    ("error_event", "expected"),
    [
        ({"type": "error", "sequence_number": 2, "error": {"type": "insufficient_quota", "code": "insufficient_quota", "message": QUOTA_MSG, "param": None}}, "insufficient_quota"),
        ({"type": "error", "sequence_number": 2, "error": {"type": "tokens", "code": "rate_limit_exceeded", "message": "slow down", "param": None}}, "rate_limit_exceeded"),
        ({"type": "error", "sequence_number": 2, "error": {"type": "server_error", "code": None, "message": "Sorry, something went wrong.", "param": None}}, "server_error"),
        ({"type": "error", "sequence_number": 2, "code": "ERR_SOMETHING", "message": "flat shape from the SDK type", "param": None}, "ERR_SOMETHING"),
    ],
    ids=["nested-quota", "nested-rate-limit", "nested-null-code", "flat"],
)
def test_error_event_then_response_failed(error_event: dict, expected: str) -> None:
    assert check_error_shape("openai_responses", error_event) == []
    failed = response("failed", model="gpt-5-nano-2025-08-07", error={"code": "insufficient_quota", "message": QUOTA_MSG})
    x = run(created("gpt-5-nano-2025-08-07"), event(error_event), event({"type": "response.failed", "sequence_number": 3, "response": failed})).extract
    assert x.stream_error and x.terminal_seen
    assert x.error_type == expected  # the error event is more specific than response.error
    assert x.usage_source == "absent" and x.usage.input_tokens is None
    row = row_for(x)
    assert row["terminal_state"] == "stream_error" and row["error"] == expected and row["cost_usd"] is None


def test_response_failed_alone_takes_the_response_error_code() -> None:
    failed = response("failed", model="gpt-4o-mini", error={"code": "rate_limit_exceeded", "message": "Request too large"})
    x = run(created("gpt-4o-mini"), event({"type": "response.failed", "response": failed})).extract
    assert x.stream_error and x.error_type == "rate_limit_exceeded" and x.stop_reason == "failed"


def test_response_failed_with_usage_keeps_it() -> None:
    failed = response("failed", usage={"input_tokens": 40, "output_tokens": 5}, error=None)
    x = run(event({"type": "response.failed", "response": failed})).extract
    assert x.stream_error and x.error_type == "response_failed"
    assert (x.usage.input_tokens, x.usage.output_tokens) == (40, 5) and x.usage_source == "final"


def test_stream_cut_before_terminal_event_has_no_usage() -> None:
    x = run(created(), text_delta("a"), text_delta("b")).extract
    assert x.usage_source == "absent" and not x.terminal_seen and x.model == "gpt-4.1"


# -- content frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("response.output_text.delta", True),
        ("response.function_call_arguments.delta", True),
        ("response.reasoning_summary_text.delta", True),
        ("response.reasoning_text.delta", True),
        ("response.refusal.delta", True),
        ("response.output_text.done", False),
        ("response.output_item.added", False),
        ("response.in_progress", False),
    ],
)
def test_content_frames(kind: str, expected: bool) -> None:
    for with_name in (True, False):
        assert OpenAIResponsesTracker().feed_frame(event({"type": kind, "delta": "x"}, with_name=with_name)) is expected


# -- non-streamed ------------------------------------------------------------------------------


def test_non_streamed_response_body() -> None:
    usage = {"input_tokens": 2048, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens": 10, "output_tokens_details": {"reasoning_tokens": 0}}
    t = OpenAIResponsesTracker()
    t.feed_body(json.dumps(response("completed", usage=usage)).encode(), 200)
    x = t.extract
    assert (x.model, x.response_id, x.stop_reason) == ("gpt-4.1", "resp_test", "completed")
    assert (x.usage.input_tokens, x.usage.cache_read_tokens) == (1024, 1024)
    assert x.usage_source == "final" and x.terminal_seen and not x.stream_error


def test_non_streamed_background_response_is_not_terminal() -> None:
    t = OpenAIResponsesTracker()
    t.feed_body(json.dumps(response("queued")).encode(), 200)
    assert not t.extract.terminal_seen and t.extract.usage_source == "absent"


def test_error_body() -> None:
    body = {"error": {"message": "Invalid 'input': empty.", "type": "invalid_request_error", "param": "input", "code": None}}
    assert check_error_shape("openai_responses", body) == []
    t = OpenAIResponsesTracker()
    t.feed_body(json.dumps(body).encode(), 400)
    assert t.extract.error_type == "invalid_request_error" and not t.extract.stream_error
    assert row_for(t.extract, 400)["terminal_state"] == "error_response"


def test_registered_for_the_responses_route() -> None:
    route = classify("POST", "api.openai.com", "/v1/responses")
    assert route is not None and isinstance(tracker_for(route), OpenAIResponsesTracker)


# -- fuzz --------------------------------------------------------------------------------------

KINDS = st.sampled_from(["response.created", "response.completed", "response.incomplete", "response.failed", "error", "response.output_text.delta"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(100, 599))
def test_arbitrary_bytes_never_raise(data: bytes, status: int) -> None:
    t = OpenAIResponsesTracker()
    t.feed_frame(data)
    t.feed_frame(b"event: response.completed\ndata: " + data + b"\n\n")
    t.feed_body(data, status)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_recorded_frames_never_raise(data: st.DataObject) -> None:
    raw = mutated(FIXTURE, data)
    t = OpenAIResponsesTracker()
    feed_split(t, raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    t.feed_body(raw, 200)


@settings(max_examples=300, deadline=None)
@given(KINDS, ANY_JSON, ANY_JSON, ANY_JSON, ANY_JSON)
def test_wrong_types_in_known_fields_never_raise(kind: str, resp: object, usage: object, error: object, details: object) -> None:
    inner = {"id": "r", "model": "m", "usage": usage, "error": error, "incomplete_details": details, "status": resp}
    for obj in ({"type": kind, "response": inner, "error": error}, {"type": kind, "response": resp}):
        t = OpenAIResponsesTracker()
        t.feed_frame(event(obj))
        t.feed_body(json.dumps(inner).encode(), 200)
        assert all(v is None or (isinstance(v, int) and v >= 0) for v in t.extract.usage.as_dict().values())


@pytest.mark.parametrize("diagnostics, reason, missed", [
    ({"type": "cache_miss", "reason": "tools_changed", "cache_missed_tokens": 2048, "comparison_reusable_tokens": 1024}, "tools_changed", 2048),
    ({"type": "cache_miss", "reason": {"type": "model_changed"}, "cache_missed_tokens": 900}, "model_changed", 900),
    ({"type": "cache_miss", "cache_missed_tokens": 5}, "cache_miss", 5),
    ({"type": "cache_hit"}, "cache_hit", None),
    ({"type": "comparison_response_not_found"}, "comparison_response_not_found", None),
    ({"type": "unavailable"}, "unavailable", None),
    ("garbage", None, None),
])
def test_prompt_cache_diagnostics_are_the_providers_verdict(diagnostics, reason, missed):
    """OpenAI's Responses prompt-cache diagnostics (developers.openai.com, prompt-caching/diagnostics)."""
    from tokenpak_mitm.core.dialects.openai_responses import OpenAIResponsesTracker

    response = {"id": "resp_1", "object": "response", "status": "completed", "model": "gpt-5.6",
                "usage": {"input_tokens": 3000, "output_tokens": 5}, "prompt_cache_diagnostics": diagnostics}
    body = OpenAIResponsesTracker()
    body.feed_body(json.dumps(response).encode(), 200)
    stream = OpenAIResponsesTracker()
    stream.feed_frame(f"event: response.completed\ndata: {json.dumps({'type': 'response.completed', 'response': response})}\n\n".encode())
    for t in (body, stream):
        assert (t.extract.provider_miss_reason, t.extract.provider_missed_tokens) == (reason, missed)
        assert t.extract.usage.input_tokens == 3000  # nothing else moves
