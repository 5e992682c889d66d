"""Gemini tracker: recorded CRLF stream, buckets and costs, JSON-array streams, errors, fuzz."""

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
from tokenpak_mitm.core.dialects.gemini import GeminiTracker, gemini_usage, iter_array_elements
from tokenpak_mitm.core.observe.tap import StreamTap
from tokenpak_mitm.core.routes import classify, tracker_for

FIXTURE = (FIXTURES / "gemini_crlf_thoughts.sse").read_bytes()
MTOK = 1_000_000
STREAM_PATH = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"




def element(text: str | None = None, *, finish: str | None = None, usage: dict | None = None, **extra: object) -> dict:
    cand: dict = {"content": {"parts": [{"text": text}] if text is not None else [], "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    obj: dict = {"candidates": [cand], "modelVersion": "gemini-2.5-flash", "responseId": "resp-g", **extra}
    if usage is not None:
        obj["usageMetadata"] = usage
    return obj


def sse(*objs: dict) -> bytes:
    return b"".join(b"data: " + json.dumps(o).encode() + b"\r\n\r\n" for o in objs)


def json_array(*objs: dict) -> bytes:
    """The ``streamGenerateContent`` body without ``alt=sse``: ``[{...},\\r\\n{...}]``."""
    return b"[" + b",\r\n".join(json.dumps(o, indent=2).encode() for o in objs) + b"]"


def row_for(x, status: int = 200) -> dict:
    route = classify("POST", "generativelanguage.googleapis.com", STREAM_PATH)
    assert route is not None
    return build_row(RequestRecord("k", route, 0.0, "generativelanguage.googleapis.com", STREAM_PATH, stream=True, status_code=status, extract=x))


CACHED_USAGE = {"promptTokenCount": 10000, "cachedContentTokenCount": 8000, "candidatesTokenCount": 200,
                "thoughtsTokenCount": 300, "toolUsePromptTokenCount": 50, "totalTokenCount": 10550}


# -- recorded stream ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(FIXTURE)), max_size=40))
def test_recorded_crlf_stream_gives_readme_numbers_at_any_split(cuts: list[int]) -> None:
    t = GeminiTracker()
    flags = feed_split(t, FIXTURE, cuts)
    x = t.extract
    assert flags == [True, True, True, False]  # 2 thought summaries, a functionCall, an empty text
    assert x.model == "gemini-3-pro-preview" and x.response_id == "B94haYr_OovWjMcPjJy_6Qk"
    assert x.stop_reason == "STOP" and x.terminal_seen and x.usage_source == "final"
    u = x.usage
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens, u.reasoning_tokens) == (131, 0, 110, 95)
    assert u.input_tokens + u.cache_read_tokens + u.output_tokens == 241  # totalTokenCount


def test_recorded_stream_cost_by_hand() -> None:
    t = GeminiTracker()
    feed_split(t, FIXTURE)
    # gemini-3-pro-preview (<=200k prompt): $2 input, $12 output per MTok; thoughts are output
    assert price("gemini", t.extract.model, t.extract.usage).cost_usd == pytest.approx((131 * 2 + (15 + 95) * 12) / MTOK, rel=1e-12)


def test_recorded_stream_through_the_tap() -> None:
    t = GeminiTracker()
    tap = StreamTap(t, sse=True)
    for i in range(0, len(FIXTURE), 97):
        assert tap(FIXTURE[i : i + 97]) == FIXTURE[i : i + 97]
    tap(b"")
    assert t.extract.usage.output_tokens == 110 and tap.first_content_at is not None


# -- buckets and costs -------------------------------------------------------------------------


def test_cached_content_is_subtracted_and_tool_use_is_input() -> None:
    t = GeminiTracker()
    feed_split(t, sse(element("a", usage={"promptTokenCount": 10000}), element("b", finish="STOP", usage=CACHED_USAGE)))
    u = t.extract.usage
    assert u.input_tokens == 10000 - 8000 + 50  # fresh prompt + tool-use prompt
    assert (u.cache_read_tokens, u.output_tokens, u.reasoning_tokens) == (8000, 500, 300)
    assert u.input_tokens + u.cache_read_tokens + u.output_tokens == CACHED_USAGE["totalTokenCount"]
    cost = price("gemini", t.extract.model, u).cost_usd
    # gemini-2.5-flash: $0.30 input, $0.03 cached input, $2.50 output per MTok
    assert cost == pytest.approx((2050 * 0.30 + 8000 * 0.03 + 500 * 2.50) / MTOK, rel=1e-12)
    assert cost == pytest.approx(0.002105, rel=1e-12)
    assert cost != pytest.approx((10050 * 0.30 + 8000 * 0.03 + 500 * 2.50) / MTOK)  # the double count


def test_published_usage_shape_adds_up_to_total() -> None:
    # The field set and arithmetic of a recorded live response (protocols.md section 4): 12+71+89+65 = 237.
    meta = {"promptTokenCount": 12, "candidatesTokenCount": 71, "totalTokenCount": 237, "cachedContentTokenCount": 4,
            "toolUsePromptTokenCount": 65, "thoughtsTokenCount": 89, "serviceTier": "standard"}
    u = gemini_usage(meta)
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens, u.reasoning_tokens) == (73, 4, 160, 89)
    assert u.input_tokens + u.cache_read_tokens + u.output_tokens == 237


def test_last_usage_metadata_wins_it_is_never_summed() -> None:
    t = GeminiTracker()
    feed_split(t, sse(
        element("a", usage={"promptTokenCount": 20, "candidatesTokenCount": 5, "totalTokenCount": 25}),
        element("b", usage={"promptTokenCount": 20, "candidatesTokenCount": 9, "totalTokenCount": 29}),
        element("c", finish="MAX_TOKENS", usage={"promptTokenCount": 20, "candidatesTokenCount": 12, "totalTokenCount": 32}),
    ))
    x = t.extract
    assert (x.usage.input_tokens, x.usage.output_tokens) == (20, 12)
    assert x.stop_reason == "MAX_TOKENS" and x.usage_source == "final"


def test_usage_before_finish_reason_is_partial() -> None:
    t = GeminiTracker()
    feed_split(t, sse(element("a", usage={"promptTokenCount": 20, "candidatesTokenCount": 5})))
    assert t.extract.usage_source == "partial" and not t.extract.terminal_seen
    feed_split(t, sse(element(None, finish="STOP")))  # finish without usage: still partial
    assert t.extract.usage_source == "partial" and t.extract.terminal_seen
    feed_split(t, sse({"usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 7}}))
    assert t.extract.usage_source == "final" and t.extract.usage.output_tokens == 7  # after the finish


def test_blocked_prompt_ends_generation() -> None:
    t = GeminiTracker()
    feed_split(t, sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": "gemini-2.5-flash"}))
    x = t.extract
    assert x.stop_reason == "PROHIBITED_CONTENT" and x.terminal_seen and x.usage_source == "final"
    assert (x.usage.input_tokens, x.usage.output_tokens) == (9, 0)


def test_no_usage_at_all_is_absent() -> None:
    t = GeminiTracker()
    feed_split(t, sse(element("a"), element("b", finish="STOP")))
    assert t.extract.usage_source == "absent" and t.extract.usage.input_tokens is None


def test_model_comes_from_the_route_when_the_body_has_none() -> None:
    t = GeminiTracker()
    obj = element("hi", finish="STOP", usage={"promptTokenCount": 1000, "candidatesTokenCount": 100})
    del obj["modelVersion"]
    feed_split(t, sse(obj))
    row = row_for(t.extract)
    assert row["model"] == "gemini-2.5-flash"  # Route.model_hint from the URL
    assert row["cost_usd"] == pytest.approx((1000 * 0.30 + 100 * 2.50) / MTOK, rel=1e-12)


# -- JSON-array streams (no alt=sse) -----------------------------------------------------------

ARRAY_ELEMENTS = (
    element("Hel", usage={"promptTokenCount": 30, "totalTokenCount": 30}),
    element("lo", usage={"promptTokenCount": 30, "candidatesTokenCount": 2, "totalTokenCount": 32}),
    element("", finish="STOP", usage={"promptTokenCount": 30, "candidatesTokenCount": 3, "thoughtsTokenCount": 4, "totalTokenCount": 37}),
)


def test_complete_json_array_stream() -> None:
    t = GeminiTracker()
    t.feed_body(json_array(*ARRAY_ELEMENTS), 200)
    x = t.extract
    assert (x.usage.input_tokens, x.usage.output_tokens, x.usage.reasoning_tokens) == (30, 7, 4)
    assert x.usage_source == "final" and x.terminal_seen and x.stop_reason == "STOP" and x.content_frames == 2


def test_json_array_through_the_non_sse_tap() -> None:
    body = json_array(*ARRAY_ELEMENTS)
    t = GeminiTracker()
    tap = StreamTap(t, sse=False)
    for i in range(0, len(body), 50):
        tap(body[i : i + 50])
    tap(b"")
    assert t.extract.usage.output_tokens == 7 and t.extract.usage_source == "final"


def test_truncated_json_array_keeps_the_complete_elements() -> None:
    body = json_array(*ARRAY_ELEMENTS)
    cut = body.rfind(b'"finishReason"')  # the connection broke inside the last element
    t = GeminiTracker()
    t.feed_body(body[:cut], 200)
    x = t.extract
    assert (x.usage.input_tokens, x.usage.output_tokens) == (30, 2)  # from the second element
    assert x.usage_source == "partial" and not x.terminal_seen


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_truncation_uses_exactly_the_complete_elements(data: st.DataObject) -> None:
    body = json_array(*ARRAY_ELEMENTS)
    cut = data.draw(st.integers(0, len(body)))
    complete = iter_array_elements(body[:cut])
    assert complete == list(ARRAY_ELEMENTS[: len(complete)])
    t = GeminiTracker()
    t.feed_body(body[:cut], 200)
    with_usage = [e for e in complete if "usageMetadata" in e]
    if with_usage:
        assert t.extract.usage == gemini_usage(with_usage[-1]["usageMetadata"])
    else:
        assert t.extract.usage_source == "absent"


def test_non_streamed_generate_content_body() -> None:
    t = GeminiTracker()
    t.feed_body(json.dumps(element("answer", finish="STOP", usage=CACHED_USAGE)).encode(), 200)
    assert t.extract.usage.input_tokens == 2050 and t.extract.usage_source == "final"


# -- errors ------------------------------------------------------------------------------------

RESOURCE_EXHAUSTED = {"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
                                "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34s"}]}}


def test_error_body_type_is_the_status() -> None:
    assert check_error_shape("gemini", RESOURCE_EXHAUSTED) == []
    t = GeminiTracker()
    t.feed_body(json.dumps(RESOURCE_EXHAUSTED, indent=2).encode(), 429)
    x = t.extract
    assert x.error_type == "RESOURCE_EXHAUSTED" and not x.stream_error and x.usage_source == "absent"
    row = row_for(x, 429)
    assert row["terminal_state"] == "error_response" and row["error"] == "RESOURCE_EXHAUSTED"


def test_array_wrapped_error_body() -> None:
    body = [{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}]
    assert check_error_shape("gemini", body) == []
    t = GeminiTracker()
    t.feed_body(json.dumps(body).encode(), 400)
    assert t.extract.error_type == "INVALID_ARGUMENT"


@pytest.mark.parametrize("framing", ["sse", "array"])
def test_error_inside_a_200_stream(framing: str) -> None:
    err = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    first = element("partial", usage={"promptTokenCount": 30, "candidatesTokenCount": 1})
    t = GeminiTracker()
    if framing == "sse":
        feed_split(t, sse(first, err))
    else:
        t.feed_body(json_array(first, err), 200)
    x = t.extract
    assert x.stream_error and x.error_type == "UNAVAILABLE" and x.usage_source == "partial"
    assert row_for(x)["terminal_state"] == "stream_error"


def test_registered_for_both_gemini_verbs() -> None:
    for verb in ("generateContent", "streamGenerateContent"):
        route = classify("POST", "generativelanguage.googleapis.com", f"/v1beta/models/gemini-2.5-pro:{verb}?alt=sse")
        assert route is not None and route.model_hint == "gemini-2.5-pro"
        assert isinstance(tracker_for(route), GeminiTracker)


# -- fuzz --------------------------------------------------------------------------------------



@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(100, 599))
def test_arbitrary_bytes_never_raise(data: bytes, status: int) -> None:
    t = GeminiTracker()
    t.feed_frame(data)
    t.feed_frame(b"data: " + data + b"\r\n\r\n")
    t.feed_body(data, status)
    t.feed_body(b"[" + data, status)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_recorded_frames_never_raise(data: st.DataObject) -> None:
    raw = mutated(FIXTURE, data)
    t = GeminiTracker()
    feed_split(t, raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    t.feed_body(raw, 200)


@settings(max_examples=300, deadline=None)
@given(ANY_JSON, ANY_JSON, ANY_JSON, ANY_JSON)
def test_wrong_types_in_known_fields_never_raise(candidates: object, usage: object, error: object, feedback: object) -> None:
    obj = {"candidates": candidates, "usageMetadata": usage, "error": error, "promptFeedback": feedback, "modelVersion": usage}
    t = GeminiTracker()
    feed_split(t, sse(obj))
    t.feed_body(json.dumps([obj, obj]).encode(), 200)
    t.feed_body(json.dumps(obj).encode(), 500)
    assert all(v is None or (isinstance(v, int) and v >= 0) for v in t.extract.usage.as_dict().values())


def test_malformed_counts_are_unknown_not_zero() -> None:
    u = gemini_usage({"promptTokenCount": "131", "candidatesTokenCount": 5})
    assert u.input_tokens is None and u.output_tokens == 5
