"""Invariant I9: provider error shapes, as JSON Schemas, accept real shapes and reject wrong ones;
and every tracker reads the error type out of any schema-valid error."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from tokenpak_mitm.conformance.error_shapes import DIALECT_SCHEMAS, check_error_shape
from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
from tokenpak_mitm.core.dialects.gemini import GeminiTracker
from tokenpak_mitm.core.dialects.openai_chat import OpenAIChatTracker
from tokenpak_mitm.core.dialects.openai_responses import OpenAIResponsesTracker

# Shapes as documented in shared/research/protocols.md sections 2.5, 3.1, 3.3 and 4.
VALID = {
    "anthropic": [
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        {"type": "error", "error": {"type": "not_found_error", "message": "The requested resource could not be found."},
         "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"},
        {"type": "error", "error": {"type": "some_future_error", "message": "new types appear", "extra": 1}, "request_id": None},
    ],
    "openai_chat": [
        {"error": {"message": "Rate limit reached", "type": "tokens", "param": None, "code": "rate_limit_exceeded"}},
        {"error": {"message": "The server had an error.", "type": "server_error", "param": None, "code": None}},
        {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}},
    ],
    "openai_responses": [
        {"type": "error", "sequence_number": 2, "error": {"type": "insufficient_quota", "code": "insufficient_quota", "message": "quota", "param": None}},
        {"type": "error", "error": {"type": "server_error", "code": None, "message": "Sorry, something went wrong.", "param": None}, "sequence_number": 2},
        {"type": "error", "code": "ERR_SOMETHING", "message": "flat", "param": None, "sequence_number": 1},
        {"error": {"message": "Invalid 'input'.", "type": "invalid_request_error", "param": "input", "code": None}},
    ],
    "gemini": [
        {"error": {"code": 429, "message": "You exceeded your current quota.", "status": "RESOURCE_EXHAUSTED",
                   "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "q"}]},
                               {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "34.4s"}]}},
        {"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}},
        [{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}],
    ],
}

INVALID = {
    "anthropic": [
        {"error": {"type": "overloaded_error", "message": "Overloaded"}},  # no top-level type
        {"type": "message", "error": {"type": "x", "message": "y"}},  # not an error envelope
        {"type": "error", "error": "Overloaded"},  # error is a string
        {"type": "error", "error": {"message": "no type"}},
        {"type": "error", "error": {"type": "", "message": "empty type"}},
    ],
    "openai_chat": [
        {"message": "flat", "type": "server_error"},  # compatible-server flat shape: not OpenAI's
        {"error": {"type": "server_error"}},  # no message
        {"error": {"message": "m"}},  # no type
        {"error": {"message": "m", "type": "t", "code": 429}},  # code is a string or null
        {"error": "boom"},
    ],
    "openai_responses": [
        {"type": "error"},  # neither nested nor flat
        {"type": "error", "error": {"code": "x"}},  # nested without message
        {"type": "error", "message": 5},
        {"type": "error", "error": {"message": "m", "code": 1}},
        {"error": {"message": "body without type"}},
    ],
    "gemini": [
        {"error": {"code": "429", "message": "m", "status": "RESOURCE_EXHAUSTED"}},  # code must be an integer
        {"error": {"code": 429, "message": "m"}},  # no status
        {"error": {"code": 429, "message": "m", "status": "resource exhausted"}},
        {"error": {"code": 429, "message": "m", "status": "X", "details": {"not": "a list"}}},
        {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED"},  # not wrapped in "error"
        [],
    ],
}


def _cases(table: dict) -> list:
    return [pytest.param(dialect, obj, id=f"{dialect}-{i}") for dialect, objs in table.items() for i, obj in enumerate(objs)]


@pytest.mark.parametrize(("dialect", "obj"), _cases(VALID))
def test_real_shapes_are_accepted(dialect: str, obj: object) -> None:
    assert check_error_shape(dialect, obj) == []


@pytest.mark.parametrize(("dialect", "obj"), _cases(INVALID))
def test_wrong_shapes_are_rejected_with_a_reason(dialect: str, obj: object) -> None:
    violations = check_error_shape(dialect, obj)
    assert violations and all(isinstance(v, str) and ": " in v for v in violations)


def test_violations_name_the_failing_field() -> None:
    assert check_error_shape("gemini", {"error": {"code": "429", "message": "m", "status": "X"}}) == [
        "error/code: '429' is not of type 'integer'"
    ]


def test_unknown_dialect_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        check_error_shape("cohere", {"error": {}})


@pytest.mark.parametrize("name", sorted({n for pair in DIALECT_SCHEMAS.values() for n in pair if n}))
def test_schema_files_are_valid_packaged_draft_2020_12(name: str) -> None:
    schema = json.loads(resources.files("tokenpak_mitm.conformance").joinpath("schemas", name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("2020-12/schema") and schema.get("description")


# -- the trackers read what the schemas promise --------------------------------------------------


def _frame(obj: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_anthropic_error_event_and_body() -> None:
    event, body = VALID["anthropic"][0], VALID["anthropic"][1]
    t = AnthropicTracker()
    t.feed_frame(_frame(event, "error"))
    assert t.extract.stream_error and t.extract.error_type == "overloaded_error"
    t = AnthropicTracker()
    t.feed_body(json.dumps(body).encode(), 404)
    assert t.extract.error_type == "not_found_error" and not t.extract.stream_error


NAMES = st.text(alphabet=st.characters(min_codepoint=97, max_codepoint=122) | st.just("_"), min_size=1, max_size=20)
STATUS = st.text(alphabet=st.characters(min_codepoint=65, max_codepoint=90) | st.just("_"), min_size=1, max_size=20).filter(lambda s: s[0] != "_")
MESSAGES = st.text(max_size=40)


@settings(max_examples=100, deadline=None)
@given(NAMES, MESSAGES)
def test_anthropic_tracker_reads_any_valid_error(kind: str, message: str) -> None:
    obj = {"type": "error", "error": {"type": kind, "message": message}}
    assert check_error_shape("anthropic", obj) == []
    t = AnthropicTracker()
    t.feed_frame(_frame(obj, "error"))
    assert t.extract.error_type == kind and t.extract.stream_error


@settings(max_examples=100, deadline=None)
@given(NAMES, st.none() | NAMES, MESSAGES, st.integers(400, 599))
def test_openai_chat_tracker_reads_any_valid_error(kind: str, code: str | None, message: str, status: int) -> None:
    obj = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    assert check_error_shape("openai_chat", obj) == []
    expected = code or kind
    streamed = OpenAIChatTracker()
    streamed.feed_frame(_frame(obj))
    assert streamed.extract.stream_error and streamed.extract.error_type == expected
    body = OpenAIChatTracker()
    body.feed_body(json.dumps(obj).encode(), status)
    assert body.extract.error_type == expected and not body.extract.stream_error


@settings(max_examples=100, deadline=None)
@given(st.booleans(), NAMES, st.none() | NAMES, MESSAGES)
def test_openai_responses_tracker_reads_any_valid_error_event(nested: bool, kind: str, code: str | None, message: str) -> None:
    if nested:
        obj = {"type": "error", "sequence_number": 1, "error": {"type": kind, "code": code, "message": message, "param": None}}
        expected = code or kind
    else:
        obj = {"type": "error", "sequence_number": 1, "code": code, "message": message, "param": None}
        expected = code or "error"
    assert check_error_shape("openai_responses", obj) == []
    t = OpenAIResponsesTracker()
    t.feed_frame(_frame(obj, "error"))
    assert t.extract.stream_error and t.extract.error_type == expected


@settings(max_examples=100, deadline=None)
@given(st.integers(400, 599), STATUS, MESSAGES, st.booleans())
def test_gemini_tracker_reads_any_valid_error(code: int, status: str, message: str, wrapped: bool) -> None:
    obj = {"error": {"code": code, "message": message, "status": status}}
    doc: object = [obj] if wrapped else obj
    assert check_error_shape("gemini", doc) == []
    t = GeminiTracker()
    t.feed_body(json.dumps(doc).encode(), code)
    assert t.extract.error_type == status and not t.extract.stream_error
    streamed = GeminiTracker()
    streamed.feed_frame(_frame(obj))
    assert streamed.extract.stream_error and streamed.extract.error_type == status
