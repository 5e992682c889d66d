"""The scenarios behind the ``flows/`` corpus: one client request and one scripted upstream answer each.

Each covers one path through the proxy (dialect × streamed or not × who placed markers × how it
ended × wire quirks). Requests carry the canary keys from ``secrets.DEFAULT_CANARIES`` in the
places real clients put keys (headers, ``?key=``, an error message that echoes the key), so the
recorded files prove redaction. The recorded provider streams come from ``conformance/fixtures``
(package data; origins and licences in its ``README.md``).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenpak_mitm.core.secret_scan import DEFAULT_CANARIES
from tokenpak_mitm.sim.upstream import Script, Step

__all__ = ["Scenario", "SCENARIOS", "FIXTURES"]

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # package data: recorded provider streams
ANTHROPIC_KEY, GOOGLE_KEY, OPENAI_KEY, OAUTH_TOKEN, COOKIE = (k.decode() for k in DEFAULT_CANARIES)

SSE = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
JSON = [("content-type", "application/json")]


@dataclass
class Scenario:
    name: str
    about: str
    path: str
    body: bytes
    headers: list[tuple[str, str]]
    script: Script
    hang_up_after: bytes | None = None  # the client disconnects once this appears in the body
    extra: dict[str, Any] = field(default_factory=dict)


# -- request builders -------------------------------------------------------------------------------
def _anthropic_headers(ua: str = "Anthropic/Python 0.49.0", auth: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    return [
        ("content-type", "application/json"), ("accept", "application/json"), ("user-agent", ua),
        ("anthropic-version", "2023-06-01"), ("x-stainless-lang", "python"),
        auth or ("x-api-key", ANTHROPIC_KEY),
    ]


def _openai_headers() -> list[tuple[str, str]]:
    return [("content-type", "application/json"), ("user-agent", "OpenAI/Python 1.60.0"), ("authorization", f"Bearer {OPENAI_KEY}")]


def _gemini_headers() -> list[tuple[str, str]]:
    return [("content-type", "application/json"), ("user-agent", "google-genai-sdk/1.2.0 gl-python/3.12")]


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


LONG_SYSTEM = " ".join(
    f"Rule {i}: answer in plain English, cite the relevant section of the style guide, and keep each reply under two hundred words unless asked otherwise."
    for i in range(70)
)  # ~10 KB: above every model's minimum cacheable prefix, so the proxy inserts markers


def _messages(model: str = "claude-sonnet-4-6", *, stream: bool = True, system: Any = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"model": model, "max_tokens": 256}
    if system is not None:
        body["system"] = system
    body["messages"] = extra.pop("messages", [{"role": "user", "content": "Summarise the rules in one sentence."}])
    body.update(extra)
    if stream:
        body["stream"] = True
    return _json(body)


# -- response builders ------------------------------------------------------------------------------
def _event(name: str, obj: Any, nl: str = "\n") -> bytes:
    return f"event: {name}{nl}data: {json.dumps(obj, separators=(',', ':'))}{nl}{nl}".encode()


def _anthropic_stream(msg_id: str, usage_start: dict[str, Any], usage_end: dict[str, Any], text: list[str], *, nl: str = "\n", model: str = "claude-sonnet-4-6", stop: str = "end_turn") -> list[bytes]:
    frames = [
        _event("message_start", {"type": "message_start", "message": {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None, "usage": usage_start}}, nl),
        _event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, nl),
        _event("ping", {"type": "ping"}, nl),
    ]
    frames += [_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}, nl) for t in text]
    frames += [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}, nl),
        _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage_end}, nl),
        _event("message_stop", {"type": "message_stop"}, nl),
    ]
    return frames


def _usage(inp: int, read: int = 0, write: int = 0, out: int = 1, write_1h: int = 0) -> dict[str, Any]:
    return {"input_tokens": inp, "cache_creation_input_tokens": write, "cache_read_input_tokens": read,
            "cache_creation": {"ephemeral_5m_input_tokens": write - write_1h, "ephemeral_1h_input_tokens": write_1h}, "output_tokens": out}


TEXT = ["Answer", " in plain", " English", ", briefly", "."]


def _sse(frames: list[bytes], rid: str, *, delay: float = 0.01, extra: list[tuple[str, str]] | None = None, **kw: Any) -> Script:
    return Script(headers=[*SSE, ("request-id", rid), *(extra or [])], steps=[Step(f, delay=delay if i else 0.0) for i, f in enumerate(frames)], **kw)


def _chunks(data: bytes, size: int, rid: str, *, headers: list[tuple[str, str]] | None = None, delay: float = 0.004) -> Script:
    pieces = [data[i:i + size] for i in range(0, len(data), size)]
    return Script(headers=[*(headers or SSE), ("request-id", rid)], steps=[Step(p, delay=delay if i else 0.0) for i, p in enumerate(pieces)])


def _json_response(obj: Any, rid: str, status: int = 200, reason: str = "OK", headers: list[tuple[str, str]] | None = None) -> Script:
    return Script(status=status, reason=reason, headers=[*(headers or JSON), ("request-id", rid)], steps=[Step(_json(obj))], chunked=False)


def _reset(script: Script) -> Script:
    """Abort with RST after the last step (a short pause first, so the proxy has read it all)."""
    script.steps.append(Step(b"", delay=0.05))
    script.reset_after = len(script.steps)
    return script


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _anthropic_json(msg_id: str, usage: dict[str, Any], model: str = "claude-sonnet-4-6") -> dict[str, Any]:
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [{"type": "text", "text": "Plain English, briefly."}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": usage}


def _diagnosed(frames: list[bytes], diagnostics: dict[str, Any]) -> list[bytes]:
    """The stream with ``diagnostics`` on message_start's message (where the API puts it)."""
    start = json.loads(frames[0].split(b"data: ", 1)[1])
    start["message"]["diagnostics"] = diagnostics
    return [_event("message_start", start), *frames[1:]]


def _gzip_sse(frames: list[bytes], rid: str) -> Script:
    wire = gzip.compress(b"".join(frames), mtime=0)
    return Script(headers=[*SSE, ("content-encoding", "gzip"), ("request-id", rid)], steps=[Step(wire[i:i + 53], delay=0.004 if i else 0.0) for i in range(0, len(wire), 53)])


def _scenarios() -> list[Scenario]:
    msgs = "/v1/messages"
    basic = _anthropic_stream("msg_corpus_basic", _usage(20, out=1), {"output_tokens": 15}, TEXT)
    s: list[Scenario] = [
        Scenario("anthropic_stream_basic", "Messages SSE, short prompt (no marker fits), completed", msgs,
                 _messages(), _anthropic_headers(), _sse(basic, "req_corpus_01")),
        Scenario("anthropic_stream_client_markers", "Messages SSE, client placed 1h + 5m markers (proxy stands down), cache read", msgs,
                 _messages(system=[{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                           messages=[{"role": "user", "content": [{"type": "text", "text": "Summarise.", "cache_control": {"type": "ephemeral"}}]}]),
                 _anthropic_headers(), _sse(_anthropic_stream("msg_corpus_cm", _usage(12, read=3300, out=1), {"output_tokens": 9}, TEXT), "req_corpus_02")),
        Scenario("anthropic_stream_proxy_insert", "Messages SSE, long system prompt and no markers: the proxy inserts, cache write", msgs,
                 _messages(system=LONG_SYSTEM), _anthropic_headers(),
                 _sse(_anthropic_stream("msg_corpus_pi", _usage(10, write=3300, out=1), {"output_tokens": 11}, TEXT), "req_corpus_03")),
        Scenario("anthropic_json_proxy_insert", "Messages JSON (not streamed), tools + long system, proxy inserts, cache read", msgs,
                 _messages(stream=False, system=[{"type": "text", "text": LONG_SYSTEM}],
                           tools=[{"name": "lookup", "description": "Look a rule up by number.", "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}]),
                 _anthropic_headers(), _json_response(_anthropic_json("msg_corpus_jpi", _usage(14, read=3400, out=6)), "req_corpus_04")),
        Scenario("anthropic_json_basic", "Messages JSON, short prompt, completed", msgs,
                 _messages(stream=False, model="claude-haiku-4-5-20251001"), _anthropic_headers(),
                 _json_response(_anthropic_json("msg_corpus_json", _usage(10, out=5), "claude-haiku-4-5-20251001"), "req_corpus_05")),
        Scenario("anthropic_stream_client_disconnect", "Messages SSE, the client hangs up after the first text delta", msgs,
                 _messages(), _anthropic_headers(), _sse(basic, "req_corpus_06", delay=0.03), hang_up_after=b"text_delta"),
        Scenario("anthropic_stream_upstream_reset", "Messages SSE, the upstream resets (RST) after four frames", msgs,
                 _messages(), _anthropic_headers(), _reset(_sse(basic[:4], "req_corpus_07"))),
        Scenario("anthropic_stream_error_frame", "Messages SSE, an overloaded_error event mid-stream", msgs,
                 _messages(), _anthropic_headers(),
                 _sse(basic[:4] + [_event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})], "req_corpus_08")),
        Scenario("anthropic_http_429", "Messages, HTTP 429 rate_limit_error JSON body", msgs,
                 _messages(), _anthropic_headers(),
                 _json_response({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of request tokens has exceeded your per-minute rate limit"}, "request_id": "req_corpus_09"}, "req_corpus_09", 429, "Too Many Requests",
                                headers=[*JSON, ("retry-after", "17"), ("anthropic-ratelimit-requests-remaining", "0")])),
        Scenario("anthropic_stream_gzip", "Messages SSE, gzip Content-Encoding (client gets the compressed bytes)", msgs,
                 _messages(), [*_anthropic_headers(), ("accept-encoding", "gzip")], _gzip_sse(basic, "req_corpus_10")),
        Scenario("anthropic_stream_crlf", "Messages SSE framed with CRLF line endings", msgs,
                 _messages(), _anthropic_headers(),
                 _sse(_anthropic_stream("msg_corpus_crlf", _usage(21, out=1), {"output_tokens": 6}, TEXT, nl="\r\n"), "req_corpus_11")),
        Scenario("anthropic_stream_cache_in_delta", "Messages SSE, cache totals arrive only in message_delta (0 at start)", msgs,
                 _messages(system=LONG_SYSTEM), _anthropic_headers(),
                 _sse(_anthropic_stream("msg_corpus_delta", _usage(43, out=1), {"input_tokens": 61, "cache_read_input_tokens": 6289, "cache_creation_input_tokens": 0, "output_tokens": 30}, TEXT), "req_corpus_12")),
        Scenario("anthropic_fixture_tool_use", "recorded Messages stream: tool_use, no final newline (anthropic-sdk-python)", msgs,
                 _messages(model="claude-sonnet-4-20250514"), _anthropic_headers(), _chunks(_fixture("anthropic_tool_use.sse"), 64, "req_corpus_13")),
        Scenario("anthropic_fixture_extended_thinking", "recorded Messages stream: extended thinking (prism-php/prism)", msgs,
                 _messages(model="claude-3-7-sonnet-20250219"), _anthropic_headers(), _chunks(_fixture("anthropic_extended_thinking.sse"), 211, "req_corpus_14")),
        Scenario("anthropic_fixture_web_search", "recorded Messages stream: web search, input grows in message_delta (prism-php/prism)", msgs,
                 _messages(model="claude-3-7-sonnet-20250219"), _anthropic_headers(), _chunks(_fixture("anthropic_web_search_citations.sse"), 997, "req_corpus_15")),
        Scenario("anthropic_count_tokens", "count_tokens JSON (not billable)", "/v1/messages/count_tokens",
                 _messages(stream=False), _anthropic_headers(), _json_response({"input_tokens": 18}, "req_corpus_16")),
        Scenario("anthropic_claude_code_oauth", "Claude Code (OAuth bearer, cookie), client markers 1h then 5m, set-cookie in the response", msgs,
                 _messages(system=[{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                           messages=[{"role": "user", "content": [{"type": "text", "text": "ls", "cache_control": {"type": "ephemeral"}}]}]),
                 [*_anthropic_headers("claude-cli/2.0.14 (external, cli)", ("authorization", f"Bearer {OAUTH_TOKEN}")), ("cookie", f"session={ANTHROPIC_KEY}")],
                 _sse(_anthropic_stream("msg_corpus_cc", _usage(5, read=0, write=900, out=1, write_1h=880), {"output_tokens": 4}, TEXT), "req_corpus_17",
                      extra=[("set-cookie", f"__cf_bm={COOKIE}; path=/; HttpOnly")])),
        Scenario("anthropic_gzip_request", "Messages with a gzip-compressed REQUEST body and a long system prompt", msgs,
                 gzip.compress(_messages(stream=False, system=LONG_SYSTEM), mtime=0), [*_anthropic_headers(), ("content-encoding", "gzip")],
                 _json_response(_anthropic_json("msg_corpus_gzreq", _usage(9, write=3300, out=6)), "req_corpus_18")),
        Scenario("anthropic_upstream_closed", "Messages, the upstream closes the connection before answering", msgs,
                 _messages(), _anthropic_headers(), Script(raw=b"")),
        # Cache diagnostics as the docs show them (build-with-claude/cache-diagnostics): the client
        # names its previous response under the beta header; message_start carries the verdict.
        Scenario("anthropic_stream_cache_diagnostics", "Messages SSE, the client asks for cache diagnostics; message_start says system_changed", msgs,
                 _messages(system=[{"type": "text", "text": LONG_SYSTEM + " Today is Friday.", "cache_control": {"type": "ephemeral"}}],
                           diagnostics={"previous_message_id": "msg_corpus_diag_prev"}),
                 [*_anthropic_headers(), ("anthropic-beta", "cache-diagnosis-2026-04-07")],
                 _sse(_diagnosed(_anthropic_stream("msg_corpus_diag", _usage(12, write=3310, out=1), {"output_tokens": 9}, TEXT),
                                 {"cache_miss_reason": {"type": "system_changed", "cache_missed_input_tokens": 3310}}), "req_corpus_diag")),
        # Claude Code's cache_control carries fields we do not know (scope): passed through, counted as client markers.
        Scenario("anthropic_json_cache_control_scope", "Messages JSON, Claude Code markers with an unknown cache_control field (scope): untouched, client markers", msgs,
                 _messages(stream=False, system=[{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h", "scope": "global"}}],
                           messages=[{"role": "user", "content": [{"type": "text", "text": "ls", "cache_control": {"type": "ephemeral", "scope": "org"}}]}]),
                 _anthropic_headers("claude-cli/2.1.90 (external, cli)"),
                 _json_response(_anthropic_json("msg_corpus_scope", _usage(4, read=3300, out=6)), "req_corpus_scope")),
        # -- OpenAI Chat Completions --------------------------------------------------------------
        Scenario("openai_chat_fixture_include_usage", "recorded Chat Completions stream with include_usage (openai-python)", "/v1/chat/completions",
                 _json({"model": "gpt-4o-2024-08-06", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
                 _openai_headers(), _chunks(_fixture("openai_chat_include_usage.sse"), 256, "req_corpus_20", headers=[*SSE, ("x-request-id", "req_corpus_20")])),
        Scenario("openai_chat_json_cached", "Chat Completions JSON with cached prompt tokens", "/v1/chat/completions",
                 _json({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}), _openai_headers(),
                 _json_response({"id": "chatcmpl-corpus21", "object": "chat.completion", "created": 1760000000, "model": "gpt-4o-mini-2024-07-18",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 2100, "completion_tokens": 3, "total_tokens": 2103, "prompt_tokens_details": {"cached_tokens": 1920}}}, "req_corpus_21")),
        Scenario("openai_chat_http_401_key_echo", "Chat Completions 401 whose message echoes the API key (must be redacted)", "/v1/chat/completions",
                 _json({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}), _openai_headers(),
                 _json_response({"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}. You can find your API key at https://platform.openai.com/account/api-keys.",
                                           "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}, "req_corpus_22", 401, "Unauthorized")),
        Scenario("openai_chat_stream_error_chunk", "Chat Completions SSE with an error object mid-stream", "/v1/chat/completions",
                 _json({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}), _openai_headers(),
                 _sse([b'data: {"id":"chatcmpl-corpus23","object":"chat.completion.chunk","created":1760000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n',
                       b'data: {"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}\n\n'], "req_corpus_23")),
        # -- OpenAI Responses ---------------------------------------------------------------------
        Scenario("openai_responses_fixture_basic", "recorded Responses API stream (prism-php/prism)", "/v1/responses",
                 _json({"model": "gpt-4-0613", "stream": True, "input": "Tell me a story"}), _openai_headers(),
                 _chunks(_fixture("openai_responses_basic_text.sse"), 1499, "req_corpus_24")),
        Scenario("openai_responses_stream_failed", "Responses API stream: event error, then response.failed", "/v1/responses",
                 _json({"model": "gpt-4.1", "stream": True, "input": "hi"}), _openai_headers(),
                 _sse([_event("response.created", {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_corpus25", "object": "response", "status": "in_progress", "model": "gpt-4.1-2025-04-14", "usage": None}}),
                       _event("error", {"type": "error", "sequence_number": 1, "error": {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded", "message": "Rate limit reached for gpt-4.1.", "param": None}}),
                       _event("response.failed", {"type": "response.failed", "sequence_number": 2, "response": {"id": "resp_corpus25", "object": "response", "status": "failed", "model": "gpt-4.1-2025-04-14",
                                                                                                  "error": {"code": "rate_limit_exceeded", "message": "Rate limit reached for gpt-4.1."}, "usage": None}})], "req_corpus_25")),
        # -- Gemini ---------------------------------------------------------------------------------
        Scenario("gemini_fixture_crlf_thoughts", "recorded Gemini streamGenerateContent SSE, CRLF, key in the query (prism-php/prism)",
                 f"/v1beta/models/gemini-3-pro-preview:streamGenerateContent?alt=sse&key={GOOGLE_KEY}",
                 _json({"contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}]}), _gemini_headers(),
                 _chunks(_fixture("gemini_crlf_thoughts.sse"), 700, "req_corpus_26")),
        Scenario("gemini_json_cached", "Gemini generateContent JSON with cachedContentTokenCount, key in a header", "/v1beta/models/gemini-2.5-flash:generateContent",
                 _json({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}), [*_gemini_headers(), ("x-goog-api-key", GOOGLE_KEY)],
                 _json_response({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}, "finishReason": "STOP", "index": 0}],
                                 "usageMetadata": {"promptTokenCount": 5000, "cachedContentTokenCount": 4096, "candidatesTokenCount": 2, "totalTokenCount": 5002},
                                 "modelVersion": "gemini-2.5-flash", "responseId": "corpus27"}, "req_corpus_27")),
        Scenario("gemini_http_400", "Gemini HTTP 400 INVALID_ARGUMENT", "/v1beta/models/gemini-2.5-flash:generateContent",
                 _json({"contents": []}), [*_gemini_headers(), ("x-goog-api-key", GOOGLE_KEY)],
                 _json_response({"error": {"code": 400, "message": "* GenerateContentRequest.contents: contents is not specified\n", "status": "INVALID_ARGUMENT"}}, "req_corpus_28", 400, "Bad Request")),
    ]
    return s


SCENARIOS: list[Scenario] = _scenarios()
