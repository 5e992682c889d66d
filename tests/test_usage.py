"""The bucket model: for any usage object of each dialect, the buckets add up to the provider's
own total where it gives one, and no token is counted twice (decompositions stay inside the
bucket they split)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
from tokenpak_mitm.core.dialects.gemini import gemini_usage
from tokenpak_mitm.core.dialects.openai_chat import chat_usage
from tokenpak_mitm.core.dialects.openai_responses import responses_usage
from tokenpak_mitm.core.observe.usage import Usage

n = st.integers(0, 2_000_000)


def bucket_sum(u: Usage) -> int:
    return (u.input_tokens or 0) + (u.cache_read_tokens or 0) + (u.cache_write_tokens or 0) + (u.output_tokens or 0)


def assert_parts_inside(u: Usage) -> None:
    for m in ("audio", "image", "video"):
        assert 0 <= (getattr(u, f"input_{m}_tokens") or 0) <= (u.input_tokens or 0)
        assert 0 <= (getattr(u, f"cache_read_{m}_tokens") or 0) <= (u.cache_read_tokens or 0)
    assert sum(getattr(u, f"input_{m}_tokens") or 0 for m in ("audio", "image", "video")) <= (u.input_tokens or 0) * 3
    assert (u.reasoning_tokens or 0) <= (u.output_tokens or 0) or u.output_tokens is None
    assert (u.cache_write_1h_tokens or 0) <= (u.cache_write_tokens or 0)


@st.composite
def openai_counts(draw: st.DrawFn) -> tuple[int, int, int, int, int, int, int]:
    prompt = draw(n)
    cached = draw(st.integers(0, prompt))
    written = draw(st.integers(0, prompt - cached))
    audio = draw(st.integers(0, prompt - cached - written))
    completion = draw(n)
    reasoning = draw(st.integers(0, completion))
    return prompt, cached, written, audio, completion, reasoning, prompt + completion


@settings(max_examples=300, deadline=None)
@given(openai_counts())
def test_chat_buckets_add_up_to_total_tokens(c):
    prompt, cached, written, audio, completion, reasoning, total = c
    u = chat_usage({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total,
                    "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written, "audio_tokens": audio},
                    "completion_tokens_details": {"reasoning_tokens": reasoning}})
    assert bucket_sum(u) == total
    assert_parts_inside(u)


@settings(max_examples=300, deadline=None)
@given(openai_counts())
def test_responses_buckets_add_up_to_total_tokens(c):
    prompt, cached, written, _, completion, reasoning, total = c
    u = responses_usage({"input_tokens": prompt, "output_tokens": completion, "total_tokens": total,
                         "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
                         "output_tokens_details": {"reasoning_tokens": reasoning}})
    assert bucket_sum(u) == total
    assert_parts_inside(u)


MODALITIES = st.sampled_from(["TEXT", "AUDIO", "IMAGE", "VIDEO", "DOCUMENT"])


@st.composite
def gemini_meta(draw: st.DrawFn) -> tuple[dict, int]:
    split = draw(st.lists(st.tuples(MODALITIES, st.integers(0, 500_000)), max_size=5, unique_by=lambda t: t[0]))
    prompt = sum(c for _, c in split) + draw(st.integers(0, 1000))
    cached = draw(st.integers(0, prompt))
    cache_split = [(m, min(c, cached)) for m, c in split]
    tool, cand, thoughts = draw(n), draw(n), draw(n)
    meta = {"promptTokenCount": prompt, "cachedContentTokenCount": cached, "toolUsePromptTokenCount": tool,
            "candidatesTokenCount": cand, "thoughtsTokenCount": thoughts,
            "promptTokensDetails": [{"modality": m, "tokenCount": c} for m, c in split],
            "cacheTokensDetails": [{"modality": m, "tokenCount": c} for m, c in cache_split if draw(st.booleans())]}
    return meta, prompt + tool + cand + thoughts


@settings(max_examples=300, deadline=None)
@given(gemini_meta())
def test_gemini_buckets_add_up_to_total_token_count(case):
    meta, total = case
    u = gemini_usage({**meta, "totalTokenCount": total})
    assert bucket_sum(u) == total
    assert_parts_inside(u)


ITERATION = st.fixed_dictionaries(
    {"type": st.sampled_from(["compaction", "advisor_message"]), "input_tokens": n, "output_tokens": n},
    optional={"cache_read_input_tokens": n, "cache_creation_input_tokens": n},
)


@settings(max_examples=300, deadline=None)
@given(top_in=n, top_read=n, top_write=n, top_out=n, extras=st.lists(ITERATION, max_size=3),
       position=st.integers(0, 3), streamed=st.booleans())
def test_anthropic_iterations_are_counted_exactly_once(top_in, top_read, top_write, top_out, extras, position, streamed):
    """The provider's total is the sum over all iterations (the message iteration equals the top
    level); the buckets must equal it whatever the order and however it arrives."""
    message = {"type": "message", "input_tokens": top_in, "cache_read_input_tokens": top_read,
               "cache_creation_input_tokens": top_write, "output_tokens": top_out}
    iterations = extras[:position] + [message] + extras[position:]
    usage = {"input_tokens": top_in, "cache_read_input_tokens": top_read, "cache_creation_input_tokens": top_write,
             "output_tokens": top_out, "iterations": iterations}
    t = AnthropicTracker()
    if streamed:
        start = {"type": "message_start", "message": {"id": "m", "model": "claude-opus-5", "usage": {"input_tokens": top_in, "output_tokens": 1}}}
        delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage}
        for f in (start, delta, delta):  # a repeated cumulative figure must not add again
            t.feed_frame(f"event: {f['type']}\ndata: {json.dumps(f)}\n\n".encode())
    else:
        t.feed_body(json.dumps({"id": "m", "model": "claude-opus-5", "content": [], "usage": usage}).encode(), 200)
    u = t.extract.usage
    provider_total = sum(it.get(k, 0) for it in iterations for k in
                         ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"))
    assert bucket_sum(u) == provider_total
    assert u.extra_iterations == (len(extras) or None)
    assert_parts_inside(u)
