"""Hand-computed checks of the prompt-cache simulator against the documented rules."""
from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.sim.cache_sim import (
    CacheSimulator,
    analyse_request,
    block_tokens,
    min_cacheable_tokens,
)

MODEL = "claude-sonnet-4-6"  # minimum cacheable prefix: 1024 tokens


def text(tokens: int, fill: str = "x", ttl: str | None = None) -> dict[str, Any]:
    """A text block of exactly `tokens` stand-in tokens (canonical JSON is len(text)+25 chars)."""
    block: dict[str, Any] = {"type": "text", "text": fill * (4 * tokens - 25)}
    if ttl == "5m":
        block["cache_control"] = {"type": "ephemeral"}
    elif ttl == "1h":
        block["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    assert block_tokens(block) == tokens
    return block


def request(system: list[dict[str, Any]] | str, *contents: list[dict[str, Any]] | str, **extra: Any) -> dict[str, Any]:
    """Alternating user/assistant messages, first one from the user."""
    messages = [{"role": ("user", "assistant")[n % 2], "content": c} for n, c in enumerate(contents)]
    return {"model": MODEL, "max_tokens": 1000, "system": system, "messages": messages, **extra}


def cache_figures(result: Any) -> tuple[int, int, int, int, int]:
    """(read, 5m write, 1h write, input, total write) of a successful result."""
    assert result.status == 200, result.error
    usage = result.usage
    split = usage["cache_creation"]
    assert usage["cache_creation_input_tokens"] == split["ephemeral_5m_input_tokens"] + split["ephemeral_1h_input_tokens"]
    return (usage["cache_read_input_tokens"], split["ephemeral_5m_input_tokens"], split["ephemeral_1h_input_tokens"],
            usage["input_tokens"], usage["cache_creation_input_tokens"])


def fixed_clock() -> CacheSimulator:
    return CacheSimulator(clock=lambda: 0.0)


def error_message(result: Any) -> str:
    assert result.status == 400
    assert result.error["type"] == "error" and result.error["error"]["type"] == "invalid_request_error"
    return result.error["error"]["message"]


def test_cold_write_then_read_on_next_turn() -> None:
    sim = fixed_clock()
    system = [text(2000, "s", ttl="5m")]
    assert cache_figures(sim.handle(request(system, [text(10, "a")]))) == (0, 2000, 0, 10, 2000)
    turn_two = request(system, [text(10, "a")], [text(10, "b")], [text(10, "c")])
    assert cache_figures(sim.handle(turn_two)) == (2000, 0, 0, 30, 0)


def test_sliding_marker_reads_previous_turn_and_writes_only_the_new_part() -> None:
    sim = fixed_clock()
    system = [text(2000, "s")]
    assert cache_figures(sim.handle(request(system, [text(10, "a", ttl="5m")]))) == (0, 2010, 0, 0, 2010)
    turn_two = request(system, [text(10, "a")], [text(10, "b")], [text(10, "c", ttl="5m")])
    assert cache_figures(sim.handle(turn_two)) == (2010, 20, 0, 0, 20)


def lookback_request(marker_block: int) -> dict[str, Any]:
    """System (1100 tokens, block 0) + one user message of 40 blocks of 10 tokens (blocks 1..40)."""
    fills = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn"
    content = [text(10, fills[n], ttl="5m" if n + 1 == marker_block else None) for n in range(40)]
    return request([text(1100, "s")], content)


def test_lookback_hits_at_exactly_twenty_positions() -> None:
    sim = fixed_clock()
    assert cache_figures(sim.handle(lookback_request(5))) == (0, 1150, 0, 350, 1150)
    # block 24 checks 24, 23, ..., 5: the 20th position is the entry written at block 5
    assert cache_figures(sim.handle(lookback_request(24))) == (1150, 190, 0, 160, 190)


def test_lookback_misses_at_twenty_one_positions() -> None:
    sim = fixed_clock()
    sim.handle(lookback_request(5))
    # block 25 checks 25..6 and stops one position short of the entry at block 5
    assert cache_figures(sim.handle(lookback_request(25))) == (0, 1350, 0, 150, 1350)


def test_below_minimum_writes_nothing_and_raises_no_error() -> None:
    sim = fixed_clock()
    short = request([text(1000, "s", ttl="5m")], [text(10)])
    assert cache_figures(sim.handle(short)) == (0, 0, 0, 1010, 0)
    assert cache_figures(sim.handle(short)) == (0, 0, 0, 1010, 0)
    exactly_minimum = request([text(1014, "s")], [text(10, ttl="5m")])
    assert cache_figures(sim.handle(exactly_minimum)) == (0, 1024, 0, 0, 1024)


def test_minimum_depends_on_model() -> None:
    assert min_cacheable_tokens("claude-opus-5") == 512
    assert min_cacheable_tokens("claude-haiku-4-5-20251001") == 4096
    assert min_cacheable_tokens("claude-opus-4-7") == 2048
    assert min_cacheable_tokens("some-future-model") == 1024
    sim = fixed_clock()
    body = request([text(600, "s", ttl="5m")], [text(10)])
    assert cache_figures(sim.handle({**body, "model": "claude-opus-5"})) == (0, 600, 0, 10, 600)
    body = request([text(2000, "s", ttl="5m")], [text(10)])
    assert cache_figures(sim.handle({**body, "model": "claude-haiku-4-5-20251001"})) == (0, 0, 0, 2010, 0)


def test_five_minute_entry_expires_and_reads_refresh_it() -> None:
    now = [0.0]
    sim = CacheSimulator(clock=lambda: now[0])
    body = request([text(2000, "s", ttl="5m")], [text(10)])
    assert cache_figures(sim.handle(body))[4] == 2000
    now[0] = 299.0
    assert cache_figures(sim.handle(body))[0] == 2000  # read at 299 s refreshes until 599 s
    now[0] = 598.0
    assert cache_figures(sim.handle(body))[0] == 2000  # would have expired at 300 s without the refresh
    now[0] = 898.0 + 1
    assert cache_figures(sim.handle(body)) == (0, 2000, 0, 10, 2000)


def test_one_hour_entry_outlives_five_minutes() -> None:
    sim = fixed_clock()
    body = request([text(2000, "s", ttl="1h")], [text(10)])
    assert cache_figures(sim.handle(body, now=0.0)) == (0, 0, 2000, 10, 2000)
    assert cache_figures(sim.handle(body, now=3599.0))[0] == 2000
    assert cache_figures(sim.handle(body, now=3599.0 + 3601.0)) == (0, 0, 2000, 10, 2000)


def mixed_ttl_request() -> dict[str, Any]:
    system = [text(1200, "s", ttl="1h"), text(800, "t", ttl="1h")]
    return request(system, [text(500, "u", ttl="5m"), text(30, "v")])


def test_mixed_ttl_billing_cold() -> None:
    # A = 0, B = 2000 (last 1h breakpoint), C = 2500 (last breakpoint)
    assert cache_figures(fixed_clock().handle(mixed_ttl_request())) == (0, 500, 2000, 30, 2500)


def test_mixed_ttl_billing_after_partial_hit() -> None:
    sim = fixed_clock()
    sim.handle(request([text(1200, "s", ttl="1h")], [text(10)]))
    # A = 1200 (read), B = 2000 → 800 at 1h, C = 2500 → 500 at 5m
    assert cache_figures(sim.handle(mixed_ttl_request())) == (1200, 500, 800, 30, 1300)


def test_five_markers_are_rejected() -> None:
    body = request([text(100, "s", ttl="5m")], [text(10, c, ttl="5m") for c in "abcd"])
    assert error_message(fixed_clock().handle(body)) == "A maximum of 4 blocks with cache_control may be provided. Found 5."
    body["system"] = [text(100, "s")]
    assert fixed_clock().handle(body).status == 200


def test_one_hour_after_five_minutes_is_rejected() -> None:
    body = request([text(100, "s", ttl="5m")], [text(10, ttl="1h")])
    message = error_message(fixed_clock().handle(body))
    assert message.startswith("messages.0.content.0.cache_control.ttl: a ttl='1h' cache_control block must not come after")
    tools_first = request([text(100, "s", ttl="1h")], [text(10)])
    tools_first["tools"] = [{"name": "t", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}]
    assert error_message(fixed_clock().handle(tools_first)).startswith("system.0.cache_control.ttl")


def test_markers_on_thinking_or_empty_text_are_rejected() -> None:
    thinking = {"type": "thinking", "thinking": "hmm", "signature": "sig", "cache_control": {"type": "ephemeral"}}
    body = request("sys", [text(10)], [thinking, text(10)], [text(10)])
    assert error_message(fixed_clock().handle(body)) == "messages.1.content.0.thinking.cache_control: Extra inputs are not permitted"
    empty = {"type": "text", "text": "", "cache_control": {"type": "ephemeral"}}
    body = request("sys", [text(10), empty])
    assert error_message(fixed_clock().handle(body)) == "messages.0.content.1.text: cache_control cannot be set for empty text blocks"


def test_top_level_automatic_caching_slides_with_the_conversation() -> None:
    sim = fixed_clock()
    auto = {"cache_control": {"type": "ephemeral"}}
    system = "S" * (4 * 2000 - 25)  # a string system prompt: one 2000-token block
    assert cache_figures(sim.handle(request(system, "q" * 15, **auto))) == (0, 2010, 0, 0, 2010)
    assert cache_figures(sim.handle(request(system, "q" * 15, "r" * 15, "s" * 15, **auto))) == (2010, 20, 0, 0, 20)


def test_top_level_automatic_caching_uses_a_slot() -> None:
    four = request([text(100, "s", ttl="5m")], [text(10, c, ttl="5m") for c in "abc"] + [text(10)])
    assert error_message(fixed_clock().handle({**four, "cache_control": {"type": "ephemeral"}})).endswith("Found 5.")
    # the last block already carries a same-TTL marker: automatic caching is a no-op
    same = request([text(100, "s", ttl="5m")], [text(10, c, ttl="5m") for c in "abc"])
    assert fixed_clock().handle({**same, "cache_control": {"type": "ephemeral"}}).status == 200
    assert fixed_clock().handle({**same, "cache_control": {"type": "ephemeral", "ttl": "1h"}}).status == 400


def test_top_level_automatic_caching_honours_its_ttl() -> None:
    body = request([text(2000, "s")], [text(10)], cache_control={"type": "ephemeral", "ttl": "1h"})
    assert cache_figures(fixed_clock().handle(body)) == (0, 0, 2010, 0, 2010)


def test_markers_do_not_change_hashes_or_token_counts() -> None:
    content = [text(10, c) for c in "abcdefghij"]
    marked_early = request([text(1100, "s")], [*content[:4], {**content[4], "cache_control": {"type": "ephemeral"}}, *content[5:]])
    marked_late = request([text(1100, "s")], [*content[:9], {**content[9], "cache_control": {"type": "ephemeral"}}])
    sim = fixed_clock()
    assert cache_figures(sim.handle(marked_early))[4] == 1150
    assert cache_figures(sim.handle(marked_late)) == (1150, 50, 0, 0, 50)
    unmarked = request([text(1100, "s")], content)
    totals = {sim.count_tokens(body).usage["input_tokens"] for body in (marked_early, marked_late, unmarked)}
    assert totals == {1200}
    hashes = {tuple(b.prefix_hash for b in analyse_request(body).blocks) for body in (marked_early, marked_late, unmarked)}
    assert len(hashes) == 1


def test_string_system_hashes_like_one_text_block() -> None:
    sim = fixed_clock()
    system = "S" * (4 * 2000 - 25)
    sim.handle(request([{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}], [text(10)]))
    assert cache_figures(sim.handle(request(system, [text(10)], cache_control={"type": "ephemeral"})))[0] == 2000


def test_entries_are_visible_only_to_later_requests_and_per_model() -> None:
    body = request([text(1100, "s")], [text(10, c, ttl="5m" if c in "cj" else None) for c in "abcdefghij"])
    sim = fixed_clock()
    assert cache_figures(sim.handle(body)) == (0, 1200, 0, 0, 1200)  # no read of its own write at block 3
    assert cache_figures(sim.handle({**body, "model": "claude-opus-4-1"}))[0] == 0
    assert cache_figures(sim.handle(body))[0] == 1200


def test_tool_choice_change_keeps_system_cache_but_not_messages() -> None:
    sim = fixed_clock()
    body = request([text(1100, "s", ttl="5m")], [text(200, ttl="5m")], tool_choice={"type": "auto"})
    sim.handle(body)
    assert cache_figures(sim.handle({**body, "tool_choice": {"type": "any"}})) == (1100, 200, 0, 0, 200)


def test_tool_result_nested_marker_lifts_to_parent_only_from_last_block() -> None:
    marked = {"type": "text", "text": "result", "cache_control": {"type": "ephemeral"}}
    tool_use = {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
    lifted = {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "a"}, marked]}
    body = request([text(1100, "s")], [text(10)], [tool_use], [lifted])
    result = fixed_clock().handle(body)
    assert cache_figures(result)[4] == analyse_request(body).total_tokens
    misplaced = {"type": "tool_result", "tool_use_id": "t1", "content": [marked, {"type": "text", "text": "a"}]}
    assert error_message(fixed_clock().handle(request([text(1100, "s")], [text(10)], [tool_use], [misplaced]))).startswith(
        "messages.2.content.0.content.0.cache_control"
    )


def test_tool_use_input_key_order_matters() -> None:
    first = {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1, "b": 2}}
    second = {**first, "input": {"b": 2, "a": 1}}
    hashes = [analyse_request(request("s", [text(10)], [block])).blocks[-1].prefix_hash for block in (first, second)]
    assert hashes[0] != hashes[1]


def test_output_tokens_and_prewarming() -> None:
    sim = CacheSimulator(clock=lambda: 0.0, output_tokens=50)
    assert sim.handle({**request("s", "q"), "max_tokens": 20}).usage["output_tokens"] == 20
    assert sim.handle({**request("s", "q"), "max_tokens": 20}).stop_reason == "max_tokens"
    assert sim.handle(request("s", "q")).stop_reason == "end_turn"
    prewarm = {**request([text(2000, "s", ttl="5m")], "q"), "max_tokens": 0}
    assert sim.handle(prewarm).usage["output_tokens"] == 0
    assert sim.handle({**prewarm, "stream": True}).status == 400
    assert sim.handle({"model": MODEL, "messages": []}).status == 400


# ---------------------------------------------------------------- property


@st.composite
def conversations(draw: st.DrawFn) -> list[tuple[float, dict[str, Any]]]:
    """A growing conversation with random markers (sometimes invalid) and clock jumps."""
    model = draw(st.sampled_from(["claude-opus-5", "claude-sonnet-4-6", "claude-haiku-4-5"]))
    fills = st.sampled_from("abc")
    system = [text(draw(st.integers(7, 3000)), draw(fills))]
    messages: list[dict[str, Any]] = []
    requests, now = [], 0.0
    for turn in range(draw(st.integers(1, 6))):
        blocks = [text(draw(st.integers(7, 400)), draw(fills)) for _ in range(draw(st.integers(1, 25)))]
        messages.append({"role": "user", "content": blocks})
        flat = system + [block for message in messages for block in message["content"]]
        marked = draw(st.lists(st.integers(0, len(flat) - 1), max_size=5, unique=True))
        ttls = draw(st.lists(st.sampled_from([None, "5m", "1h"]), min_size=len(marked), max_size=len(marked)))
        body_blocks = [dict(block) for block in flat]
        for position, ttl in zip(marked, ttls, strict=True):
            body_blocks[position]["cache_control"] = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
        body: dict[str, Any] = {"model": model, "max_tokens": 100, "system": body_blocks[: len(system)], "messages": []}
        cursor = len(system)
        for message in messages:
            size = len(message["content"])
            body["messages"].append({"role": message["role"], "content": body_blocks[cursor:cursor + size]})
            cursor += size
        if draw(st.booleans()):
            body["cache_control"] = {"type": "ephemeral"}
        now += draw(st.sampled_from([0.0, 10.0, 299.0, 400.0, 3000.0, 4000.0]))
        requests.append((now, body))
        messages.append({"role": "assistant", "content": [text(draw(st.integers(7, 300)), "r")]})
    return requests


@settings(max_examples=150, deadline=None)
@given(conversations())
def test_reads_writes_and_input_add_up_to_the_prompt(conversation: list[tuple[float, dict[str, Any]]]) -> None:
    sim = CacheSimulator(clock=lambda: 0.0)
    for now, body in conversation:
        result = sim.handle(body, now=now)
        if result.status != 200:  # only the marker rules can fail these bodies
            message = error_message(result)
            assert "A maximum of 4 blocks" in message or "must not come after" in message or "conflicts with" in message
            continue
        read, write_5m, write_1h, uncached, written = cache_figures(result)
        assert min(read, write_5m, write_1h, uncached) >= 0
        assert read + written + uncached == sim.count_tokens(body).usage["input_tokens"]


# ---------------------------------------------------------------- issue 13: the simulator follows the providers

from tokenpak_mitm.sim.cache_sim import PendingWrite, analyse_openai  # noqa: E402

_DOC = "cached prefix material " * 1500


def _req(**fields):
    base = {"model": "claude-sonnet-4-6", "max_tokens": 10, "tools": [{"name": "t", "input_schema": {"type": "object"}}],
            "system": [{"type": "text", "text": _DOC, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": _DOC, "cache_control": {"type": "ephemeral"}}]}]}
    return {**base, **fields}


def _reads_after(first: dict, second: dict) -> int:
    sim = CacheSimulator()
    sim.handle(first, now=0.0)
    return sim.handle(second, now=1.0).usage["cache_read_input_tokens"]


def test_documented_invalidations_reach_exactly_their_sections():
    full = _reads_after(_req(), _req())
    system_only = _reads_after(_req(), _req(tool_choice={"type": "any"}))
    assert 0 < system_only < full  # tool_choice: messages only
    for change in ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, {"output_config": {"effort": "low"}}):
        assert _reads_after(_req(), _req(**change)) == system_only
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    with_image = _req(messages=[{"role": "user", "content": [image, {"type": "text", "text": _DOC, "cache_control": {"type": "ephemeral"}}]}])
    plain = _req(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": _DOC, "cache_control": {"type": "ephemeral"}}]}])
    assert _reads_after(plain, with_image) == system_only  # images present/absent: messages
    assert _reads_after(_req(), _req(speed="fast")) == 0  # speed: system and messages (nothing marked in tools)
    cited = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}, "citations": {"enabled": True}}
    assert _reads_after(_req(), _req(messages=[{"role": "user", "content": [cited, {"type": "text", "text": _DOC, "cache_control": {"type": "ephemeral"}}]}])) == 0


def test_writes_held_back_until_the_response_begins():
    sim = CacheSimulator()
    pending: list[PendingWrite] = []
    first = sim.apply(analyse_request(_req()), 0.0, pending=pending)[0]
    concurrent = sim.apply(analyse_request(_req()), 0.0, pending=pending)[0]
    assert first["cache_creation_input_tokens"] > 0 and concurrent["cache_read_input_tokens"] == 0
    sim.commit(pending)
    assert pending == [] and sim.handle(_req(), now=1.0).usage["cache_read_input_tokens"] > 0


def test_openai_gpt56_writes_at_breakpoints_and_reads_exact_prefixes():
    sim = CacheSimulator()
    stable = [{"role": "user", "content": [{"type": "input_text", "text": _DOC}]}]

    def body(tail: str, mark: bool) -> dict:
        items = [dict(stable[0], content=[dict(stable[0]["content"][0], **({"prompt_cache_breakpoint": {"mode": "explicit"}} if mark else {}))])]
        return {"model": "gpt-5.6", "input": items + [{"role": "user", "content": [{"type": "input_text", "text": tail}]}]}

    first = sim.handle_openai(body("a", False), "openai_responses", now=0.0).usage
    assert first["input_tokens_details"]["cache_write_tokens"] == first["input_tokens"]  # the implicit breakpoint
    miss = sim.handle_openai(body("b", False), "openai_responses", now=1.0).usage
    assert miss["input_tokens_details"]["cached_tokens"] == 0  # a changed tail: the implicit entry never matches
    sim.handle_openai(body("c", True), "openai_responses", now=2.0)
    hit = sim.handle_openai(body("d", True), "openai_responses", now=3.0).usage
    assert hit["input_tokens_details"]["cached_tokens"] > 0.9 * hit["input_tokens"]
    assert analyse_openai(body("e", True), "openai_responses").explicit == (0,)


def test_openai_before_56_writes_for_free_and_rounds_reads_to_128():
    sim = CacheSimulator()
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": _DOC}]}
    sim.handle_openai(body, "openai_chat", now=0.0)
    usage = sim.handle_openai(body, "openai_chat", now=1.0).usage
    assert usage["prompt_tokens_details"]["cache_write_tokens"] == 0
    assert usage["prompt_tokens_details"]["cached_tokens"] % 128 == 0 and usage["prompt_tokens_details"]["cached_tokens"] > 0


def test_a_mid_conversation_system_message_leaves_the_prefix_before_it_readable() -> None:
    """Anthropic's mid-conversation system messages (``{"role": "system"}`` inside ``messages``) add
    instructions without invalidating the cached prefix before them: a marker on (or after) the
    system message reads the entry written before it, and a next turn that drops the message and
    goes on reads the same entry."""
    sim = fixed_clock()
    system = [text(1500, "s")]
    first = request(system, [text(10, "a")], [text(10, "b")], [text(300, "c", ttl="5m")])
    assert cache_figures(sim.handle(first)) == (0, 1820, 0, 0, 1820)
    with_reminder = request(system, [text(10, "a")], [text(10, "b")], [text(300, "c")])
    with_reminder["messages"].append({"role": "system", "content": [text(40, "r", ttl="5m")]})
    assert cache_figures(sim.handle(with_reminder)) == (1820, 40, 0, 0, 40)
    goes_on = request(system, [text(10, "a")], [text(10, "b")], [text(300, "c")], [text(20, "d")], [text(30, "e", ttl="5m")])
    assert cache_figures(sim.handle(goes_on)) == (1820, 50, 0, 0, 50)
