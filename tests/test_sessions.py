"""Session tracker and miss diagnosis against the cache simulator, causes known by construction.

Each request goes through the real planner/splicer (``insert_markers``, as the proxy sends it),
the simulator answers with the usage the provider would report, and the tracker sees only what
the proxy sees: the outgoing body, the time and that usage.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from dialect_helpers import ANY_JSON
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.account.request_shape import shape_of
from tokenpak_mitm.core.account.session_id import Hint, identify
from tokenpak_mitm.core.account.sessions import Outcome, SessionTracker, UsageFacts
from tokenpak_mitm.core.plan.cache_insert import CacheOptions, insert_markers
from tokenpak_mitm.core.row import MISS_REASONS
from tokenpak_mitm.sim.cache_sim import CacheSimulator, PendingWrite, analyse_request

MODEL = "claude-sonnet-4-6"


def system_text(tag: str, rules: int = 200) -> str:
    return f"Agent {tag}. " + " ".join(f"Rule {i}: answer tersely and cite section {i}." for i in range(rules))


def tools(tag: str, n: int = 3) -> list[dict[str, Any]]:
    return [{"name": f"{tag}_tool{i}", "description": f"Tool {i} of {tag}. " * 10, "input_schema": {"type": "object"}} for i in range(n)]


class Driver:
    """One simulated provider cache and one tracker, driven with an explicit clock."""

    def __init__(self) -> None:
        self.sim = CacheSimulator(clock=lambda: 0.0)
        self.tracker = SessionTracker(clock=lambda: 0.0)

    def send(self, request: dict[str, Any], now: float, *, cache: str = "auto", headers: dict[str, str] | None = None) -> tuple[Outcome, dict[str, Any]]:
        body = json.dumps(request).encode()
        sent = json.loads(insert_markers(body, None, CacheOptions(mode=cache)).body)
        shape = shape_of(sent, "anthropic")
        ticket = self.tracker.begin(identify(headers or {}, sent, "anthropic", "key-1"), shape, now)
        usage = self.sim.handle(sent, now=now).usage
        facts = UsageFacts(usage["input_tokens"], usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"])
        return self.tracker.finish(ticket, facts, now), usage


@dataclass
class Conversation:
    tag: str
    system: str
    tools: list[dict[str, Any]]
    cache: str = "auto"
    client_marker: bool = False
    pad: int = 0  # words added to each question
    messages: list[dict[str, Any]] = field(default_factory=list)
    turn: int = 0

    def request(self) -> dict[str, Any]:
        self.messages.append({"role": "user", "content": f"[{self.tag}] question {self.turn}: " + "details " * self.pad})
        msgs = json.loads(json.dumps(self.messages))
        if self.client_marker:
            last = msgs[-1]
            content = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
            content[-1] = {**content[-1], "cache_control": {"type": "ephemeral"}}
            last["content"] = content
        req: dict[str, Any] = {"model": MODEL, "max_tokens": 50, "system": self.system, "messages": msgs}
        if self.tools:
            req["tools"] = self.tools
        return req

    def answered(self) -> None:
        self.messages.append({"role": "assistant", "content": f"[{self.tag}] answer {self.turn}"})
        self.turn += 1

    def jump(self, blocks: int) -> None:
        """The next user turn carries `blocks` blocks (a long tool result, say)."""
        self.messages.append({"role": "user", "content": [{"type": "text", "text": f"[{self.tag}] part {i}"} for i in range(blocks)]})
        self.messages.append({"role": "assistant", "content": f"[{self.tag}] ok"})


def run(d: Driver, conv: Conversation, now: float, **kw: Any) -> tuple[Outcome, dict[str, Any]]:
    out = d.send(conv.request(), now, cache=conv.cache, **kw)
    conv.answered()
    return out


def reasons(outcomes: list[tuple[Outcome, dict[str, Any]]]) -> list[str | None]:
    return [o.verdict.reason if o.verdict else None for o, _ in outcomes]


# -- one test per cause ---------------------------------------------------------------------------


def test_cold_then_reads():
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    got = [run(d, c, t) for t in (0, 10, 20)]
    assert reasons(got) == ["cold", None, None]
    assert got[1][1]["cache_read_input_tokens"] > 0


def test_ttl_expired_after_a_pause_longer_than_the_ttl():
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    got = [run(d, c, t) for t in (0, 10, 10 + 301 + 30, 400)]
    assert reasons(got) == ["cold", None, "ttl_expired", None]
    outcome, usage = got[2]
    assert usage["cache_read_input_tokens"] == 0
    assert outcome.verdict is not None and outcome.verdict.expected_tokens > 1000


def test_tool_definition_change_is_prefix_changed_in_tools():
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    run(d, c, 0)
    run(d, c, 10)
    c.tools = [*c.tools[:1], {**c.tools[1], "description": "changed"}, *c.tools[2:]]
    outcome, _ = run(d, c, 20)
    v = outcome.verdict
    assert v is not None and (v.reason, v.section, v.block, v.change) == ("prefix_changed", "tools", 1, "tools")


def test_timestamp_in_system_prompt_is_a_volatile_change():
    d = Driver()
    c = Conversation("a", "Current time: 2026-11-30 10:00:01. " + system_text("a"), tools("a"))
    run(d, c, 0)
    run(d, c, 10)
    c.system = c.system.replace("10:00:01", "10:00:21")
    outcome, _ = run(d, c, 20)
    v = outcome.verdict
    assert v is not None and (v.reason, v.section, v.block, v.change) == ("prefix_changed", "system", 0, "volatile")


def test_thinking_parameters_change():
    d, c = Driver(), Conversation("a", system_text("a"), [], pad=400)
    run(d, c, 0)
    run(d, c, 10)
    req = c.request()
    req["thinking"] = {"type": "enabled", "budget_tokens": 2000}
    outcome, _ = d.send(req, 20)
    v = outcome.verdict
    assert v is not None and (v.reason, v.section, v.block, v.change) == ("prefix_changed", "messages", 0, "model_params")


def test_system_text_edit_is_a_system_change():
    d, c = Driver(), Conversation("a", system_text("a"), [])
    run(d, c, 0)
    run(d, c, 10)
    c.system += " Always answer in French."
    v = run(d, c, 20)[0].verdict
    assert v is not None and (v.reason, v.section, v.change) == ("prefix_changed", "system", "system")


def test_history_rewritten():
    d, c = Driver(), Conversation("a", system_text("a"), [], pad=400)
    for t in range(3):
        run(d, c, t * 10)
    c.messages[2] = {"role": "user", "content": "[a] question 1, edited: " + "details " * 400}
    v = run(d, c, 40)[0].verdict
    assert v is not None and (v.reason, v.section, v.block, v.change) == ("prefix_changed", "messages", 2, "history")


def test_lookback_exceeded_when_a_turn_adds_more_than_twenty_blocks_past_the_only_marker():
    d = Driver()
    c = Conversation("a", system_text("a"), [], client_marker=True)
    run(d, c, 0)
    run(d, c, 10)
    c.jump(25)
    outcome, usage = run(d, c, 20)
    assert usage["cache_read_input_tokens"] == 0
    assert outcome.verdict is not None and outcome.verdict.reason == "lookback_exceeded"


def test_below_minimum():
    d = Driver()
    c = Conversation("a", "Be brief.", [], client_marker=True)
    got = [run(d, c, t) for t in (0, 10, 20)]
    assert reasons(got) == ["below_minimum"] * 3


def test_not_marked():
    d = Driver()
    c = Conversation("a", system_text("a"), tools("a"), cache="off")
    got = [run(d, c, t) for t in (0, 10, 20)]
    assert reasons(got) == ["cold", "not_marked", "not_marked"]
    assert got[1][0].verdict is not None and got[1][0].verdict.expected_tokens > 1000


def test_provider_evicted_when_the_simulator_drops_entries():
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    run(d, c, 0)
    run(d, c, 10)
    d.sim.clear()
    assert reasons([run(d, c, 20)]) == ["provider_evicted"]


def test_warm_until_follows_the_last_cache_write_or_read():
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    assert run(d, c, 0)[0].warm_until == 300.0
    assert run(d, c, 100)[0].warm_until == 400.0


# -- the mixed workload ---------------------------------------------------------------------------


def test_mixed_workload_names_the_right_cause_and_never_a_wrong_one():
    rng = random.Random(14)
    d = Driver()
    kinds = ["auto"] * 5 + ["off", "client", "short"]
    convs: list[tuple[Conversation, dict[str, Any]]] = []
    for n in range(12):
        kind = kinds[n % len(kinds)]
        conv = Conversation(
            f"c{n}", "Be brief." if kind == "short" else system_text(f"c{n}"), [] if kind == "short" else tools(f"c{n}"),
            cache="off" if kind == "off" else "auto", client_marker=kind in ("client", "short"),
        )
        convs.append((conv, {"kind": kind, "last": None, "pending": None, "evicted": False}))
    now, right, wrong, unknown, misses, false_alarms = 0.0, 0, [], 0, 0, []
    by_label: dict[str, int] = {}
    for step in range(600):
        roll = rng.random()
        if roll < 0.01:
            now += 400  # everybody pauses past the 5-minute TTL
        elif roll < 0.02:
            d.sim.clear()  # the provider evicts everything
            for _, st in convs:
                st["evicted"] = True
        conv, st = convs[rng.randrange(len(convs))]
        if st["kind"] == "short" and conv.turn >= 8:
            conv.messages.clear()  # keep short conversations short: start over
            conv.turn = 0
            st["last"] = None
        event = None
        if st["last"] is not None and st["kind"] not in ("short", "off"):
            r = rng.random()
            if r < 0.05:
                conv.tools = [{**conv.tools[0], "description": f"v{step}"}, *conv.tools[1:]]
                event = "prefix_changed"
            elif r < 0.10:
                conv.system = system_text(conv.tag) + f" Version {step}."
                event = "prefix_changed"
            elif r < 0.14 and st["kind"] == "client":
                conv.jump(24)
                event = "lookback_exceeded"
        if st["kind"] == "short":
            label = "below_minimum"
        elif st["last"] is None:
            label = "cold"
        elif st["kind"] == "off":
            label = "not_marked"
        elif now - st["last"] >= 300:
            label = "ttl_expired"
        elif event is not None:
            label = event
        elif st["evicted"]:
            label = "provider_evicted"
        else:
            label = None
        outcome, _ = run(d, conv, now)
        st["last"], st["evicted"] = now, False
        got = outcome.verdict.reason if outcome.verdict else None
        if label is None:
            if got is not None:
                false_alarms.append((step, conv.tag, got))
        else:
            misses += 1
            by_label[label] = by_label.get(label, 0) + 1
            if got == label:
                right += 1
            elif got == "unknown":
                unknown += 1
            else:
                wrong.append((step, conv.tag, label, got))
        now += rng.uniform(1, 4)
    print(f"mixed workload: {misses} misses, {right} right, {unknown} unknown, {len(wrong)} wrong, {len(false_alarms)} false alarms; {by_label}")
    assert set(by_label) == {"cold", "below_minimum", "not_marked", "ttl_expired", "prefix_changed", "lookback_exceeded", "provider_evicted"}
    assert misses >= 100
    assert wrong == [] and false_alarms == []
    assert right / misses >= 0.95, (right, unknown, misses)


# -- sessions -------------------------------------------------------------------------------------


def test_interleaved_conversations_are_separated_by_lineage():
    rng = random.Random(3)
    d = Driver()
    convs = [Conversation(f"c{n}", system_text("shared"), tools("shared")) for n in range(6)]
    seen: dict[str, set[str]] = {c.tag: set() for c in convs}
    turns: dict[str, list[int]] = {c.tag: [] for c in convs}
    now = 0.0
    for _ in range(120):
        c = rng.choice(convs)
        outcome, _ = run(d, c, now)
        seen[c.tag].add(outcome.session_id)
        turns[c.tag].append(outcome.turn)
        now += 1
    assert all(len(ids) == 1 for ids in seen.values())
    assert len({next(iter(ids)) for ids in seen.values()}) == len(convs)
    assert all(t == list(range(1, len(t) + 1)) for t in turns.values())


def test_a_changed_system_prompt_keeps_the_session():
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    first = run(d, c, 0)[0].session_id
    c.system += " New rule."
    assert run(d, c, 10)[0].session_id == first


CC_SESSION = "54c1eb09-bc4c-4d2f-98eb-6d2ab2d5e2fe"


@pytest.mark.parametrize("where", ["header", "json_user_id", "legacy_user_id"])
def test_claude_code_requests_carry_their_own_session_id(where: str):
    req: dict[str, Any] = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"user-agent": "claude-cli/2.1.90 (external, cli)"}
    if where == "header":
        headers["x-claude-code-session-id"] = CC_SESSION
    elif where == "json_user_id":
        req["metadata"] = {"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": CC_SESSION})}
    else:
        req["metadata"] = {"user_id": f"user_{'a' * 64}_account__session_{CC_SESSION}"}
    d = Driver()
    outcome, _ = d.send(req, 0, headers=headers)
    assert (outcome.session_id, outcome.session_source, outcome.turn) == (CC_SESSION, "claude-code", 1)
    # a subagent of the same Claude Code session: same id, next turn, own thread (cold, not "changed")
    sub = {**req, "system": "You are a subagent.", "messages": [{"role": "user", "content": "search"}]}
    outcome, _ = d.send(sub, 1, headers=headers)
    assert (outcome.session_id, outcome.turn) == (CC_SESSION, 2)


def test_previous_response_id_continues_the_session():
    t = SessionTracker(clock=lambda: 0.0)
    first = t.begin(Hint(), shape_of({"model": "gpt-5", "input": "hi"}, "openai_responses"), 0)
    t.note_response(first, "resp_1")
    t.finish(first, None)
    second = t.begin(Hint(previous_response_id="resp_1"), shape_of({"model": "gpt-5", "input": "more"}, "openai_responses"), 1)
    assert (second.session_id, second.turn, second.source) == (first.session_id, 2, "previous_response")


def test_memory_is_bounded():
    t = SessionTracker(clock=lambda: 0.0, max_sessions=50, max_index=500)
    for n in range(400):
        req = {"model": MODEL, "max_tokens": 5, "system": f"agent {n}", "messages": [{"role": "user", "content": f"q{n}"}]}
        t.finish(t.begin(Hint(session_id=f"s{n}", source="header"), shape_of(req), n), UsageFacts(10, 0, 0), n)
    assert len(t._sessions) <= 50 and len(t._index) <= 500


def test_overlapping_requests_are_not_blamed_on_the_provider():
    """B starts while A's response (which writes the new prefix) has not begun: B cannot read A's write,
    only what was cached before; the tracker expects exactly that (no miss), and never calls it eviction."""
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    run(d, c, 0)
    c.pad = 2000  # this turn adds a long message: A writes far more than was cached before
    body = json.loads(insert_markers(json.dumps(c.request()).encode(), None).body)
    shape, analysis = shape_of(body), analyse_request(body)
    a = d.tracker.begin(identify({}, body, "anthropic", "key-1"), shape, 10.0)
    b = d.tracker.begin(identify({}, body, "anthropic", "key-1"), shape, 10.5)  # a parallel retry
    pa: list[PendingWrite] = []
    pb: list[PendingWrite] = []
    ua, _ = d.sim.apply(analysis, 10.0, pending=pa)
    ub, _ = d.sim.apply(analysis, 10.5, pending=pb)  # cannot see A's write: A's response has not begun
    d.sim.commit(pa)
    d.sim.commit(pb)
    assert 0 < ub["cache_read_input_tokens"] == ua["cache_read_input_tokens"]
    out_a = d.tracker.finish(a, UsageFacts(ua["input_tokens"], ua["cache_read_input_tokens"], ua["cache_creation_input_tokens"], response_started=11.0))
    out_b = d.tracker.finish(b, UsageFacts(ub["input_tokens"], ub["cache_read_input_tokens"], ub["cache_creation_input_tokens"], response_started=11.5))
    assert out_a.session_id == out_b.session_id
    assert out_a.verdict is None and out_b.verdict is None


def test_claude_code_subagents_share_the_session_and_start_cold():
    d = Driver()
    headers = {"x-claude-code-session-id": "cc-1"}
    shared_tools = tools("cc", 12)
    main = Conversation("main", system_text("main"), shared_tools)
    sub = Conversation("sub", "You are a search subagent. " + system_text("sub", 50), shared_tools)
    got: list[tuple[str, int, str | None]] = []
    now = 0.0
    for i in range(8):
        o, _ = run(d, main, now, headers=headers)
        got.append(("main", o.turn, o.verdict.reason if o.verdict else None))
        now += 5
        if 2 <= i < 6:
            o, _ = run(d, sub, now, headers=headers)
            got.append(("sub", o.turn, o.verdict.reason if o.verdict else None))
            now += 5
    assert [t for _, t, _ in got] == list(range(1, 13))
    assert [r for who, _, r in got if who == "main"] == ["cold"] + [None] * 7
    assert [r for who, _, r in got if who == "sub"] == ["cold", None, None, None]


def test_after_a_restart_nothing_known_is_unknown_not_cold():
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    d.tracker.blind_until = 3600.0  # an earlier proxy run recorded requests until t=0
    assert reasons([run(d, c, 10), run(d, c, 20)]) == ["unknown", None]
    fresh = Conversation("b", system_text("b"), tools("b"))
    assert reasons([run(d, fresh, 3700)]) == ["cold"]


# -- OpenAI (automatic, best-effort caching) -----------------------------------------------------


class OpenAIChat:
    """A Chat Completions conversation against the simulator's OpenAI model."""

    def __init__(self, d: Driver, model: str, system: str, **extra: Any) -> None:
        self.d, self.model, self.system, self.extra = d, model, system, extra
        self.messages: list[dict[str, Any]] = []

    def turn(self, now: float, text: str = "next question") -> Outcome:
        self.messages.append({"role": "user", "content": text})
        req = {"model": self.model, "messages": [{"role": "system", "content": self.system}, *self.messages], **self.extra}
        shape = shape_of(req, "openai_chat")
        ticket = self.d.tracker.begin(identify({}, req, "openai_chat", "key-1"), shape, now)
        u = self.d.sim.handle_openai(req, "openai_chat", now=now).usage
        details = u["prompt_tokens_details"]
        read, written = details["cached_tokens"], details["cache_write_tokens"]
        out = self.d.tracker.finish(ticket, UsageFacts(u["prompt_tokens"] - read - written, read, written), now)
        self.messages.append({"role": "assistant", "content": f"answer {len(self.messages)}"})
        return out


def _r(o: Outcome) -> str | None:
    return o.verdict.reason if o.verdict else None


def test_openai_causes_are_named_where_the_facts_decide_and_unknown_where_they_do_not():
    d = Driver()
    c = OpenAIChat(d, "gpt-4.1", system_text("oa"))
    assert [_r(c.turn(t)) for t in (0, 10, 20)] == ["cold", None, None]
    c.system += " Always answer in French."
    changed = c.turn(30)
    assert changed.verdict is not None and (changed.verdict.reason, changed.verdict.section, changed.verdict.block,
                                            changed.verdict.change) == ("prefix_changed", "system", 0, "system")
    assert _r(c.turn(40)) is None
    assert _r(c.turn(40 + 600)) == "unknown"  # gone after 10 minutes: OpenAI keeps entries 5-10 min "up to an hour"
    assert _r(c.turn(700)) is None
    assert _r(c.turn(700 + 3700)) == "ttl_expired"  # past the longest retention: a fact
    d.sim.clear()
    assert _r(c.turn(4500)) == "unknown"  # best effort: never "provider_evicted"
    short = OpenAIChat(d, "gpt-4.1", "Be brief.")
    assert [_r(short.turn(t)) for t in (5000, 5010)] == ["below_minimum", "below_minimum"]


def test_openai_gpt56_ttl_and_explicit_only_mode():
    d = Driver()
    c = OpenAIChat(d, "gpt-5.6", system_text("g"))
    assert [_r(c.turn(t)) for t in (0, 10, 10 + 1900)] == ["cold", None, "ttl_expired"]  # 30-minute TTL
    e = OpenAIChat(d, "gpt-5.6", system_text("e"), prompt_cache_options={"mode": "explicit"})
    assert [_r(e.turn(t)) for t in (3000, 3010)] == ["cold", "not_marked"]


def test_openai_mixed_workload_never_names_a_wrong_cause():
    rng = random.Random(56)
    d = Driver()
    convs = [OpenAIChat(d, "gpt-4.1" if n % 2 else "gpt-5.6", "Be brief." if n == 5 else system_text(f"o{n}")) for n in range(6)]
    state = [{"last": None, "evicted": False} for _ in convs]
    now, right, decidable, wrong = 0.0, 0, 0, []
    for step in range(400):
        roll = rng.random()
        if roll < 0.01:
            now += 3700  # past the longest retention
        elif roll < 0.02:
            now += 900  # past the usual retention, within the longest
        elif roll < 0.03:
            d.sim.clear()
            for st in state:
                st["evicted"] = True
        n = rng.randrange(len(convs))
        c, st = convs[n], state[n]
        changed = st["last"] is not None and n != 5 and rng.random() < 0.06
        if changed:
            c.system += f" v{step}"
        legacy = c.model == "gpt-4.1"
        gap = None if st["last"] is None else now - st["last"]
        if n == 5:
            label = "below_minimum"
        elif gap is None:
            label = "cold"
        elif gap >= (3600 if legacy else 1800):
            label = "ttl_expired"
        elif changed:
            label = "prefix_changed"
        elif st["evicted"] or (legacy and gap >= 300):
            label = "unknown"  # the sim dropped it; OpenAI's docs do not promise otherwise
        else:
            label = None
        got = _r(c.turn(now, f"question {step}"))
        st["last"], st["evicted"] = now, False
        if label in (None, "unknown"):
            if got not in (label, "unknown"):
                wrong.append((step, n, label, got))
        else:
            decidable += 1
            right += got == label
            if got not in (label, "unknown"):
                wrong.append((step, n, label, got))
        now += rng.uniform(1, 4)
    print(f"openai mixed workload: {decidable} decidable misses, {right} right, {len(wrong)} wrong")
    assert wrong == []
    assert decidable >= 60 and right / decidable >= 0.95


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(ANY_JSON, st.sampled_from(["anthropic", "openai_chat", "openai_responses", "gemini"]),
                          st.integers(0, 5000), st.integers(0, 5000), st.integers(0, 5000), st.booleans()), max_size=12))
def test_any_traffic_never_breaks_the_tracker(traffic: list[tuple[Any, str, int, int, int, bool]]):
    t = SessionTracker(clock=lambda: 0.0, max_sessions=3, max_index=20, max_blocks=50)
    tickets = []
    for n, (body, api, fresh, read, write, done) in enumerate(traffic):
        tickets.append((t.begin(identify({}, body, api, "k"), shape_of(body, api), float(n)), fresh, read, write, done))
    for ticket, fresh, read, write, done in reversed(tickets):
        out = t.finish(ticket, UsageFacts(fresh, read, write) if done else None, 100.0)
        assert out.turn >= 1 and (out.verdict is None or out.verdict.reason in MISS_REASONS)
    assert len(t._sessions) <= 3 and len(t._index) <= 20


def test_a_read_through_lookback_refreshes_the_entry_it_read():
    """An entry read from a later breakpoint (lookback) lives on from that read: a miss after it
    is the provider's doing, not expiry."""
    d = Driver()
    c = Conversation("a", system_text("a"), [], client_marker=True)
    first = c.request()
    d.send(first, 0)  # writes the prefix ending at the first question (client marker)
    longer = json.loads(json.dumps(first))
    longer["messages"][-1]["content"][0].pop("cache_control")
    longer["messages"] += [{"role": "assistant", "content": "a0"},
                           {"role": "user", "content": [{"type": "text", "text": "q1", "cache_control": {"type": "ephemeral"}}]}]
    _, usage = d.send(longer, 200)  # reads the first entry through lookback, refreshing it until t=500
    assert usage["cache_read_input_tokens"] > 0
    d.sim.clear()
    outcome, usage = d.send(first, 400)  # back to the first prompt: only the refreshed entry could serve it
    assert usage["cache_read_input_tokens"] == 0
    assert outcome.verdict is not None and outcome.verdict.reason == "provider_evicted"


def test_when_the_index_had_to_forget_nothing_known_is_unknown_not_cold():
    d = Driver()
    d.tracker.max_index = 2  # tiny: every new conversation pushes older prefixes out
    a, b = Conversation("a", system_text("a"), tools("a")), Conversation("b", system_text("b"), tools("b"))
    run(d, a, 0)
    assert d.tracker.forgotten > 0
    assert reasons([run(d, b, 10)]) == ["unknown"]  # b's prefix could have been among the forgotten
    c = Conversation("c", system_text("c"), tools("c"))
    assert reasons([run(d, c, 10 + 3700)]) == ["cold"]  # an hour later, whatever was forgotten has expired anyway


def test_expiry_comes_before_a_missing_marker():
    """After a pause past the TTL nothing could be read even with a marker: ttl_expired; the next
    unmarked request, within the TTL of nothing, is not_marked."""
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    run(d, c, 0)
    run(d, c, 10)
    c.cache = "off"
    assert reasons([run(d, c, 10 + 400), run(d, c, 420)]) == ["ttl_expired", "not_marked"]


# -- the provider's own verdict (cache diagnostics) against ours -----------------------------------
# The fake provider's diagnostics (cache_sim.fingerprint / diagnose_against: the documented
# semantics) next to our diagnosis of the same requests. docs/sessions.md has the table; here every
# case the provider states a divergence for and we saw a miss must agree.

def _agreement_case(change: str) -> tuple[str | None, str | None, Any]:
    """(the provider's stated type, ours in the provider's words, our verdict) for the request after ``change``."""
    from tokenpak_mitm.core.account.cache_miss import as_provider_reason
    from tokenpak_mitm.sim.cache_sim import diagnose_against, fingerprint

    # long turns for a history edit: what it loses must be more than the read tolerance to be a miss
    d, c = Driver(), Conversation("a", "Current time: 2026-11-30 10:00:01. " + system_text("a"), tools("a"), pad=400 if change == "history" else 0)
    model = MODEL
    last = None
    for t in (0, 10, 20):
        req = c.request()
        last = fingerprint({**req, "model": model})
        d.send({**req, "model": model}, t)
        c.answered()
    if change == "model":
        model = "claude-sonnet-4-5"  # the same minimum: only the model differs
    elif change == "tools":
        c.tools = [*c.tools[:1], {**c.tools[1], "description": "changed"}, *c.tools[2:]]
    elif change == "system":
        c.system += " Answer in French."
    elif change == "volatile":
        c.system = c.system.replace("10:00:01", "10:00:21")
    elif change == "history":
        c.messages[2] = {**c.messages[2], "content": c.messages[2]["content"] + " (edited)"}
    elif change == "mid_system":  # a system message appended mid-conversation (the documented use)
        c.messages.append({"role": "user", "content": "more"})
        c.messages.append({"role": "system", "content": "From now on, answer in French."})
    req = {**c.request(), "model": model} if change != "mid_system" else {
        "model": model, "max_tokens": 50, "system": c.system, "tools": c.tools, "messages": c.messages}
    stated = diagnose_against(last, fingerprint(req))
    outcome, _ = d.send(req, 30)
    v = outcome.verdict
    ours = as_provider_reason(v.reason, v.section, v.change) if v else None
    return (stated or {}).get("type"), ours, v


@pytest.mark.parametrize("change,provider", [("model", "model_changed"), ("tools", "tools_changed"), ("system", "system_changed"),
                                             ("volatile", "system_changed"), ("history", "messages_changed"), ("mid_system", None)])
def test_our_reason_equals_the_providers_wherever_it_states_one(change: str, provider: str | None):
    stated, ours, verdict = _agreement_case(change)
    assert stated == provider
    if provider is not None:
        assert verdict is not None and verdict.reason == "prefix_changed"
        assert ours == stated
    else:
        # nothing diverged: the system message appended after the history leaves the prefix before it readable
        assert verdict is None


def test_a_trailing_system_message_the_next_request_drops_is_not_a_prefix_change():
    """Claude Code's per-turn reminder as a mid-conversation system message: the last breakpoint on it,
    and the next request resends the history without it. The provider calls that messages_changed
    (structure); no read was lost to a change before it, so ours is not prefix_changed."""
    d, c = Driver(), Conversation("a", system_text("a"), tools("a"))
    got = []
    for t in (0, 10, 20):
        req = c.request()
        req["messages"].append({"role": "system", "content": [{"type": "text", "text": f"Reminder {t}: " + "keep it short. " * 800}]})
        got.append(d.send(req, t))
        c.answered()
    # (before the rule, turns 2 and 3 were prefix_changed: the reminder's write counted as the expected read)
    assert [o.verdict.reason if o.verdict else None for o, _ in got] == ["cold", None, None]
    assert got[2][1]["cache_read_input_tokens"] > 0


def test_openai_retention_and_breakpoint_ttl_come_from_the_request():
    """prompt_cache_options.ttl (GPT-5.6+) and prompt_cache_retention set the entries' lifetime the
    tracker diagnoses expiry and warm-until with."""
    from tokenpak_mitm.core.account.sessions import rules_for

    base = {"model": "gpt-5.6", "messages": [{"role": "user", "content": "hi"}]}
    plain, timed, kept = (shape_of(r, "openai_chat") for r in (
        base, {**base, "prompt_cache_options": {"ttl": "1h"}}, {**base, "prompt_cache_retention": "24h"}))
    assert plain is not None and timed is not None and kept is not None
    assert (plain.options_ttl, timed.options_ttl) == (None, 3600.0)  # (30m is the only value so far: a longer one is honoured)
    rules = [rules_for(s) for s in (plain, timed, kept)]
    assert [r.ttl_seconds if r else None for r in rules] == [1800.0, 3600.0, 86400.0]
    legacy = shape_of({**base, "model": "gpt-4o", "prompt_cache_options": {"ttl": "30m"}}, "openai_chat")
    assert legacy is not None and (r := rules_for(legacy)) is not None and r.ttl_seconds == 3600.0  # no breakpoints before 5.6: the option does not apply
