"""The fake provider over real loopback sockets: JSON, SSE wire format, keep-alive, errors, four dialects."""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenpak_mitm.sim.cache_sim import CacheSimulator
from tokenpak_mitm.sim.provider import FakeProvider

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "You are a careful assistant. " * 300  # ~2200 stand-in tokens, above the 1024 minimum


def body(*user_turns: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    messages = [{"role": "user", "content": turn} for turn in user_turns]
    return {"model": "claude-sonnet-4-6", "max_tokens": 200, "system": system, "messages": messages, "stream": stream, **extra}


def replay(bodies: list[bytes]) -> list[dict[str, Any]]:
    """What a fresh simulator says for the same request sequence."""
    sim = CacheSimulator(clock=lambda: 0.0)
    return [sim.handle(json.loads(raw)).usage for raw in bodies]


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        fields = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(sim=CacheSimulator(clock=lambda: 0.0)) as server:  # its own loop thread: async tests use it alike
        yield server


async def test_non_streamed_message_carries_simulator_usage(fake: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        first = await client.post("/v1/messages?beta=true", json=body("hello"))
        second = await client.post("/v1/messages", json=body("hello again"))
    assert first.status_code == second.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.headers["request-id"].startswith("req_")
    message = first.json()
    assert message["type"] == "message" and message["role"] == "assistant" and message["stop_reason"] == "end_turn"
    assert message["content"][0]["type"] == "text"
    expected = replay(fake.requests)
    assert [first.json()["usage"], second.json()["usage"]] == expected
    assert expected[0]["cache_creation_input_tokens"] > 0 and expected[1]["cache_read_input_tokens"] > 0


async def test_streamed_frames_follow_the_wire_format(fake: FakeProvider) -> None:
    fake.sse_chunk_size = 7  # frames cut across many HTTP chunks must still reassemble
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post("/v1/messages", json=body("hello", stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    events = parse_sse(response.text)
    names = [name for name, _ in events]
    assert names == ["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    assert 'data: {"type": "ping"}' in response.text
    usage = replay(fake.requests)[0]
    start_usage = events[0][1]["message"]["usage"]
    assert start_usage == {**usage, "output_tokens": 1}
    assert start_usage["cache_creation"]["ephemeral_5m_input_tokens"] == usage["cache_creation_input_tokens"] > 0
    assert events[7][1]["usage"] == {"output_tokens": usage["output_tokens"]}
    assert events[7][1]["delta"]["stop_reason"] == "end_turn"
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text.startswith("Simulated reply")


async def test_cumulative_message_delta_usage_option(fake: FakeProvider) -> None:
    fake.cumulative_delta_usage = True
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post("/v1/messages", json=body("hello", stream=True))
    usage = replay(fake.requests)[0]
    delta_usage = [data for name, data in parse_sse(response.text) if name == "message_delta"][0]["usage"]
    assert delta_usage == {key: usage[key] for key in
                           ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")}


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, list[int]]:
    """Minimal HTTP/1.1 response reader: status, headers, body, chunk sizes."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in head[1:] if line)}
    if "content-length" in headers:
        return int(head[0].split()[1]), headers, await reader.readexactly(int(headers["content-length"])), []
    chunks = []
    while size := int(await reader.readuntil(b"\r\n"), 16):
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
    await reader.readexactly(2)
    return int(head[0].split()[1]), headers, b"".join(chunks), [len(chunk) for chunk in chunks]


async def test_keep_alive_serves_two_requests_on_one_connection(fake: FakeProvider) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    first = json.dumps(body("one")).encode()
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(first)}\r\n\r\n".encode() + first)
    second = json.dumps(body("two", stream=True)).encode()
    halves = [second[: len(second) // 2], second[len(second) // 2:]]
    chunked = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in halves) + b"0\r\n\r\n"
    writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    await writer.drain()
    status_one, headers_one, body_one, _ = await read_response(reader)
    status_two, headers_two, body_two, chunk_sizes = await read_response(reader)
    writer.close()
    await writer.wait_closed()
    assert (status_one, status_two) == (200, 200)
    assert headers_one["connection"] == headers_two["connection"] == "keep-alive"
    assert json.loads(body_one)["usage"]["cache_creation_input_tokens"] > 0
    assert parse_sse(body_two.decode())[0][1]["message"]["usage"]["cache_read_input_tokens"] > 0
    assert len(chunk_sizes) == 9  # one HTTP chunk per SSE frame by default
    assert fake.connections_accepted == 1
    assert fake.requests == [first, second]


async def test_invalid_request_gets_anthropic_error_body(fake: FakeProvider) -> None:
    too_many = body("hi")
    too_many["messages"][0]["content"] = [
        {"type": "text", "text": f"part {n}", "cache_control": {"type": "ephemeral"}} for n in range(4)
    ]
    async with httpx.AsyncClient(base_url=fake.url) as client:
        response = await client.post("/v1/messages", json=too_many)
        not_json = await client.post("/v1/messages", content=b"{oops", headers={"content-type": "application/json"})
        missing = await client.post("/v1/complete", json={})
    assert response.status_code == 400
    error = response.json()
    assert set(error) == {"type", "error", "request_id"}
    assert error["type"] == "error"
    assert error["error"] == {"type": "invalid_request_error",
                              "message": "A maximum of 4 blocks with cache_control may be provided. Found 5."}
    assert error["request_id"] == response.headers["request-id"]
    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


async def test_count_tokens_and_gzip_request_bodies(fake: FakeProvider) -> None:
    raw = json.dumps(body("hello")).encode()
    async with httpx.AsyncClient(base_url=fake.url) as client:
        counted = await client.post("/v1/messages/count_tokens", json=body("hello"))
        compressed = await client.post("/v1/messages", content=gzip.compress(raw),
                                       headers={"content-type": "application/json", "content-encoding": "gzip"})
    usage = compressed.json()["usage"]
    assert counted.json() == {"input_tokens": usage["input_tokens"] + usage["cache_creation_input_tokens"]}
    assert fake.received[-1].json() == json.loads(raw)
    assert len(fake.results) == 1  # count_tokens does not touch the cache


async def test_one_shot_faults(fake: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as client:
        fake.next_http_error = 529
        overloaded = await client.post("/v1/messages", json=body("hi"))
        fake.next_stream_fault = "overloaded"
        errored = await client.post("/v1/messages", json=body("hi", stream=True))
        fake.next_stream_fault = "disconnect"
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/v1/messages", json=body("hi", stream=True))
        healthy = await client.post("/v1/messages", json=body("hi"))
    assert overloaded.status_code == 529 and overloaded.json()["error"]["type"] == "overloaded_error"
    events = parse_sse(errored.text)
    assert events[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert "message_stop" not in [name for name, _ in events]
    assert healthy.status_code == 200


def test_thread_helper_for_synchronous_tests() -> None:
    with FakeProvider(sim=CacheSimulator(clock=lambda: 0.0)) as server:
        response = httpx.post(f"{server.url}/v1/messages", json=body("hi"))
    assert response.status_code == 200 and len(server.requests) == 1


def test_command_line_prints_url_and_serves() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "tokenpak_mitm.sim.provider", "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        response = httpx.post(f"{url}/v1/messages/count_tokens", json=body("hi"), timeout=10)
        assert response.status_code == 200 and response.json()["input_tokens"] > 1024
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---- four dialects: what the fake sends is what the proxy's own trackers read ----------------------
LONG = "Clause {}: the tenant keeps the premises clean and pays the rent on the first day. "
DIALECT_CASES = [
    ("anthropic", "/v1/messages", lambda stream: body("hello", stream=stream)),
    ("openai_chat", "/v1/chat/completions", lambda stream: {
        "model": "gpt-4o", "max_tokens": 200, "stream": stream, "stream_options": {"include_usage": True} if stream else None,
        "messages": [{"role": "system", "content": "".join(LONG.format(i) for i in range(150))}, {"role": "user", "content": "hi"}]}),
    ("openai_responses", "/v1/responses", lambda stream: {
        "model": "gpt-4.1", "max_output_tokens": 200, "stream": stream,
        "instructions": "".join(LONG.format(i) for i in range(150)), "input": "hi"}),
    ("gemini", "/v1beta/models/gemini-2.5-flash:{}", lambda stream: {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(("dialect", "path", "make"), DIALECT_CASES, ids=[c[0] for c in DIALECT_CASES])
def test_each_dialect_reads_back_through_the_proxys_tracker(fake: FakeProvider, dialect: str, path: str, make: Any, stream: bool) -> None:
    from tokenpak_mitm.core.observe.sse import SSEParser
    from tokenpak_mitm.core.routes import classify, tracker_for

    if dialect == "gemini":
        path = path.format("streamGenerateContent?alt=sse" if stream else "generateContent")
    payload = {k: v for k, v in make(stream).items() if v is not None}
    for _ in range(2):  # the second call reads what the first wrote (where the dialect caches)
        response = httpx.post(f"{fake.url}{path}", json=payload, timeout=10)
    assert response.status_code == 200
    route = classify("POST", "127.0.0.1", path, any_host=True)
    assert route is not None and route.dialect == dialect
    tracker = tracker_for(route)
    assert tracker is not None
    if stream:
        assert response.headers["content-type"].startswith("text/event-stream")
        parser = SSEParser()
        content = [tracker.feed_frame(frame) for frame in parser.feed(response.content)]
        more, rest = parser.close()
        content += [tracker.feed_frame(frame) for frame in more]
        assert not rest.strip() and content.count(True) >= fake.text_deltas  # Anthropic also counts its block start
    else:
        tracker.feed_body(response.content, 200)
    got, result = tracker.extract, fake.results[-1]
    assert got.usage_final and got.model and not got.stream_error
    assert got.usage.output_tokens == result.usage.get("output_tokens", result.usage.get("completion_tokens", result.usage.get("candidatesTokenCount")))
    cached = {"anthropic": result.usage.get("cache_read_input_tokens"), "gemini": None,
              "openai_chat": result.usage.get("prompt_tokens_details", {}).get("cached_tokens"),
              "openai_responses": result.usage.get("input_tokens_details", {}).get("cached_tokens")}[dialect]
    assert (got.usage.cache_read_tokens or 0) == (cached or 0)
    assert dialect == "gemini" or cached  # the repeated long prefix was read from the simulated cache


# -- cache diagnostics (Anthropic): the documented semantics, read back by the proxy's tracker ----
BETA_HEADERS = {"anthropic-beta": "cache-diagnosis-2026-04-07"}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_cache_diagnostics_name_the_first_divergence_and_the_tracker_reads_them(fake: FakeProvider, stream: bool) -> None:
    from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
    from tokenpak_mitm.core.observe.sse import SSEParser

    def ask(payload: dict[str, Any], previous: str | None, headers: dict[str, str] = BETA_HEADERS) -> tuple[str, AnthropicTracker]:
        response = httpx.post(f"{fake.url}/v1/messages", json={**payload, "stream": stream, "diagnostics": {"previous_message_id": previous}},
                              headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        tracker = AnthropicTracker()
        if stream:
            for frame in SSEParser().feed(response.content):
                tracker.feed_frame(frame)
        else:
            tracker.feed_body(response.content, 200)
        assert tracker.extract.response_id
        return tracker.extract.response_id, tracker

    first, t = ask(body("q1"), None)
    assert (t.extract.provider_miss_reason, t.extract.provider_missed_tokens) == ("none", None)  # the first turn
    grown = body("q1", "a1", "q2")
    second, t = ask(grown, first)
    assert t.extract.provider_miss_reason == "none"  # the history only grew: nothing diverged
    cases = [
        ({**grown, "model": "claude-opus-4-8"}, "model_changed"),
        ({**grown, "tools": [{"name": "t", "description": "d", "input_schema": {"type": "object"}}]}, "tools_changed"),
        ({**grown, "system": SYSTEM + " Answer in French."}, "system_changed"),
        (body("q1 edited", "a1", "q2", "a2", "q3"), "messages_changed"),
    ]
    for payload, reason in cases:
        _, t = ask(payload, second)
        assert t.extract.provider_miss_reason == reason
        assert t.extract.provider_missed_tokens is not None and t.extract.provider_missed_tokens > 0
    _, t = ask(grown, "msg_unknown")
    assert (t.extract.provider_miss_reason, t.extract.provider_missed_tokens) == ("previous_message_not_found", None)


def test_diagnostics_without_the_beta_header_is_refused_and_no_header_means_no_diagnostics(fake: FakeProvider) -> None:
    refused = httpx.post(f"{fake.url}/v1/messages", json={**body("q"), "diagnostics": {"previous_message_id": None}}, timeout=10)
    assert refused.status_code == 400 and "cache-diagnosis-2026-04-07" in refused.text
    plain = httpx.post(f"{fake.url}/v1/messages", json=body("q"), timeout=10)
    assert plain.status_code == 200 and "diagnostics" not in plain.json()
    with_header = httpx.post(f"{fake.url}/v1/messages", json=body("q"), headers=BETA_HEADERS, timeout=10)
    assert "diagnostics" not in with_header.json()  # the fingerprint is kept; nothing asked, nothing answered
    assert with_header.json()["id"] in fake.fingerprints


def test_a_mid_conversation_system_message_keeps_the_prefix_before_it_readable(fake: FakeProvider) -> None:
    """The documented use: a {"role": "system"} message appended after the history; the cached prefix
    before it is still read on that request and the next one (which keeps it)."""
    first = body("q1")
    first["messages"][-1]["content"] = [{"type": "text", "text": "q1 " * 400, "cache_control": {"type": "ephemeral"}}]
    assert httpx.post(f"{fake.url}/v1/messages", json=first, timeout=10).status_code == 200
    second = {**first, "messages": [*first["messages"], {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                                    {"role": "system", "content": "From now on, answer in French."}]}
    usage = httpx.post(f"{fake.url}/v1/messages", json=second, timeout=10).json()["usage"]
    assert usage["cache_read_input_tokens"] >= fake.results[0].usage["cache_creation_input_tokens"]


def test_openai_prompt_cache_diagnostics_per_the_documented_semantics(fake: FakeProvider) -> None:
    from tokenpak_mitm.core.dialects.openai_responses import OpenAIResponsesTracker

    def ask(payload: dict[str, Any]) -> tuple[str, OpenAIResponsesTracker]:
        response = httpx.post(f"{fake.url}/v1/responses", json=payload, timeout=10)
        assert response.status_code == 200, response.text
        tracker = OpenAIResponsesTracker()
        tracker.feed_body(response.content, 200)
        return str(response.json()["id"]), tracker

    base = {"model": "gpt-5.6", "instructions": SYSTEM, "input": [{"role": "user", "content": "q1"}]}
    first, t = ask(base)
    assert t.extract.provider_miss_reason is None  # not asked
    grown = {**base, "input": [*base["input"], {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]}
    _, t = ask({**grown, "prompt_cache_options": {"comparison_response_id": first}})
    assert t.extract.provider_miss_reason == "cache_hit"
    _, t = ask({**grown, "instructions": SYSTEM + " More.", "prompt_cache_options": {"comparison_response_id": first}})
    assert t.extract.provider_miss_reason == "instructions_changed" and (t.extract.provider_missed_tokens or 0) > 0
    _, t = ask({"model": "gpt-5.6", "instructions": SYSTEM, "previous_response_id": first, "input": "q2",
                "prompt_cache_options": {"comparison_response_id": first}})
    assert t.extract.provider_miss_reason == "cache_hit"  # continues the baseline: its prefix by construction
    _, t = ask({**grown, "prompt_cache_options": {"comparison_response_id": "resp_unknown"}})
    assert t.extract.provider_miss_reason == "comparison_response_not_found"
