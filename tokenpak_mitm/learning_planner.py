"""The learning cache planner: markers where this proxy's traffic shows prefixes recur (pure).

`cache_planner.plan` decides each request alone (today's fixed rules). This module adds memory:
a `PrefixIndex` of every prefix the proxy has seen (digests and times only) and a token-count
calibration, both held by the caller (the addon, one per proxy; `tokenpak savings`, one per
replay) and passed in with the time. `plan` reads what the index knows about each block
boundary of the request, decides, records the request (and the cache entries it expects the
provider to read and write) and returns the plan with a reason for every marker and every
skipped candidate.

How it decides (numbers: `cache_facts`; docs/caching.md walks through examples):

* **Nothing seen before** -> today's rules (last tool, last system block, the conversation tail,
  the lookback intermediate), TTL 5m under `auto`: reason `no_history`.
* **Continuation** (the longest prefix seen before is where an earlier request ended): the
  conversation is going on, so the new tail is written for the next turn (`conversation_tail`),
  with the TTL that the timeline says is cheapest (below); no write when neither TTL beats none.
* **Branch** (the longest prefix seen before is one other requests passed through and went on
  differently: the shared document, not the unique question): the shared prefix is marked
  (`shared_prefix`) unless a concurrent request is already writing it (`write_in_flight`: it is
  readable once that response begins, a second write would be wasted); the unique tail is marked
  only while the share of earlier siblings that were continued makes a write pay, p x 0.9 > 0.25
  at 5m, with p = (continued + 1) / (siblings + 2): no history gives p = 1/3 (mark, today's rule);
  after two siblings that were not continued p = 1/4 and the tail is left alone (`tail_not_reused`).
  A batch sharing one document is therefore recognised by its third request.
* **Read the deepest live entry**: when no placed marker is within the 20-block lookback of the
  deepest prefix the index expects the provider to hold, one is placed on it (`read_live`).
* **Free markers**: a marker before the last writing marker costs nothing (writes are billed by
  token ranges up to the last writing marker), so the remaining slots go to the last tool and
  last system block (`free_tools`, `free_system`): other requests sharing them can read them.
* **TTL (`auto`)** per written prefix, from its sighting timeline (bursts closer than 2 s are
  concurrent and cannot read each other's writes), plus one expected future sighting at the
  median observed gap (60 s when there is none yet): the timeline is replayed under "no
  marker" (1.0x per sighting), 5m and 1h (write 1.25x/2x, reads 0.1x while the entry lives,
  every read refreshing it) and the cheapest wins. For a continuation, older tokens follow the
  conversation's timeline and the new tail tokens the "now + next" one. 1h is therefore chosen
  exactly when reads come back after more than 5 minutes and within the hour often enough that
  one 2x write beats 1.25x rewrites. A 1h marker never follows a 5m one: markers before a 1h
  marker are raised to 1h, which is free (those tokens are billed as 1h writes already).
* At most 4 markers, none on an ineligible block, none below the model's minimum, and nothing
  at all when the client marks anything itself (the index still learns from that request).
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from . import cache_planner
from .cache_facts import LOOKBACK_BLOCKS, MAX_BREAKPOINTS, TTL_SECONDS, CacheFacts, facts_for
from .cache_planner import Breakpoint, CacheOptions, Note, Plan, Sizes, is_eligible_block, is_volatile_text
from .prefix_index import CLUSTER_SECONDS, Boundary, PrefixIndex, PrefixStats, Recorded, boundaries
from .token_estimate import TokenCalibration

__all__ = ["REASONS", "Memory", "Ticket", "plan", "observe_usage", "predict", "DEFAULT_FUTURE_GAP"]

REASONS: Final[Mapping[str, str]] = {
    # placed
    "no_history": "nothing in this request was seen before: today's fixed rules",
    "conversation_tail": "the request continues an earlier one: the tail is written for the next turn",
    "repeat": "this exact prompt was seen before",
    "shared_prefix": "this prefix recurs in requests that go on differently (the shared part, not the unique tail)",
    "tail_may_continue": "earlier requests sharing this prefix were continued often enough for a tail write to pay",
    "read_live": "reads the deepest entry expected in the cache (no other marker within its 20-block lookback)",
    "free_tools": "free: a later marker writes past it; other requests with these tools can read it",
    "free_system": "free: a later marker writes past it; other requests with this system prompt can read it",
    # skipped
    "tail_not_reused": "requests sharing this prefix were not continued: a write of the unique tail would not be read",
    "write_in_flight": "a concurrent request is writing this prefix; it becomes readable when that response begins",
    "not_read_back": "the observed gaps say no TTL would be read back before it lapses: a write would cost more",
    "below_minimum": "the prefix is below the model's minimum cacheable length",
    "no_slot": "all 4 markers are in use",
}
DEFAULT_FUTURE_GAP: Final = 60.0  # seconds to the next expected sighting when no gap was observed yet


@dataclass(frozen=True)
class Memory:
    """What the learning planner remembers between requests (one per proxy, or per replay)."""

    index: PrefixIndex = field(default_factory=PrefixIndex)
    calibration: TokenCalibration = field(default_factory=TokenCalibration)


@dataclass(frozen=True)
class Ticket:
    """Links a planned request to its response (see `observe_usage`)."""

    recorded: Recorded
    model: str | None
    prompt_bytes: int  # fingerprinted bytes of the whole prompt (for the calibration)
    expected_read_tokens: int
    expected_write_tokens: int


def plan(request: object, opts: CacheOptions, sizes: Sizes | Any | None, memory: Memory, now: float) -> tuple[Plan, Ticket | None]:
    """Decide the markers for one Messages request with what `memory` knows; record it there."""
    stateless = cache_planner.plan(request, opts, sizes)
    if stateless.decision in ("off", "not_messages") or not isinstance(request, dict):
        return stateless, None
    model = stateless.model
    facts = facts_for(model, "anthropic")
    bpt = memory.calibration.bytes_per_token(model)
    bounds = boundaries(request, "anthropic", bpt)
    if not bounds:
        return stateless, None
    digests = [b.digest for b in bounds]
    stats = memory.index.stats(digests, now)
    positions = {_key_of(b): b.position for b in bounds}
    if stateless.decision == "stood_down":
        chosen, markers = stateless, _client_markers(request, bounds)
    elif opts.mode != "auto" or stateless.decision == "no_eligible_block":
        chosen = stateless
        if stateless.top_level:
            tail = _last_eligible(request, bounds, len(bounds) - 1)
            markers = [] if tail is None else [(tail, opts.fixed_ttl)]
        else:
            markers = [(positions[_key_of_bp(bp)], bp.ttl or opts.fixed_ttl) for bp in stateless.breakpoints]
    else:
        chosen = _learned(request, opts, bounds, stats, now, facts, stateless)
        markers = [(positions[_key_of_bp(bp)], bp.ttl or opts.fixed_ttl) for bp in chosen.breakpoints]
    read, writes = predict(bounds, stats, now, markers, facts)
    recorded = memory.index.record(digests, now, writes=writes, read=read)
    read_tokens = bounds[read].tokens_est if read is not None else 0
    write_tokens = max((bounds[p].tokens_est for p in writes), default=read_tokens) - read_tokens
    prompt_bytes = round(bounds[-1].tokens_est * bpt)
    return chosen, Ticket(recorded, model, prompt_bytes, read_tokens, write_tokens)


def observe_usage(memory: Memory, ticket: Ticket, *, prompt_tokens: int | None, read_tokens: int | None,
                  write_tokens: int | None) -> None:
    """Feed back the usage the provider reported for a planned request.

    prompt_tokens (input + cache read + cache write) calibrates bytes per token; no read and no
    write where some were expected means the provider holds no entry the index thought it had.
    """
    memory.calibration.observe(ticket.model, ticket.prompt_bytes, prompt_tokens)
    expected = ticket.expected_read_tokens or ticket.expected_write_tokens
    if expected and read_tokens == 0 and write_tokens == 0:
        memory.index.forget(ticket.recorded)


def predict(bounds: Sequence[Boundary], stats: Sequence[PrefixStats | None], now: float,
            markers: Sequence[tuple[int, str]], facts: CacheFacts) -> tuple[int | None, dict[int, str]]:
    """The provider's rule applied to what the index expects: (position read, positions written -> TTL).

    Each marker looks back `lookback_blocks` positions (itself first) for a readable entry; the
    deepest hit is read; every marker past it whose prefix reaches the minimum writes.
    """
    reach = facts.lookback_blocks or len(bounds)
    hit = -1
    for position, _ in markers:
        for q in range(position, max(-1, position - reach), -1):
            s = stats[q]
            if s is not None and s.live(now):
                hit = max(hit, q)
                break
    writes = {p: ttl for p, ttl in sorted(markers) if p > hit and bounds[p].tokens_est >= facts.minimum_tokens}
    return (hit if hit >= 0 else None), writes


# ------------------------------------------------------------------------------------ deciding


@dataclass
class _Choice:
    position: int
    reason: str
    ttl: str
    writes: bool


def _learned(request: dict[str, Any], opts: CacheOptions, bounds: Sequence[Boundary], stats: Sequence[PrefixStats | None],
             now: float, facts: CacheFacts, stateless: Plan) -> Plan:
    last = len(bounds) - 1
    seen = [i for i, s in enumerate(stats) if s is not None]
    if not seen:
        return _no_history(stateless, opts, bounds)
    minimum = facts.minimum_tokens
    tok = [b.tokens_est for b in bounds]
    live = [s is not None and s.live(now) for s in stats]
    k = seen[-1]
    anchor = stats[k]
    assert anchor is not None
    kind = "repeat" if k == last else ("continuation" if anchor.ends > 0 else "branch")
    deepest_live = max((i for i, ok in enumerate(live) if ok), default=None)
    hit_tokens = tok[deepest_live] if deepest_live is not None else 0
    chosen: list[_Choice] = []
    notes: list[Note] = []

    def skip(position: int, reason: str, detail: str = "") -> None:
        notes.append(Note(_address(bounds[position]), reason, tok[position], None, detail))

    tail = _last_eligible(request, bounds, last)
    if tail is not None and kind in ("continuation", "repeat"):
        reason = "repeat" if kind == "repeat" else "conversation_tail"
        if live[tail]:
            chosen.append(_Choice(tail, reason, opts.fixed_ttl, False))
        elif tok[tail] < minimum:
            skip(tail, "below_minimum", f"minimum {minimum}")
        else:
            evidence = _evidence(stats, k)
            new = tok[tail] - hit_tokens
            ttl, detail = _cheapest(opts, facts, now, evidence, old_tokens=tok[tail] - new, new_tokens=new)
            if ttl is None:
                skip(tail, "not_read_back", detail)
            else:
                chosen.append(_Choice(tail, reason, ttl, True))
    elif tail is not None:  # a branch: k is shared with requests that went on differently
        siblings, continued = anchor.branches + 1, anchor.branches_continued
        p = (continued + 1) / (siblings + 2)
        detail = f"p={p:.2f} ({continued} of {siblings} siblings continued)"
        w5, r = facts.write_multiplier(opts.fixed_ttl), facts.read_multiplier()
        if tail > k and p * (1 - r) <= w5 - 1:
            skip(tail, "tail_not_reused", detail)
        elif tail > k and tok[tail] >= minimum:
            chosen.append(_Choice(tail, "tail_may_continue", opts.fixed_ttl, True))
        shared = _last_eligible(request, bounds, k)
        if shared is not None and not any(c.position == shared for c in chosen):
            s = stats[shared]
            if live[shared]:
                chosen.append(_Choice(shared, "shared_prefix", opts.fixed_ttl, False))
            elif s is not None and s.writing(now):
                skip(shared, "write_in_flight")
            elif tok[shared] < minimum:
                skip(shared, "below_minimum", f"minimum {minimum}")
            else:
                clusters = s.clusters if s is not None else ()
                ttl, why = _cheapest(opts, facts, now, clusters, old_tokens=0, new_tokens=tok[shared] - min(hit_tokens, tok[shared]))
                if ttl is None:
                    skip(shared, "not_read_back", why)
                else:
                    chosen.append(_Choice(shared, "shared_prefix", ttl, True))

    # Read the deepest live entry when nothing placed reaches it through the lookback.
    reach = facts.lookback_blocks or len(bounds)
    if deepest_live is not None and not any(deepest_live <= c.position < deepest_live + reach for c in chosen):
        chosen.append(_Choice(deepest_live, "read_live", opts.fixed_ttl, False))

    # Free markers before the last writer: the last tool, the last system block.
    writers = [c.position for c in chosen if c.writes]
    if writers:
        last_writer = max(writers)
        for bp in stateless.breakpoints:
            if bp.purpose not in ("tools", "system"):
                continue
            position = {_key_of(b): b.position for b in bounds}.get(_key_of_bp(bp))
            if position is None or position >= last_writer or any(c.position == position for c in chosen):
                continue
            if tok[position] < minimum or (deepest_live is not None and position <= deepest_live):
                continue
            if len(chosen) >= MAX_BREAKPOINTS:
                skip(position, "no_slot")
                continue
            chosen.append(_Choice(position, f"free_{bp.purpose}", opts.fixed_ttl, True))

    chosen.sort(key=lambda c: c.position)
    chosen = chosen[-MAX_BREAKPOINTS:]  # (cannot exceed 4 today: at most tail, shared, read, then free ones)
    for i in range(len(chosen) - 2, -1, -1):  # 1h never after 5m: raise earlier markers (free, see above)
        if chosen[i + 1].ttl == "1h":
            chosen[i].ttl = "1h"
    breakpoints = tuple(_breakpoint(request, bounds[c.position], c.reason, c.ttl) for c in chosen)
    placed = [Note(_address(bounds[c.position]), c.reason, tok[c.position], c.ttl) for c in chosen]
    all_notes = tuple(sorted(placed + notes, key=lambda n: n.tokens_est))
    largest = max(tok[i] for i in range(len(bounds)))
    decision = "inserted" if breakpoints else "not_worth"
    return Plan(decision, breakpoints, prefix_tokens_est=stateless.prefix_tokens_est or largest, model=stateless.model,
                minimum_tokens=minimum, notes=all_notes)


def _no_history(stateless: Plan, opts: CacheOptions, bounds: Sequence[Boundary]) -> Plan:
    ttl = opts.fixed_ttl
    notes = tuple(Note(_address_of_bp(bp), "no_history", bp.prefix_tokens_est, ttl, bp.purpose) for bp in stateless.breakpoints)
    return replace(stateless, breakpoints=tuple(replace(bp, ttl=ttl) for bp in stateless.breakpoints), notes=notes)


def _evidence(stats: Sequence[PrefixStats | None], k: int) -> tuple[tuple[float, int], ...]:
    """The sighting timeline that best describes this conversation: the prefix up to `k` seen in
    the most bursts (the deepest one on a tie: the conversation's own history before shared parts)."""
    best: tuple[tuple[float, int], ...] = ()
    for i in range(k + 1):
        s = stats[i]
        if s is not None and len(s.clusters) >= len(best):
            best = s.clusters
    return best


def _cheapest(opts: CacheOptions, facts: CacheFacts, now: float, clusters: Sequence[tuple[float, int]],
              old_tokens: int, new_tokens: int) -> tuple[str | None, str]:
    """The TTL (None: no write) that the timeline says is cheapest, with the costs as a detail."""
    timeline = list(clusters)
    if timeline and 0 <= now - timeline[-1][0] < CLUSTER_SECONDS:
        timeline[-1] = (timeline[-1][0], timeline[-1][1] + 1)
    elif not timeline or now > timeline[-1][0]:
        timeline.append((now, 1))
    gaps = [b[0] - a[0] for a, b in zip(timeline, timeline[1:]) if b[0] > a[0]]
    future = statistics.median(gaps) if gaps else DEFAULT_FUTURE_GAP
    timeline.append((timeline[-1][0] + future, 1))
    fresh = [(now, 1), (now + future, 1)]
    ttls = ("5m", "1h") if opts.ttl == "auto" else (opts.ttl,)
    r = facts.read_multiplier()
    costs: dict[str | None, float] = {None: float(old_tokens + new_tokens)}
    for ttl in ttls:
        w = facts.write_multiplier(ttl)
        costs[ttl] = old_tokens * _replay(timeline, TTL_SECONDS[ttl], w, r) + new_tokens * _replay(fresh, TTL_SECONDS[ttl], w, r)
    best = min(costs, key=lambda t: (costs[t], t is not None, t == "1h"))
    detail = " ".join(f"{t or 'none'}={c / max(1, old_tokens + new_tokens):.3f}" for t, c in costs.items())
    return best, f"per-token cost {detail}; next sighting in ~{future:.0f}s"


def _replay(timeline: Sequence[tuple[float, int]], ttl: float, write: float, read: float) -> float:
    """Per-token cost of caching one prefix over a sighting timeline with one TTL (see module docstring)."""
    alive_until = float("-inf")
    cost = 0.0
    count = 0
    for start, n in timeline:
        if start < alive_until:
            cost += n * read
        else:
            cost += write + (n - 1)  # one writes; the rest of a concurrent burst cannot read it yet
        alive_until = start + ttl
        count += n
    return cost / max(1, count)


# ------------------------------------------------------------------------------------ addressing


def _block_of(request: Mapping[str, Any], b: Boundary) -> object:
    if b.section == "tools":
        return request["tools"][b.block]
    if b.section == "system":
        system = request["system"]
        return system if b.block is None else system[b.block]
    content = request["messages"][b.message]["content"]
    return content if b.block is None else content[b.block]


def _eligible(request: Mapping[str, Any], b: Boundary) -> bool:
    return b.section == "tools" or is_eligible_block(_block_of(request, b))


def _last_eligible(request: Mapping[str, Any], bounds: Sequence[Boundary], start: int) -> int | None:
    for i in range(start, -1, -1):
        b = bounds[i]
        if not _eligible(request, b):
            continue
        if b.section == "system" and isinstance(block := _block_of(request, b), dict) and is_volatile_text(block.get("text")):
            continue  # a system block rendered per request: an entry on it is never read
        return i
    return None


def _key_of(b: Boundary) -> tuple[str, int | None, int | None]:
    return (b.section, b.message, b.block)


def _key_of_bp(bp: Breakpoint) -> tuple[str, int | None, int | None]:
    if bp.section == "tools":
        return ("tools", None, bp.index)
    if bp.section == "system":
        return ("system", None, None if bp.wraps_string else bp.index)
    return ("messages", bp.index, bp.block)


def _breakpoint(request: Mapping[str, Any], b: Boundary, reason: str, ttl: str) -> Breakpoint:
    if b.section == "tools":
        return Breakpoint("tools", b.block or 0, None, False, reason, b.tokens_est, ttl)
    if b.section == "system":
        return Breakpoint("system", b.block or 0, None, b.block is None, reason, b.tokens_est, ttl)
    assert b.message is not None
    return Breakpoint("messages", b.message, b.block, b.block is None, reason, b.tokens_est, ttl)


def _address(b: Boundary) -> str:
    if b.section == "messages":
        return f"messages.{b.message}.content" + ("" if b.block is None else f".{b.block}")
    return b.section + ("" if b.block is None else f".{b.block}")


def _address_of_bp(bp: Breakpoint) -> str:
    if bp.section == "messages":
        return f"messages.{bp.index}.content" + ("" if bp.block is None else f".{bp.block}")
    return bp.section + ("" if bp.wraps_string else f".{bp.index}")


def _client_markers(request: Mapping[str, Any], bounds: Sequence[Boundary]) -> list[tuple[int, str]]:
    """Positions and TTLs of the client's own markers (the top-level field lands on the last eligible block)."""
    found: list[tuple[int, str]] = []
    for b in bounds:
        block = _block_of(request, b)
        if not isinstance(block, dict):
            continue
        marker = block.get("cache_control")
        nested = block.get("content")
        if marker is None and isinstance(nested, list) and nested and isinstance(nested[-1], dict):
            marker = nested[-1].get("cache_control")
        if isinstance(marker, dict):
            found.append((b.position, marker.get("ttl") if marker.get("ttl") in TTL_SECONDS else "5m"))
    top = request.get("cache_control")
    if isinstance(top, dict):
        tail = _last_eligible(request, bounds, len(bounds) - 1)
        if tail is not None and all(p != tail for p, _ in found):
            found.append((tail, top.get("ttl") if top.get("ttl") in TTL_SECONDS else "5m"))
    return found
