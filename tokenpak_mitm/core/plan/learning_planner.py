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
  A batch sharing one document is therefore recognised by its third request. Siblings that
  started in the same burst (concurrent starts, e.g. subagents launched together) are not counted:
  they cannot have been continued yet, so each writes the tail its own next turn reads.
* **Read the deepest live entry**: when no placed marker is within the 20-block lookback of the
  deepest prefix the index expects the provider to hold, one is placed on it (`read_live`).
* **Free markers**: a marker before the last writing marker costs nothing (writes are billed by
  token ranges up to the last writing marker), so the remaining slots go to the last tool and
  last system block (`free_tools`, `free_system`): other requests sharing them can read them.
* **TTL (`auto`)**: a write is placed only when it beats no write on the prefix's sighting timeline
  (bursts closer than 2 s are concurrent and cannot read each other's writes) followed by one
  expected burst after each gap seen so far (before any gap: one a minute later), replayed under
  no marker (1.0x per request), 5m and 1h (a write per lapsed entry, then 0.1x reads that refresh
  it); otherwise `not_read_back`. A conversation's tail (read by the next turn only) is written
  when P(next gap <= TTL) x (1 - 0.1) > the write premium (5m: P > 0.28), P asked of the
  conversation as it is now: after a gap within the TTL it is going on (P = 1); after a pause,
  the share of earlier pauses followed by a close turn (prior: one close, two long, so 1/3
  without evidence). A pause therefore costs one re-write and the turns that follow it are
  marked again: a lapse in a pause is no evidence against them. The tail is 5m; when no 5m
  write would be read back (pauses that led to pauses) it is 1h if a chain of 1h entries, each
  turn reading the last, beats none: p x 0.1 + (1 - p) x 2 < 1 with p = P(next gap <= 1h).
  A 1h `pause_checkpoint` goes on the first new block (premium: that block's tokens only) when
  P(the next gap is a pause of 5 minutes to an hour) x 1.15 x the tokens past the deepest live
  1h entry > 0.75 x that block's tokens, P by Laplace's rule of succession ((pauses + 1) /
  (gaps + 2)): the first pause of a conversation cannot be foreseen, so it is insured against
  before it comes, but until a pause is seen only out of savings: the premiums stay within 5%
  (`INSURANCE_SHARE`) of what the conversation's reads have saved. A concurrent 5m write of a
  shared prefix is redone for 1h (`ttl_upgrade`) when pauses were seen and a lapse before the
  next burst would cost more (a whole write is no insurance a batch can afford before). A 1h
  marker never follows a 5m one: markers before a 1h marker are raised to 1h, which is free
  (those tokens are billed as 1h writes already).
* **Per-turn trailers** (`cache_planner.per_turn_trailer`: a trailing mid-conversation system
  message, a trailing text block after the user's content): the request is planned and recorded
  as if it ended before the trailer, so no marker goes on it and the next request continues from
  there; `Trailers` counts per client whether the next request dropped or repeated it and marks it
  again once a client repeats it more often than it drops it (prior: one drop).
* **The insurance moves forward**: once a pause was seen, a conversation's tail is written for 1h
  instead of the first-new-block checkpoint when that is worth more over the next two gaps
  (`_forward_pays`), so the turn after a pause reads the whole conversation, not its beginning.
* At most 4 markers, none on an ineligible block, none below the model's minimum, and nothing
  at all when the client marks anything itself (the index still learns from that request).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any, Final

from tokenpak_mitm.core.plan import cache_planner
from tokenpak_mitm.core.plan.cache_facts import TTL_SECONDS, CacheFacts, facts_for
from tokenpak_mitm.core.plan.cache_planner import Breakpoint, CacheOptions, Note, Plan, Sizes, is_eligible_block, is_volatile_text
from tokenpak_mitm.core.plan.openai_eligibility import ITEMS_KEY, breakpoint_eligible, client_cache_fields
from tokenpak_mitm.core.plan.prefix_index import CLUSTER_SECONDS, Api, Boundary, PrefixIndex, PrefixStats, Recorded, boundaries, item_content
from tokenpak_mitm.core.plan.token_estimate import TokenCalibration
from tokenpak_mitm.core.row import CacheDecision

__all__ = ["PRIOR_GAPS", "REASONS", "Memory", "OpenAIPlan", "Ticket", "observe_usage", "plan", "plan_openai", "predict"]

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
    # about the request (cache_insert.InsertResult.reasons_json), at "model"
    "no_cache_facts": "the model is not in cache_facts: planned with its provider's fallback assumptions",
    "no_slot": "all 4 markers are in use",
    "pause_checkpoint": "insurance against a pause of 5 minutes to an hour: a 1h entry on the first new block protects "
                        "the conversation's prefix for the premium on that block only",
    "ttl_upgrade": "a concurrent request writes this prefix for 5m; the bursts seen so far make a 1h write pay",
    "stable_prefix": "earlier requests ended one block past the shared prefix: the last block changes every request, "
                     "so everything before it is written instead",
}
# The gap to the next sighting assumed before any gap was observed, by the shared-prefix timeline
# replay (`_cheapest`, only until a gap is seen): within 5 minutes, as today's rules assume. The
# chance of a pause that a checkpoint insures against is `_pause_chance`'s (rule of succession).
PRIOR_GAPS: Final[tuple[tuple[float, float], ...]] = ((60.0, 1.0),)
# The prior of a conversation tail's read-back estimate (`_tail_ttl`): (close gaps, long gaps).
TAIL_PRIOR: Final = (1.0, 2.0)
# Before any pause is seen, the 1h premiums a conversation pays (insurance against its first
# pause) stay within this share of what caching has saved it so far (`_insurance_budget`).
INSURANCE_SHARE: Final = 0.05


class Trailers:
    """Per client: does the next request drop the per-turn trailer this one ends with?

    A request ending in the shape of a per-turn reminder (`cache_planner.per_turn_trailer`: a
    trailing system message, a trailing text block after the user's content) is planned and
    recorded as if it ended before it, so the conversation's next request continues from there.
    The traffic confirms it: the next request of the conversation either has the trailer again
    (kept) or goes on without it (dropped). Counted per client, a client being the digest of its
    requests' first block (its first tool, else its system prompt); until a client's requests
    have kept it more often than dropped it (prior: one drop), the trailer is never marked.
    Bounded: at most `MAX_CLIENTS` clients and `MAX_PENDING` requests awaiting their verdict.
    """

    MAX_CLIENTS: Final = 1024
    MAX_PENDING: Final = 4096

    def __init__(self) -> None:
        self.counts: dict[bytes, list[int]] = {}  # client -> [dropped, kept]
        self.pending: dict[bytes, tuple[bytes, bytes]] = {}  # stable end's digest -> (client, trailer's digest)

    def drops(self, client: bytes) -> bool:
        dropped, kept = self.counts.get(client, (0, 0))
        return kept < dropped + 1

    def expect(self, client: bytes, stable_end: bytes, trailer: bytes) -> None:
        self.pending.pop(stable_end, None)
        self.pending[stable_end] = (client, trailer)
        while len(self.pending) > self.MAX_PENDING:
            del self.pending[next(iter(self.pending))]

    def confirm(self, digests: Sequence[bytes], k: int | None) -> None:
        """A request whose deepest known prefix ends at `k`: settle the verdict of the request it follows."""
        if k is None or not self.pending:
            return
        for j in range(k, max(-1, k - 4), -1):
            found = self.pending.pop(digests[j], None)
            if found is None:
                continue
            client, trailer = found
            counts = self.counts.pop(client, [0, 0])
            counts[1 if j + 1 < len(digests) and digests[j + 1] == trailer else 0] += 1
            self.counts[client] = counts
            while len(self.counts) > self.MAX_CLIENTS:
                del self.counts[next(iter(self.counts))]
            return


@dataclass(frozen=True)
class Memory:
    """What the learning planner remembers between requests (one per proxy, or per replay)."""

    index: PrefixIndex = field(default_factory=PrefixIndex)
    calibration: TokenCalibration = field(default_factory=TokenCalibration)
    trailers: Trailers = field(default_factory=Trailers)


@dataclass(frozen=True)
class Ticket:
    """Links a planned request to its response (see `observe_usage`)."""

    recorded: Recorded
    model: str | None
    prompt_bytes: int  # fingerprinted bytes of the whole prompt (for the calibration)
    expected_read_tokens: int
    expected_write_tokens: int


def plan(request: object, opts: CacheOptions, sizes: Sizes | Any | None, memory: Memory, now: float,
         raw: Sequence[bytes | None] | None = None) -> tuple[Plan, Ticket | None]:
    """Decide the markers for one Messages request with what `memory` knows; record it there.

    raw: the client's bytes of each prompt block, if known (`prefix_index.boundaries`: only faster).
    """
    stateless = cache_planner.plan(request, opts, sizes)
    if stateless.decision in ("off", "not_messages") or not isinstance(request, dict):
        return stateless, None
    model = stateless.model
    facts = facts_for(model, "anthropic")
    bpt = memory.calibration.bytes_per_token(model)
    bounds = boundaries(request, "anthropic", bpt, raw)
    if not bounds:
        return stateless, None
    digests = [b.digest for b in bounds]
    stats = memory.index.stats(digests, now)
    positions = {_key_of(b): b.position for b in bounds}
    trailer = _trailer_at(request, bounds)
    # The conversation's end as the next request will repeat it: before a per-turn trailer.
    end = trailer - 1 if trailer is not None and memory.trailers.drops(digests[0]) else len(bounds) - 1
    if stateless.decision == "stood_down":
        chosen, markers = stateless, _client_markers(request, bounds)
    elif opts.mode != "auto" or stateless.decision in ("no_eligible_block", "below_minimum"):
        chosen = stateless
        if stateless.top_level:
            tail = _last_eligible(request, bounds, len(bounds) - 1)
            markers = [] if tail is None else [(tail, opts.fixed_ttl)]
        else:
            markers = [(positions[_key_of_bp(bp)], bp.ttl or opts.fixed_ttl) for bp in stateless.breakpoints]
    else:
        chosen = _learned(request, opts, bounds[:end + 1], stats[:end + 1], now, facts, stateless, trailer=end < len(bounds) - 1)
        markers = [(positions[_key_of_bp(bp)], bp.ttl or opts.fixed_ttl) for bp in chosen.breakpoints]
        if end < len(bounds) - 1:
            dropped = Note(_address(bounds[end + 1]), "tail_not_reused", bounds[-1].tokens_est, None,
                           "a per-turn trailer: this client's next request does not repeat it")
            chosen = replace(chosen, notes=(*chosen.notes, dropped))
    if any(p > end for p, _ in markers):
        end = len(bounds) - 1  # marked anyway (the client's markers, the top-level field): the end is the end
    read, writes = predict(bounds[:end + 1], stats[:end + 1], now, markers, facts)
    memory.trailers.confirm(digests, max((i for i, s in enumerate(stats) if s is not None), default=None))
    recorded = memory.index.record(digests[:end + 1], now, writes=writes, read=read)
    if end < len(bounds) - 1:
        memory.trailers.expect(digests[0], digests[end], digests[end + 1])
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
             now: float, facts: CacheFacts, stateless: Plan, trailer: bool = False) -> Plan:
    if not any(s is not None for s in stats):
        return _no_history(stateless, opts, bounds)
    positions = {_key_of(b): b.position for b in bounds}
    free = [(positions[_key_of_bp(bp)], f"free_{bp.purpose}") for bp in stateless.breakpoints
            if bp.purpose in ("tools", "system") and _key_of_bp(bp) in positions]
    # The block before a dated last system block comes last (cache_planner: "Stable within a day").
    last_system = max((p for p, why in free if why == "free_system"), default=None)
    free.sort(key=lambda f: f[1] == "free_system" and f[0] != last_system)
    chosen, notes = _decide(bounds, stats, now, facts, opts, lambda i: _eligible_at(request, bounds, i), free, trailer)
    breakpoints = tuple(_breakpoint(request, bounds[c.position], c.reason, c.ttl) for c in chosen)
    decision: CacheDecision = "inserted" if breakpoints else "not_worth"
    return Plan(decision, breakpoints, prefix_tokens_est=stateless.prefix_tokens_est or bounds[-1].tokens_est,
                model=stateless.model, minimum_tokens=facts.minimum_tokens, notes=notes)


def _decide(bounds: Sequence[Boundary], stats: Sequence[PrefixStats | None], now: float, facts: CacheFacts,
            opts: CacheOptions, eligible: Callable[[int], bool], free: Sequence[tuple[int, str]],
            trailer: bool = False) -> tuple[list[_Choice], tuple[Note, ...]]:
    """The markers for a request with some history (see the module docstring), in position order.

    trailer: `bounds` end before a per-turn trailer this request carries (not repeated next time):
    a prompt seen whole up to there is another request on the same prefix, not a retry."""
    last = len(bounds) - 1
    minimum = facts.minimum_tokens
    tok = [b.tokens_est for b in bounds]
    live = [s is not None and s.live(now) for s in stats]
    k = max(i for i, s in enumerate(stats) if s is not None)
    anchor = stats[k]
    assert anchor is not None
    kind = "repeat" if k == last else ("continuation" if anchor.ends > 0 else "branch")
    deepest_live = max((i for i, ok in enumerate(live) if ok), default=None)
    hit_tokens = tok[deepest_live] if deepest_live is not None else 0
    protected_1h = max((tok[i] for i, s in enumerate(stats) if live[i] and s is not None and s.cached_ttl == "1h"), default=0)
    ttls = _ttl_choices(opts, facts)
    default_ttl = ttls[0]
    banked = _insurance_budget(stats, tok, k, last, hit_tokens, facts)
    chosen: list[_Choice] = []
    notes: list[Note] = []

    def before(start: int) -> int | None:
        return next((i for i in range(start, -1, -1) if eligible(i)), None)

    def skip(position: int, reason: str, detail: str = "") -> None:
        notes.append(Note(_address(bounds[position]), reason, tok[position], None, detail))

    def write(position: int, reason: str, clusters: Sequence[tuple[float, int]], old_from: int | None) -> None:
        """Place a writing marker at `position` if some TTL beats no write on the timeline."""
        if live[position]:
            chosen.append(_Choice(position, reason, default_ttl, False))
            return
        s = stats[position]
        if s is not None and s.writing(now):
            if s.cached_ttl != "1h" and "1h" in ttls and tok[position] >= minimum and _upgrade_pays(facts, now, s.clusters):
                chosen.append(_Choice(position, "ttl_upgrade", "1h", True))
            else:
                skip(position, "write_in_flight")
            return
        if tok[position] < minimum:
            skip(position, "below_minimum", f"minimum {minimum}")
            return
        new = tok[position] - min(hit_tokens, tok[position])
        old = 0 if old_from is None else tok[position] - new
        tail = old_from is not None
        # A conversation's tail: 5m when a 5m write pays at all (1h then comes as a checkpoint,
        # below); 1h alone only when no 5m write would ever be read back but a 1h one would.
        if tail:
            ttl, detail = _tail_ttl(ttls[:1], facts, now, clusters)
            if ttl is None and len(ttls) > 1:
                ttl, detail = _tail_ttl(ttls[1:], facts, now, clusters, chain=True)
        else:
            ttl, detail = _cheapest(ttls, facts, now, clusters, old_tokens=old, new_tokens=new)
        if ttl is None:
            skip(position, "not_read_back", detail)
            return
        chosen.append(_Choice(position, reason, ttl, True))
        if ttl == "5m" and old_from is not None and "1h" in ttls:
            # A pause checkpoint: the cheapest 1h entry that protects this conversation's prefix is
            # on the first new block reaching the minimum (its premium is paid on that block's new
            # tokens only; with nothing live, on everything up to it).
            start = 0 if deepest_live is None else deepest_live + 1
            first_new = next((i for i in range(start, position + 1) if eligible(i) and tok[i] >= minimum), None)
            premium = tok[first_new] - min(hit_tokens, tok[first_new]) if first_new is not None else 0
            if _forward_pays(facts, clusters, now, tok[position] - protected_1h, new, tok[first_new] - protected_1h if first_new is not None else 0, premium):
                chosen[-1].ttl = "1h"  # the insurance moves forward: the whole conversation survives the next pause
            elif first_new is not None and _checkpoint_pays(facts, clusters, now, tok[first_new] - protected_1h, premium, banked):
                if first_new == position:
                    chosen[-1].ttl = "1h"
                else:
                    chosen.append(_Choice(first_new, "pause_checkpoint", "1h", True))

    tail = before(last)
    if tail is not None and kind in ("continuation", "repeat"):
        reason = "conversation_tail" if kind == "continuation" else "shared_prefix" if trailer else "repeat"
        write(tail, reason, _evidence(stats, k), old_from=k)
    elif tail is not None:  # a branch: k is shared with requests that went on differently
        siblings, continued = anchor.branches + 1, anchor.branches_continued
        # Siblings started in this very burst (concurrent starts) cannot have been continued yet:
        # they are no evidence against this one's tail being read, so they do not count.
        starting = anchor.clusters[-1][1] if anchor.clusters and 0 <= now - anchor.clusters[-1][0] < CLUSTER_SECONDS else 0
        siblings = max(siblings - starting, 1)
        p = (continued + 1) / (siblings + 2)
        r = facts.read_multiplier()
        volatile_tail = anchor.to_end == 1 and last - 1 > k  # earlier requests ended one block past k: a per-request tail
        stable = before(last - 1) if volatile_tail else None
        if tail > k and (volatile_tail or p * (1 - r) <= facts.write_multiplier(default_ttl) - 1):
            detail = "the last block changes every request" if volatile_tail else f"p={p:.2f} ({continued} of {siblings} siblings continued)"
            skip(tail, "tail_not_reused", detail)
        elif tail > k:
            write(tail, "tail_may_continue", _evidence(stats, k), old_from=k)
        if stable is not None and stable > k:
            write(stable, "stable_prefix", _evidence(stats, k), old_from=k)
        shared = before(k)
        if shared is not None and not any(c.position == shared for c in chosen):
            s = stats[shared]
            write(shared, "shared_prefix", s.clusters if s is not None else (), old_from=None)

    # Read the deepest live entry when nothing placed reaches it through the lookback.
    reach = facts.lookback_blocks
    if (reach is not None and deepest_live is not None and eligible(deepest_live)
            and not any(deepest_live <= c.position < deepest_live + reach for c in chosen)):
        chosen.append(_Choice(deepest_live, "read_live", default_ttl, False))

    # Free markers before the last writer: the last tool, the last system block.
    writers = [c.position for c in chosen if c.writes]
    if writers:
        for position, reason in free:
            if position >= max(writers) or any(c.position == position for c in chosen) or tok[position] < minimum:
                continue
            if deepest_live is not None and position <= deepest_live:
                continue
            if len(chosen) >= facts.max_breakpoints:
                skip(position, "no_slot")
                continue
            chosen.append(_Choice(position, reason, default_ttl, True))

    chosen.sort(key=lambda c: c.position)
    for i in range(len(chosen) - 2, -1, -1):  # 1h never after 5m: raise earlier markers (free, see above)
        if chosen[i + 1].ttl == "1h":
            chosen[i].ttl = "1h"
    placed = [Note(_address(bounds[c.position]), c.reason, tok[c.position], c.ttl) for c in chosen]
    return chosen, tuple(sorted(placed + notes, key=lambda n: n.tokens_est))


def _ttl_choices(opts: CacheOptions, facts: CacheFacts) -> tuple[str, ...]:
    if facts.provider != "anthropic":
        return tuple(t for t in facts.ttls if t in TTL_SECONDS) or ("5m",)
    return ("5m", "1h") if opts.ttl == "auto" else (opts.ttl,)


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


def _cheapest(ttls: Sequence[str], facts: CacheFacts, now: float, clusters: Sequence[tuple[float, int]],
              old_tokens: int, new_tokens: int) -> tuple[str | None, str]:
    """The TTL (None: no write) that the timeline says is cheapest, with the costs as a detail.

    The timeline is this prefix's sighting history plus now, followed by one expected future burst
    (of the median burst size so far) after each gap seen so far, weighted equally (before any gap
    is seen, after the prior's gap, `PRIOR_GAPS`).
    Both `old_tokens` and `new_tokens` follow that timeline (a shared prefix; a conversation's new
    tail, read by the next turn only, is `_tail_ttl`'s question).
    """
    timeline = _with_now(clusters, now)
    gaps = [b[0] - a[0] for a, b in pairwise(timeline) if b[0] > a[0]]
    burst = max(1, round(statistics.median(n for _, n in timeline[:-1]))) if len(timeline) > 1 else timeline[-1][1]
    scenarios = [(gap, 1.0) for gap in gaps] or list(PRIOR_GAPS)  # the prior only until a gap is seen
    r = facts.read_multiplier()
    costs: dict[str | None, float] = {None: float(old_tokens + new_tokens)}
    for ttl in ttls:
        w, life = facts.write_multiplier(ttl), TTL_SECONDS[ttl]
        total = weight = 0.0
        for gap, p in scenarios:
            future = timeline + [(now + gap, burst)]
            total += p * (old_tokens + new_tokens) * _replay(future, life, w, r)
            weight += p
        costs[ttl] = total / weight
    best = min(costs, key=lambda t: (costs[t], t is not None, t == "1h"))
    detail = " ".join(f"{t or 'none'}={c / max(1, old_tokens + new_tokens):.3f}" for t, c in costs.items())
    typical = statistics.median(gaps) if gaps else PRIOR_GAPS[0][0]
    return best, f"per-token cost {detail}; bursts of {burst}, gaps ~{typical:.0f}s"


def _tail_ttl(ttls: Sequence[str], facts: CacheFacts, now: float,
              clusters: Sequence[tuple[float, int]], chain: bool = False) -> tuple[str | None, str]:
    """The TTL (None: no write) for a conversation's new tail, with the costs as a detail.

    The tail is written now and read only by the next turn, if that comes within the TTL:
    per token over this turn and the next, no write costs 1 + 1; a write w, then r if read back,
    else 1 (the next turn pays its own write, if it makes one, on its own account), so a write
    pays when P(next gap <= TTL) x (1 - r) > w - 1 (5m: P > 0.28).
    P is asked of the conversation as it is now. After a gap within the TTL the conversation is
    going on: it is written (P = 1). A pause that may come next costs the premium on this tail's
    new tokens, never a lost conversation, and an entry that lapsed in an earlier pause is no
    evidence about turns that come close together: only reuse counts. After a longer gap, P is
    the share of the earlier such gaps that were followed by one within the TTL, with the prior
    `TAIL_PRIOR` (one close, two long: 1/3 without evidence, enough for a 5m write; after pauses
    that only ever led to pauses, not), so a conversation resumed once more after pauses is
    written for its next turn again as soon as it comes close.
    `chain`: the 1h question, asked only when no 5m write pays (pauses that led to pauses). A
    1h tail is read by every later turn within the hour, each writing only its new tokens, so the
    write is judged by the chain's cost per turn and token, p x r + (1 - p) x w against 1.0 for
    no marker (1h: p > 0.53), not by one read (2 + 0.1 > 2: never).
    """
    timeline = _with_now(clusters, now)
    gaps = [b[0] - a[0] for a, b in pairwise(timeline) if b[0] > a[0]]
    r = facts.read_multiplier()
    costs: dict[str | None, float] = {None: 1.0 if chain else 2.0}
    shares: list[str] = []
    for ttl in ttls:
        life = TTL_SECONDS[ttl]
        if not gaps or gaps[-1] <= life:
            p = 1.0
            shares.append(f"the conversation is going on (last gap within {ttl})")
        else:
            after = [b <= life for a, b in pairwise(gaps) if a > life]
            p = (sum(after) + TAIL_PRIOR[0]) / (len(after) + sum(TAIL_PRIOR))
            shares.append(f"P(read within {ttl})={p:.2f} ({sum(after)} of {len(after)} earlier gaps over {ttl} "
                          f"followed by one within it)")
        w = facts.write_multiplier(ttl)
        costs[ttl] = p * r + (1 - p) * w if chain else w + p * r + (1 - p)
    best = min(costs, key=lambda t: (costs[t], t is not None, t == "1h"))
    detail = " ".join(f"{t or 'none'}={c / (1 if chain else 2):.3f}" for t, c in costs.items())
    return best, f"per-token cost {detail}; " + "; ".join(shares)


def _pause_chance(clusters: Sequence[tuple[float, int]], now: float) -> float:
    """Chance that the next gap between this prefix's sighting bursts is a pause of 5 minutes to an hour.

    Laplace's rule of succession: after n gaps of which k were such pauses, (k + 1) / (n + 2).
    Without a pause seen the chance is not 0 but shrinks as close gaps accumulate (1/3 after one
    close gap, 1/12 after ten): no request can know the first pause is coming, and a rule that
    assumes it never comes pays a full re-write for it (docs/caching.md, "TTL"). It is asked for the
    next gap only: if that gap is close, the next turn decides again with what it knows then.
    """
    timeline = _with_now(clusters, now)
    gaps = [b[0] - a[0] for a, b in pairwise(timeline) if b[0] > a[0]]
    pauses = sum(1 for gap in gaps if TTL_SECONDS["5m"] < gap <= TTL_SECONDS["1h"])
    return (pauses + 1) / (len(gaps) + 2)


def _checkpoint_pays(facts: CacheFacts, clusters: Sequence[tuple[float, int]], now: float, unprotected: int,
                     premium_tokens: int, budget: float) -> bool:
    """Does a 1h entry (a checkpoint that survives a pause) pay here?

    A pause of 5 minutes to an hour lapses every 5m entry: the `unprotected` tokens (past the
    deepest live 1h entry) are then written again (w5 instead of a 0.1 read). A 1h entry costs
    (w1 - w5) more on the `premium_tokens` it writes, so it pays when
    P(the next gap is a pause) x (w5 - r) x unprotected > (w1 - w5) x premium_tokens.
    One gap is enough: if the next turn comes within 5 minutes it reads this turn's entries and
    places its own checkpoint, for the premium on its own new tokens only.
    Until a pause is seen the premium must also fit in `budget` (`_insurance_budget`): what the
    conversation's reads have saved so far, times `INSURANCE_SHARE`, less the premiums paid.
    """
    w5, w1, r = facts.write_multiplier("5m"), facts.write_multiplier("1h"), facts.read_multiplier()
    if not _pause_seen(clusters, now) and (w1 - w5) * premium_tokens > budget:
        return False
    return _pause_chance(clusters, now) * (w5 - r) * unprotected > (w1 - w5) * premium_tokens


def _forward_pays(facts: CacheFacts, clusters: Sequence[tuple[float, int]], now: float, unprotected: int, premium_tokens: int,
                  checkpoint_unprotected: int, checkpoint_premium: int) -> bool:
    """Once a pause was seen: is a 1h entry on the conversation's tail (the latest stable prefix)
    worth more than the cheapest checkpoint on the first new block?

    Each is valued with P(the next gap is a pause) x (w5 - r) x the tokens it protects, less its
    premium (w1 - w5 on the tokens it writes), and the tail wins when it is worth more and pays.
    P is asked of the conversation as it is now, as `_tail_ttl` asks it: just back from a pause, it
    is the share of earlier long gaps that were followed by another, with `_tail_ttl`'s prior (two
    long, one close: 2/3 without evidence); after a close gap, `_pause_chance`. Before any pause is
    seen this is never asked (pause-free conversations keep the cheap checkpoints within their budget).
    """
    if not _pause_seen(clusters, now):
        return False
    w5, w1, r = facts.write_multiplier("5m"), facts.write_multiplier("1h"), facts.read_multiplier()
    timeline = _with_now(clusters, now)
    gaps = [b[0] - a[0] for a, b in pairwise(timeline) if b[0] > a[0]]
    life = TTL_SECONDS["5m"]
    if gaps and gaps[-1] > life:
        after = [b > life for a, b in pairwise(gaps) if a > life]
        p = (sum(after) + TAIL_PRIOR[1]) / (len(after) + sum(TAIL_PRIOR))
    else:
        p = _pause_chance(clusters, now)
    tail = p * (w5 - r) * unprotected - (w1 - w5) * premium_tokens
    checkpoint = p * (w5 - r) * checkpoint_unprotected - (w1 - w5) * checkpoint_premium
    return tail > 0 and tail > checkpoint


def _pause_seen(clusters: Sequence[tuple[float, int]], now: float) -> bool:
    timeline = _with_now(clusters, now)
    return any(TTL_SECONDS["5m"] < b[0] - a[0] <= TTL_SECONDS["1h"] for a, b in pairwise(timeline))


def _insurance_budget(stats: Sequence[PrefixStats | None], tok: Sequence[int], k: int, last: int, read_now: int,
                      facts: CacheFacts) -> float:
    """What 1h premiums a conversation may still pay before any pause is seen, in input tokens.

    Insurance is paid for out of savings: INSURANCE_SHARE of what its reads saved so far (each
    earlier turn's end that a later turn continued, and this turn's read, at 1 - r each), less
    its 5m write premiums and the 1h premiums already paid (the tokens of each 1h entry on this
    prompt past the end or 1h entry before it). So a conversation without pauses keeps about
    1 - INSURANCE_SHARE of what `ttl=5m` saves it, or more, however short (property test:
    at least 95%).
    """
    w5, w1, r = facts.write_multiplier("5m"), facts.write_multiplier("1h"), facts.read_multiplier()
    read = read_now
    spent = 0.0
    floor = 0  # tokens up to the last end or 1h entry before the position looked at
    for i in range(min(k, last) + 1):
        s = stats[i]
        if s is None:
            continue
        if s.cached_ttl == "1h":
            spent += (w1 - w5) * (tok[i] - floor)
            floor = tok[i]
        if s.ends > 0:
            if s.continued > 0 and i < k:
                read += tok[i]
            floor = tok[i]
    return INSURANCE_SHARE * ((1 - r) * read - (w5 - 1) * tok[k]) - spent


def _upgrade_pays(facts: CacheFacts, now: float, clusters: Sequence[tuple[float, int]]) -> bool:
    """A concurrent request is writing this prefix for 5m: does writing it again for 1h now pay?

    If a pause lapses the 5m entry, the next burst (as large as the largest so far, b) pays one
    write and b - 1 plain inputs instead of b reads; upgrading costs this request w1 instead of
    a plain input (1.0). Asked only once a pause was seen for this prefix: without evidence a whole
    1h write is more insurance than a short batch can pay for (a checkpoint's premium is only
    the new tokens of a conversation's turn).
    """
    if not _pause_seen(clusters, now):
        return False
    burst = max(n for _, n in _with_now(clusters, now))
    w5, w1, r = facts.write_multiplier("5m"), facts.write_multiplier("1h"), facts.read_multiplier()
    return _pause_chance(clusters, now) * (w5 + (burst - 1) - burst * r) > w1 - 1.0


def _with_now(clusters: Sequence[tuple[float, int]], now: float) -> list[tuple[float, int]]:
    timeline = list(clusters)
    if timeline and 0 <= now - timeline[-1][0] < CLUSTER_SECONDS:
        timeline[-1] = (timeline[-1][0], timeline[-1][1] + 1)
    elif not timeline or now > timeline[-1][0]:
        timeline.append((now, 1))
    return timeline


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


def _eligible_at(request: Mapping[str, Any], bounds: Sequence[Boundary], i: int) -> bool:
    """May the block at position i carry a marker, and is it worth one (not a per-request system block)?"""
    b = bounds[i]
    if b.section == "tools":
        return True
    block = _block_of(request, b)
    if not is_eligible_block(block):
        return False
    return not (b.section == "system" and isinstance(block, dict) and is_volatile_text(block.get("text")))


def _trailer_at(request: Mapping[str, Any], bounds: Sequence[Boundary]) -> int | None:
    """Position of the first block of a per-turn trailer (`cache_planner.per_turn_trailer`), if one
    ends the request and some block comes before it."""
    found = cache_planner.per_turn_trailer(request.get("messages"))
    if found is None:
        return None
    message, block = found
    at = next((b.position for b in bounds if b.section == "messages" and b.message == message
               and (block is None or b.block == block)), None)
    return at if at is not None and at > 0 else None


def _last_eligible(request: Mapping[str, Any], bounds: Sequence[Boundary], start: int) -> int | None:
    return next((i for i in range(start, -1, -1) if _eligible_at(request, bounds, i)), None)


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
            found.append((b.position, _ttl_of(marker)))
    top = request.get("cache_control")
    if isinstance(top, dict):
        tail = _last_eligible(request, bounds, len(bounds) - 1)
        if tail is not None and all(p != tail for p, _ in found):
            found.append((tail, _ttl_of(top)))
    return found


def _ttl_of(marker: Mapping[str, Any]) -> str:
    ttl = marker.get("ttl")
    return ttl if isinstance(ttl, str) and ttl in TTL_SECONDS else "5m"


# ------------------------------------------------------------------------------------ OpenAI

@dataclass(frozen=True)
class OpenAIPlan:
    """Where explicit ``prompt_cache_breakpoint`` fields should go in an OpenAI request (GPT-5.6+).

    positions: boundary positions (``prefix_index.boundaries(request, api)``) whose content part
    gets a breakpoint, ascending. explicit_only: send ``prompt_cache_options: {"mode": "explicit"}``
    so the implicit breakpoint (the end of the newest message) does not write a tail nobody reads.
    decision: a ``row.CacheDecision``: inserted | not_worth | stood_down | not_supported (a model
    without explicit breakpoints) | below_minimum | no_eligible_block | not_messages.
    """

    decision: CacheDecision
    positions: tuple[int, ...] = ()
    explicit_only: bool = False
    notes: tuple[Note, ...] = ()


def plan_openai(request: object, api: Api, memory: Memory, now: float,
                raw: Sequence[bytes | None] | None = None) -> tuple[OpenAIPlan, Ticket | None]:
    """The learning planner for OpenAI Chat Completions / Responses; records the request in `memory`.

    raw: the client's bytes of each prompt block, if known (`prefix_index.boundaries`: only faster).

    The one decision the proxy makes live (``openai_cache.insert_openai_breakpoint`` splices it)
    and ``tokenpak savings`` replays. Where a breakpoint may go: ``openai_eligibility``.

    * Nothing seen before: the stable boundary, the last eligible block before the final user
      turn (the shared document before a new question; the conversation so far before the newest
      turn), if it reaches the model's minimum (`no_history`). It is free: the implicit
      breakpoint at the end writes past it anyway (writes are counted once per request).
    * With history: the same decision as for Anthropic (`_decide`): the shared prefix, the stable
      prefix before a per-request last block, the live entry; the conversation tail is left to the
      implicit breakpoint, and when the history says the tail is never read back the implicit
      breakpoint is switched off (``explicit_only``). At most 4 breakpoints, the implicit one
      counting unless it is switched off (the deepest are kept).
    * Any cache field set by the client (a breakpoint, prompt_cache_options, prompt_cache_key,
      prompt_cache_retention): stand down. A model before GPT-5.6: nothing (its caching is
      automatic). Either way the request is still recorded, so the index learns from it.
    """
    if not isinstance(request, dict) or api not in ("openai_chat", "openai_responses"):
        return OpenAIPlan("not_messages"), None
    model = request.get("model") if isinstance(request.get("model"), str) else None
    facts = facts_for(model, "openai")
    bpt = memory.calibration.bytes_per_token(model)
    bounds = boundaries(request, api, bpt, raw)
    if not bounds:
        return OpenAIPlan("no_eligible_block"), None
    digests = [b.digest for b in bounds]
    stats = memory.index.stats(digests, now)
    if client_cache_fields(request):
        result = OpenAIPlan("stood_down")
    elif not facts.explicit_markers:
        result = OpenAIPlan("not_supported")
    else:
        eligible = [breakpoint_eligible(request, api, b) for b in bounds]
        if any(s is not None for s in stats):
            result = _openai_learned(bounds, stats, now, facts, eligible)
        else:
            result = _openai_no_history(request, api, bounds, facts, eligible)
        result = replace(result, notes=_openai_addresses(request, api, bounds, result.notes))
    markers = [(p, facts.ttls[0]) for p in result.positions]
    if not result.explicit_only:
        markers.append((len(bounds) - 1, facts.ttls[0]))  # the implicit breakpoint
    read, writes = predict(bounds, stats, now, markers, facts)
    recorded = memory.index.record(digests, now, writes=writes, read=read)
    read_tokens = bounds[read].tokens_est if read is not None else 0
    write_tokens = max((bounds[p].tokens_est for p in writes), default=read_tokens) - read_tokens
    return result, Ticket(recorded, model, round(bounds[-1].tokens_est * bpt), read_tokens, write_tokens)


def _openai_learned(bounds: Sequence[Boundary], stats: Sequence[PrefixStats | None], now: float, facts: CacheFacts,
                    eligible: Sequence[bool]) -> OpenAIPlan:
    chosen, notes = _decide(bounds, stats, now, facts, CacheOptions(ttl="auto"), lambda i: eligible[i], ())
    explicit_only = any(n.reason == "tail_not_reused" for n in notes)
    positions = sorted({c.position for c in chosen if c.position != len(bounds) - 1})
    slots = facts.max_breakpoints - (0 if explicit_only else 1)
    drop = max(0, len(positions) - slots)  # the shallowest go first: the deepest read the most
    kept, dropped = positions[drop:], {_address(bounds[p]) for p in positions[:drop]}
    notes = tuple(replace(n, ttl=None, reason="no_slot") if n.ttl is not None and n.at in dropped else n for n in notes)
    if kept or explicit_only:
        return OpenAIPlan("inserted", tuple(kept), explicit_only, notes)
    return OpenAIPlan("not_worth", (), False, notes)


def _openai_no_history(request: Mapping[str, Any], api: Api, bounds: Sequence[Boundary], facts: CacheFacts,
                       eligible: Sequence[bool]) -> OpenAIPlan:
    items = request.get(ITEMS_KEY[api])
    items = items if isinstance(items, list) else []
    final_user = next((i for i in range(len(items) - 1, -1, -1) if isinstance(items[i], dict) and items[i].get("role") == "user"), None)
    candidates = [b for b in bounds if eligible[b.position] and final_user is not None and b.message is not None and b.message < final_user]
    if not candidates:
        return OpenAIPlan("no_eligible_block")
    b = candidates[-1]
    if b.tokens_est < facts.minimum_tokens:
        return OpenAIPlan("below_minimum", (), False, (Note(_address(b), "below_minimum", b.tokens_est, None, f"minimum {facts.minimum_tokens}"),))
    note = Note(_address(b), "no_history", b.tokens_est, facts.ttls[0], "the stable boundary before the final user turn")
    return OpenAIPlan("inserted", (b.position,), False, (note,))


def _openai_addresses(request: Mapping[str, Any], api: Api, bounds: Sequence[Boundary], notes: tuple[Note, ...]) -> tuple[Note, ...]:
    """The notes' places in the request's own terms: ``input.3.output.0`` for a Responses tool result."""
    items = request.get(ITEMS_KEY[api])
    names: dict[str, str] = {}
    for b in bounds:
        if b.section == "messages" and b.message is not None and isinstance(items, list) and b.message < len(items):
            item = items[b.message]
            key = item_content(item, api)[0] if isinstance(item, dict) else "content"
            names[_address(b)] = f"{ITEMS_KEY[api]}.{b.message}.{key}" + ("" if b.block is None else f".{b.block}")
    return tuple(replace(n, at=names.get(n.at, n.at)) for n in notes)
