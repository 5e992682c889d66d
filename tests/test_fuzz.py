"""Property-based fuzzing of everything that touches untrusted bytes.

Upstreams and clients can send anything: truncated or invalid JSON, wrong types, huge numbers,
deep nesting, invalid UTF-8, NUL bytes, 1 MB lines, unknown events, frames out of order. The
promises checked here, for ANY input: nothing raises, the bytes the client gets are the bytes
that came in, and every usage figure is None or a non-negative int (a bad frame never becomes a
bad bill). Example counts are kept small enough for CI; raise them with
``HYPOTHESIS_PROFILE=soak`` for a longer run.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.account.telemetry import RequestRecord, build_row
from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
from tokenpak_mitm.core.observe.sse import SSEParser, event_name, parse_event
from tokenpak_mitm.core.observe.tap import StreamTap, observe_buffered_sse
from tokenpak_mitm.core.observe.tracker import Extract
from tokenpak_mitm.core.observe.usage import Usage
from tokenpak_mitm.core.routes import Route

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("soak", max_examples=2_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _trackers() -> dict[str, Callable[[], object]]:
    """Every dialect tracker present in the tree (others land concurrently)."""
    found: dict[str, Callable[[], object]] = {"anthropic": AnthropicTracker}
    for mod, cls in (("openai_chat", "OpenAIChatTracker"), ("openai_responses", "OpenAIResponsesTracker"), ("gemini", "GeminiTracker")):
        try:
            found[mod] = getattr(__import__(f"tokenpak_mitm.core.dialects.{mod}", fromlist=[cls]), cls)
        except (ImportError, AttributeError):
            pass
    return found


TRACKERS = _trackers()

# -- strategies -----------------------------------------------------------------------------------

KNOWN_EVENTS = [
    "message_start", "message_delta", "message_stop", "content_block_start", "content_block_delta", "content_block_stop",
    "ping", "error", "response.created", "response.completed", "response.failed", "response.incomplete",
    "response.output_text.delta", "error", "done", "",
]
HUGE = st.sampled_from([2**63, 2**64 + 1, 10**30, -1, -(2**63), 1e308, 1.5, float("inf"), float("nan"), True, False, 0])
scalars = st.one_of(st.none(), st.booleans(), st.integers(), HUGE, st.floats(allow_nan=True), st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=25,
)
USAGE_KEYS = [
    "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "prompt_tokens",
    "completion_tokens", "total_tokens", "promptTokenCount", "candidatesTokenCount", "cachedContentTokenCount",
    "thoughtsTokenCount", "toolUsePromptTokenCount",
]
usage_objects = st.dictionaries(st.sampled_from(USAGE_KEYS), st.one_of(HUGE, st.integers(), scalars), max_size=6)


@st.composite
def payloads(draw: st.DrawFn) -> object:
    """A provider-shaped object with fuzzed types: the keys trackers look at, the values wrong."""
    kind = draw(st.sampled_from(KNOWN_EVENTS + ["chat.completion.chunk"]))
    usage = draw(st.one_of(usage_objects, json_values))
    v = lambda: draw(json_values)  # noqa: E731 - drawn only for the shape chosen
    shape = draw(st.integers(0, 6))
    if shape == 0:
        return {"type": kind, "message": {"id": v(), "model": v(), "usage": usage}}
    if shape == 1:
        return {"type": kind, "delta": v(), "usage": usage}
    if shape == 2:
        return {"type": kind, "response": {"id": v(), "usage": usage, "status": v()}}
    if shape == 3:
        return {"object": kind, "id": v(), "choices": v(), "usage": usage}
    if shape == 4:
        return {"candidates": v(), "usageMetadata": usage, "modelVersion": v()}
    if shape == 5:
        return {"type": "error", "error": v()}
    return v()


def _dump(obj: object) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()


@st.composite
def data_fields(draw: st.DrawFn) -> bytes:
    base = _dump(draw(payloads()))
    mutate = draw(st.sampled_from(["keep", "truncate", "garble", "binary", "nul", "done", "deep"]))
    if mutate == "truncate":
        return base[: draw(st.integers(0, max(0, len(base) - 1)))]
    if mutate == "garble":
        i = draw(st.integers(0, len(base)))
        return base[:i] + draw(st.binary(max_size=8)) + base[i:]
    if mutate == "binary":
        return draw(st.binary(max_size=64))
    if mutate == "nul":
        return base.replace(b":", b":\x00", 1)
    if mutate == "done":
        return b"[DONE]"
    if mutate == "deep":
        n = draw(st.integers(50, 3000))
        return b"[" * n + b"]" * draw(st.sampled_from([0, n]))
    return base


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    lines: list[bytes] = []
    if draw(st.booleans()):
        lines.append(b"event: " + draw(st.sampled_from(KNOWN_EVENTS)).encode())
    lines.append(b"data: " + draw(data_fields()))
    if draw(st.integers(0, 9)) == 0:
        lines.append(draw(st.sampled_from([b": comment", b"id: 7", b"retry: x", b"data", b"\xff\xfe", b"event:"])))
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return eol.join(lines) + eol + eol


streams = st.lists(frames(), min_size=0, max_size=8).map(b"".join)


def chunkings(data: bytes) -> st.SearchStrategy[list[bytes]]:
    cuts = st.lists(st.integers(0, len(data)), max_size=8).map(sorted)
    return cuts.map(lambda cs: [data[a:b] for a, b in zip([0, *cs], [*cs, len(data)])])


def assert_sane(x: Extract) -> None:
    assert isinstance(x.usage, Usage)
    for f in fields(x.usage):
        v = getattr(x.usage, f.name)
        assert v is None or (type(v) is int and v >= 0), (f.name, v)
    assert x.usage_source in ("final", "partial", "absent")
    for name in ("model", "response_id", "stop_reason", "error_type"):
        v = getattr(x, name)
        assert v is None or isinstance(v, str), (name, v)


# -- SSE parser ------------------------------------------------------------------------------------


@given(st.data(), st.one_of(streams, st.binary(max_size=400)))
def test_sse_parser_loses_no_byte_and_ignores_chunking(data: st.DataObject, stream: bytes):
    whole = SSEParser()
    expected = whole.feed(stream)
    tail, rest = whole.close()
    expected += tail
    assert b"".join(expected) + rest == stream

    p = SSEParser()
    got: list[bytes] = []
    for piece in data.draw(chunkings(stream)):
        got += p.feed(piece)
    tail2, rest2 = p.close()
    assert got + tail2 == expected and rest2 == rest
    for raw in got:
        event_name(raw)
        parse_event(raw)
        parse_event(raw, first=True)


# -- dialect trackers --------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", sorted(TRACKERS))
@given(stream=streams)
def test_tracker_survives_any_frames(dialect: str, stream: bytes):
    tracker = TRACKERS[dialect]()
    p = SSEParser()
    for raw in p.feed(stream) + p.close()[0]:
        assert tracker.feed_frame(raw) in (True, False)  # type: ignore[attr-defined]
    assert_sane(tracker.extract)  # type: ignore[attr-defined]


@pytest.mark.parametrize("dialect", sorted(TRACKERS))
@given(body=st.one_of(data_fields(), streams, st.binary(max_size=200)), status=st.sampled_from([200, 201, 400, 401, 429, 500, 529]))
def test_tracker_survives_any_body(dialect: str, body: bytes, status: int):
    tracker = TRACKERS[dialect]()
    tracker.feed_body(body, status)  # type: ignore[attr-defined]
    assert_sane(tracker.extract)  # type: ignore[attr-defined]


@pytest.mark.parametrize("dialect", sorted(TRACKERS))
@given(events=st.lists(st.sampled_from(KNOWN_EVENTS), max_size=10))
def test_tracker_survives_frames_in_any_order(dialect: str, events: list[str]):
    """Real payloads, wrong order: stop before start, repeated starts, deltas after stop."""
    tracker = TRACKERS[dialect]()
    for ev in events:
        obj = {"type": ev, "message": {"usage": {"input_tokens": 5}}, "usage": {"output_tokens": 3, "input_tokens": 5}}
        tracker.feed_frame(b"event: " + ev.encode() + b"\ndata: " + _dump(obj) + b"\n\n")  # type: ignore[attr-defined]
    assert_sane(tracker.extract)  # type: ignore[attr-defined]


ADVERSARIAL = {
    "deep_nesting_100k": b"[" * 100_000 + b"]" * 100_000,
    "deep_object_nesting": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "deep_usage": b'{"type":"message_delta","usage":' + b'{"x":' * 40_000 + b"1" + b"}" * 40_001,
    "one_megabyte_line": b'{"type":"message_delta","delta":{"text":"' + b"A" * (1 << 20) + b'"},"usage":{"output_tokens":4}}',
    "invalid_utf8": b'{"type":"message_start","message":{"id":"\xff\xfe","model":"\xc3(","usage":{"input_tokens":3}}}',
    "nul_bytes": b'{"type":"message_start"\x00,"message":{"usage":{"input_tokens":\x003}}}',
    "huge_integer_text": b'{"type":"message_delta","usage":{"output_tokens":' + b"9" * 5000 + b"}}",
    "exponent_overflow": b'{"type":"message_delta","usage":{"output_tokens":1e999,"input_tokens":-0}}',
    "nan_infinity": b'{"type":"message_delta","usage":{"output_tokens":NaN,"input_tokens":Infinity}}',
    "wrong_types": b'{"type":"message_start","message":{"id":7,"model":[],"usage":{"input_tokens":"12","output_tokens":true}}}',
    "usage_is_list": b'{"type":"message_delta","usage":[1,2,3]}',
    "lone_surrogate": b'{"type":"message_start","message":{"id":"\\ud800","usage":{"input_tokens":1}}}',
}


@pytest.mark.parametrize("dialect", sorted(TRACKERS))
@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_tracker_survives_adversarial_payloads(dialect: str, case: str):
    payload = ADVERSARIAL[case]
    for event in (b"message_delta", b"response.completed", b"error"):
        tracker = TRACKERS[dialect]()
        tracker.feed_frame(b"event: " + event + b"\ndata: " + payload + b"\n\n")  # type: ignore[attr-defined]
        tracker.feed_frame(b"data: " + payload + b"\n\n")  # type: ignore[attr-defined]
        assert_sane(tracker.extract)  # type: ignore[attr-defined]
    for status in (200, 400):
        tracker = TRACKERS[dialect]()
        tracker.feed_body(payload, status)  # type: ignore[attr-defined]
        tracker.feed_body(b"[" + payload + b"]", status)  # type: ignore[attr-defined]
        assert_sane(tracker.extract)  # type: ignore[attr-defined]


# -- stream tap: identity for ANY input ------------------------------------------------------------


class ExplodingTracker:
    """A tracker with a bug: raises on every call. The client must not notice."""

    def __init__(self) -> None:
        self.extract = Extract()

    def feed_frame(self, raw: bytes) -> bool:
        raise RuntimeError("tracker bug")

    def feed_body(self, body: bytes, status: int) -> None:
        raise RuntimeError("tracker bug")


def _exploding_sink(event: str | None, raw: bytes) -> None:
    raise ValueError("observer bug")


ENCODINGS = [None, "gzip", "deflate", "br", "zstd", "identity", "x-unknown", "GZIP "]


@given(
    data=st.data(),
    stream=st.one_of(streams, st.binary(max_size=300)),
    tracker=st.sampled_from(sorted(TRACKERS) + ["exploding"]),
    encoding=st.sampled_from(ENCODINGS),
    compress=st.booleans(),
    sse=st.booleans(),
    sink=st.sampled_from([None, _exploding_sink]),
)
def test_stream_tap_returns_every_chunk_unchanged(data, stream, tracker, encoding, compress, sse, sink):
    wire = stream
    if compress and encoding and encoding.strip().lower() in ("gzip",):
        wire = gzip.compress(stream)
    elif compress and encoding == "deflate":
        wire = zlib.compress(stream)
    t = ExplodingTracker() if tracker == "exploding" else TRACKERS[tracker]()
    tap = StreamTap(t, sse=sse, content_encoding=encoding, on_frame=sink)  # type: ignore[arg-type]
    out = []
    for piece in data.draw(chunkings(wire)):
        if not piece:
            continue
        got = tap(piece)
        assert got is piece  # the very object: not a copy, not b""
        out.append(got)
    assert tap(b"") == b""
    assert b"".join(out) == wire
    tap.close()  # error/replay paths may close again
    assert tap.wire_bytes == len(wire)
    assert_sane(t.extract)


@given(body=st.one_of(streams, st.binary(max_size=300)), tracker=st.sampled_from(sorted(TRACKERS)))
def test_buffered_replay_path_never_raises(body: bytes, tracker: str):
    t = TRACKERS[tracker]()
    observe_buffered_sse(StreamTap(t, sse=True), body)  # type: ignore[arg-type]
    assert_sane(t.extract)  # type: ignore[attr-defined]


def test_stream_tap_identity_on_adversarial_chunks():
    for name, payload in ADVERSARIAL.items():
        for tracker in [*TRACKERS.values(), ExplodingTracker]:
            tap = StreamTap(tracker(), sse=True)  # type: ignore[arg-type]
            chunk = b"event: message_delta\ndata: " + payload + b"\n\n"
            assert tap(chunk) is chunk, name
            assert tap(b"") == b""


# -- the row built from whatever a fuzzed tracker saw ----------------------------------------------


@pytest.mark.parametrize("dialect", sorted(TRACKERS))
@given(stream=streams, status=st.sampled_from([None, 200, 429]), err=st.sampled_from([None, "Client disconnected.", "x" * 300]))
def test_row_from_fuzzed_stream_has_sane_types(dialect: str, stream: bytes, status, err):
    tracker = TRACKERS[dialect]()
    tap = StreamTap(tracker, sse=True)  # type: ignore[arg-type]
    tap(stream) if stream else None
    tap.close()
    rec = RequestRecord(request_key="k", route=Route("anthropic", "messages", dialect), started_at=1.0, host="h", path="/p")
    rec.extract, rec.status_code, rec.error_msg = tracker.extract, status, err  # type: ignore[attr-defined]
    row = build_row(rec)
    for key in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"):
        assert row[key] is None or (type(row[key]) is int and row[key] >= 0)
    assert row["cost_usd"] is None or row["cost_usd"] >= 0


# -- cache marker insertion --------------------------------------------------------------------------

from tokenpak_mitm.core.plan import cache_insert  # noqa: E402 - beside the tests that use it


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    block = st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "thinking", "tool_result", 7]), "text": st.one_of(st.text(max_size=200), json_values)})
    content = st.one_of(st.text(max_size=300), st.lists(block, max_size=4), json_values)
    msg = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]), "content": content})
    req = st.fixed_dictionaries(
        {"model": st.one_of(st.sampled_from(["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-1"]), json_values)},
        optional={
            "messages": st.one_of(st.lists(msg, max_size=5), json_values),
            "system": st.one_of(st.text(max_size=5000), st.lists(block, max_size=3), json_values),
            "tools": st.one_of(st.lists(st.dictionaries(st.sampled_from(["name", "input_schema", "cache_control"]), json_values), max_size=3), json_values),
            "cache_control": st.one_of(st.just({"type": "ephemeral"}), json_values),
            "stream": json_values,
        },
    )
    body = _dump(draw(req))
    mutate = draw(st.sampled_from(["keep", "keep", "truncate", "garble", "binary", "pad"]))
    if mutate == "truncate":
        return body[: draw(st.integers(0, len(body)))]
    if mutate == "garble":
        i = draw(st.integers(0, len(body)))
        return body[:i] + draw(st.binary(max_size=6)) + body[i:]
    if mutate == "binary":
        return draw(st.binary(max_size=200))
    if mutate == "pad":
        return b" \n\t" + body + b"\n"
    return body


@given(body=request_bodies(), mode=st.sampled_from(["auto", "off", "top-level"]), ttl=st.sampled_from(["5m", "1h"]), encoding=st.sampled_from([None, "identity", "gzip", "br", "x-bogus"]))
def test_insert_markers_never_raises_and_only_inserts(body: bytes, mode: str, ttl: str, encoding):
    wire = gzip.compress(body) if encoding == "gzip" else body
    if encoding == "br":
        import brotli

        wire = brotli.compress(body)
    res = cache_insert.insert_markers(wire, encoding, cache_insert.CacheOptions(mode=mode, ttl=ttl))
    assert res.decision in cache_insert.DECISIONS
    if not res.spans:
        assert res.body is wire, "no insertion must mean the original object"
        return
    decoded = res.body
    if encoding == "gzip":
        decoded = gzip.decompress(res.body)
    elif encoding == "br":
        import brotli

        decoded = brotli.decompress(res.body)
    assert cache_insert.remove_spans(decoded, res.spans) == body
    json.loads(decoded)  # what we send is still JSON
    assert 0 < res.markers_inserted <= 4


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_insert_markers_on_adversarial_bodies(case: str):
    payload = ADVERSARIAL[case]
    for body in (payload, b'{"model":"claude-sonnet-4-6","messages":[{"role":"user","content":' + payload + b"}]}"):
        res = cache_insert.insert_markers(body, None)
        assert (res.spans == () and res.body is body) or cache_insert.remove_spans(res.body, res.spans) == body
