"""Realistic Anthropic Messages traffic for the benchmarks: SSE frames and request bodies.

Why realistic: the addon's cost depends on what it sees. A real stream is a handful of
envelope frames around hundreds of small ``content_block_delta`` frames (~120-160 bytes each),
and a request that gets cache markers is a long system prompt plus a multi-turn conversation.
Benchmarking on toy payloads would hide the per-frame and per-byte costs we care about.

The frame bytes come from the fake upstream's dialect layer (``tokenpak_mitm.sim.replies``),
the same writer the tests' fake provider uses; they are rendered once, at import, so the upstream
process still only writes precomputed bytes.
"""

from __future__ import annotations

import json
import random

from tokenpak_mitm.sim import replies as dialects

__all__ = [
    "DELTA_HEAD", "STAMP_RE", "message_body", "json_response", "stream_frames",
    "envelope_head", "envelope_tail", "stamped_delta", "big_delta", "large_request", "delta_texts",
]

_WORDS = ["the", "model", "reads", "your", "prompt", "and", "streams", "tokens", "back", "as", "small", "text", "deltas", "while", "the", "proxy", "watches", "every", "byte", "without", "changing", "any", "of", "them", "so", "latency", "must", "stay", "tiny", "per", "frame", "cache", "markers", "let", "a", "long", "shared", "prefix", "be", "billed", "at", "a", "tenth", "of", "the", "input", "price"]

DELTA_HEAD, DELTA_TAIL = dialects.text_delta_affixes("anthropic")
# The upstream writes its CLOCK_MONOTONIC send time into each delta's text: "@<ns>@ words".
STAMP_RE = rb'"text":"@(\d+)@'

_USAGE_START = {
    "input_tokens": 23, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 51200,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}, "output_tokens": 1,
}


def envelope_head() -> list[bytes]:
    """message_start, content_block_start, ping: what precedes the first text delta."""
    return [dialects.anthropic_message_start("msg_bench01", "claude-sonnet-4-6", _USAGE_START),
            dialects.anthropic_block_start(), dialects.anthropic_ping()]


def envelope_tail(output_tokens: int) -> list[bytes]:
    """content_block_stop, message_delta (final usage), message_stop."""
    return [dialects.anthropic_block_stop(), dialects.anthropic_message_delta("end_turn", {"output_tokens": output_tokens}),
            dialects.anthropic_message_stop()]


def _text(rng: random.Random) -> bytes:
    return (" " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))).encode()


def stream_frames(n: int, *, seed: int = 1) -> list[bytes]:
    """``n`` frames of one complete stream; all but six are text deltas of 1-4 words."""
    rng = random.Random(seed)
    deltas = [DELTA_HEAD + _text(rng) + DELTA_TAIL for _ in range(max(0, n - 6))]
    return envelope_head() + deltas + envelope_tail(len(deltas))


def delta_texts(n: int, *, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [_text(rng) for _ in range(n)]


def stamped_delta(ts_ns: int, text: bytes) -> bytes:
    return b"%s@%d@%s%s" % (DELTA_HEAD, ts_ns, text, DELTA_TAIL)


def big_delta(payload_bytes: int) -> bytes:
    """One text delta carrying ``payload_bytes`` of text: the unit of the 1 GB stream."""
    word = b"lorem ipsum "
    text = (word * (payload_bytes // len(word) + 1))[:payload_bytes]
    return DELTA_HEAD + text + DELTA_TAIL


def message_body(text: str = "Say hello in five words.", *, stream: bool = False, max_tokens: int = 256) -> bytes:
    """A small Messages request (no system prompt, no markers): the common short call."""
    body = {"model": "claude-sonnet-4-6", "max_tokens": max_tokens, "stream": stream,
            "messages": [{"role": "user", "content": text}]}
    return json.dumps(body, separators=(",", ":")).encode()


def json_response() -> bytes:
    usage = {"input_tokens": 14, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 9}
    body = dialects.render_json("anthropic", dialects.Reply(id="msg_bench02", model="claude-sonnet-4-6", text="Hello there, nice to meet.", usage=usage))
    return json.dumps(body, separators=(",", ":")).encode()


def large_request(target_bytes: int = 200 * 1024, *, seed: int = 2) -> bytes:
    """A ~``target_bytes`` request an agent would send: long system prompt, tools, many turns.

    No ``cache_control`` anywhere, so any marker in what the upstream receives was inserted.
    """
    rng = random.Random(seed)

    def prose(nbytes: int) -> str:
        words: list[str] = []
        size = 0
        while size < nbytes:
            w = rng.choice(_WORDS)
            words.append(w)
            size += len(w) + 1
        return " ".join(words)

    tools = [
        {"name": f"tool_{i}", "description": prose(600),
         "input_schema": {"type": "object", "properties": {"path": {"type": "string", "description": prose(120)}},
                          "required": ["path"]}}
        for i in range(6)
    ]
    body: dict = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "stream": False,
                  "system": [{"type": "text", "text": prose(40_000)}], "tools": tools, "messages": []}
    base = len(json.dumps(body))
    turn = 0
    while base < target_bytes - 400:
        role = "user" if turn % 2 == 0 else "assistant"
        size = min(6_000, max(200, target_bytes - base - 300))
        body["messages"].append({"role": role, "content": [{"type": "text", "text": prose(size)}]})
        base = len(json.dumps(body))
        turn += 1
    if body["messages"][-1]["role"] != "user":
        body["messages"].append({"role": "user", "content": "Continue."})
    return json.dumps(body, separators=(",", ":")).encode()
