"""Why a request did not read the cache it could have read (pure: evidence in, verdict out).

The evidence is gathered by the session tracker (``sessions.py``): the request's shape, its exact
usage, what the proxy had seen of the same prefixes before (the prefix index) and the previous
request of the same conversation. The verdict names one cause:

``cold``
    Nothing of this prefix was seen before: the first request of a prefix writes, it cannot read.
``below_minimum``
    The prompt (or the shared prefix) is shorter than the model's minimum cacheable length.
``not_marked``
    The request, or the earlier request that sent the same prefix, carried no cache marker, so
    nothing was written there.
``prefix_changed``
    The previous request of the conversation had its prefix cached, and this request differs from
    it before that point (tools, system text, a volatile value such as a date, history rewritten,
    model or thinking parameters). The first differing section and block are reported.
``ttl_expired``
    The prefix was cached, but longer ago than its TTL.
``lookback_exceeded``
    The cached prefix is more than 20 blocks before every breakpoint of this request (a read
    checks at most 20 positions back from each breakpoint).
``provider_evicted``
    The prefix was cached within its TTL, a breakpoint reached it, and still nothing (or less)
    was read: the provider dropped the entry early.
``unknown``
    The evidence does not decide (an entry near its TTL edge, a prefix near the minimum, a write
    still in flight, a marked prefix that was never confirmed written).

``None`` means no miss: the request read what could be read. When causes overlap the first in
this order is reported: below_minimum, ttl_expired, not_marked, prefix_changed,
lookback_exceeded, provider_evicted (each earlier one would have missed even without the later).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tokenpak_mitm.core.account.pricing import price
from tokenpak_mitm.core.account.request_shape import Shape, first_difference
from tokenpak_mitm.core.observe.usage import Usage
from tokenpak_mitm.core.plan.cache_facts import LOOKBACK_BLOCKS
from tokenpak_mitm.core.row import MISS_CHANGES, MISS_REASONS, MissChange, MissReason

__all__ = ["CHANGES", "PROVIDER_CHANGES", "REASONS", "Change", "Evidence", "Known", "Prior", "Reason", "Verdict", "as_provider_reason", "change_between",
           "diagnose", "miss_cost_usd", "reconcile", "usage_with_read"]

Reason = MissReason  # the vocabularies live with the row (row.py)
REASONS = MISS_REASONS
Change = MissChange
CHANGES = MISS_CHANGES

READ_TOLERANCE = 0.9  # a read this close to the expected prefix is a full read (estimates are rescaled, not exact)
MINIMUM_BAND = 0.05  # within 5% of the model minimum, "below minimum" is not decided
TTL_MARGIN = 5.0  # seconds around a TTL edge where expiry is not decided


@dataclass(frozen=True, slots=True)
class Known:
    """What the prefix index knew of one boundary of this request when it was sent."""

    position: int  # index in the request's blocks
    cached: bool | None  # confirmed written/read (True), seen but not cached (False), undecided (None)
    marked: bool  # carried a breakpoint when it was seen
    cached_at: float | None  # start of the last request that wrote or read it, before this one
    ttl_seconds: float
    pending: bool = False  # seen in a request whose usage had not arrived yet


@dataclass(frozen=True, slots=True)
class Prior:
    """The previous request of the same conversation, as far as it had got."""

    shape: Shape
    cached_position: int | None  # deepest breakpoint it had cached
    cached_tokens: int  # tokens of that prefix (exact-scaled)
    cached_at: float | None
    ttl_seconds: float
    started: float = 0.0
    marked: bool = True  # it carried a cache marker (or the provider caches by itself)


@dataclass(frozen=True, slots=True)
class Evidence:
    shape: Shape
    started: float
    read: int
    write: int
    fresh: int
    minimum: int
    cached: Known | None  # deepest boundary confirmed cached before this request
    seen: Known | None  # deepest boundary seen before this request (cached or not)
    prior: Prior | None
    lookback: int | None = LOOKBACK_BLOCKS  # positions a read checks back from a breakpoint (None: no limit)
    blame_provider: bool = True  # the provider keeps entries for their TTL (Anthropic); False: best effort (OpenAI)
    granularity: int = 1  # reported reads are rounded down to a multiple of this (OpenAI: 128)

    @property
    def total(self) -> int:
        return self.read + self.write + self.fresh

    def tokens(self, position: int) -> int:
        """Exact-scaled prefix tokens at ``position`` (estimates rescaled to the reported total)."""
        est = self.shape.tokens
        if est <= 0:
            return 0
        return round(self.shape.blocks[position].tokens * self.total / est)


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: Reason
    expected_tokens: int  # the prefix that could have been read
    section: str | None = None  # where the prefix first differed from the previous request
    block: int | None = None
    change: Change | None = None


def change_between(prev: Shape, cur: Shape) -> tuple[int, Change] | None:
    """Position of the first difference between two requests' prefixes and what kind it is."""
    if prev.model != cur.model:
        return 0, "model_params"
    position = first_difference(prev.blocks, cur.blocks)
    if position is None:
        if len(cur.blocks) >= len(prev.blocks):
            return None
        position = len(cur.blocks)  # history cut short
        return position, "history"
    a, b = prev.blocks[position], cur.blocks[position]
    if a.part != b.part:
        # a block added or removed at a section edge: the section that grew or shrank
        part = min((a.part, b.part), key=("tools", "system", "messages").index)
        return position, "history" if part == "messages" else part  # type: ignore[return-value]
    if a.digest == b.digest:
        # the block itself is equal: the difference is in the parameters folded in before it
        return position, "model_params"
    if a.masked == b.masked:
        return position, "volatile"
    return position, "history" if a.part == "messages" else a.part  # type: ignore[return-value]


def _dropped_trailing_system(prev: Shape, position: int) -> bool:
    """The first difference is where ``prev``'s trailing run of mid-conversation system messages
    begins (a reminder appended at the end of one request and not resent with the next)."""
    tail = prev.blocks[position:]
    return bool(tail) and all(b.mid_system for b in tail)


def _reachable(shape: Shape, position: int, lookback: int | None) -> bool:
    return any(position <= bp and (lookback is None or bp < position + lookback) for bp in shape.breakpoints())


def _ttl_state(known_at: float | None, ttl: float, now: float) -> Literal["live", "expired", "edge"]:
    if known_at is None:
        return "edge"
    age = now - known_at
    if age >= ttl + TTL_MARGIN:
        return "expired"
    if age > ttl - TTL_MARGIN:
        return "edge"
    return "live"


def diagnose(ev: Evidence) -> Verdict | None:
    """The miss verdict for a completed request with exact usage; None when nothing was missed."""
    if not ev.shape.blocks or ev.total <= 0:
        return None
    below = ev.total < ev.minimum
    expected_idx = ev.tokens(ev.cached.position) if ev.cached else 0
    change: tuple[int, Change] | None = None
    expected_prior = 0
    prior = ev.prior
    if prior is not None and prior.cached_position is not None:
        k = prior.cached_position
        same = k < len(ev.shape.blocks) and ev.shape.blocks[k].prefix == prior.shape.blocks[k].prefix
        if not same:
            change = change_between(prior.shape, ev.shape)
            expected_prior = prior.cached_tokens
            if change is not None and _dropped_trailing_system(prior.shape, change[0]):
                # The previous request's cache point sat on trailing mid-conversation system
                # messages this request does not repeat: nothing was changed before them, and
                # what stays readable is what the prefix index knows was written earlier.
                change, expected_prior = None, 0
    expected = max(expected_idx, expected_prior)

    if expected > 0 and ev.read >= READ_TOLERANCE * expected - (ev.granularity - 1):
        return None
    if expected == 0:
        if ev.read > 0:
            return None  # read something the proxy had not seen written (e.g. before a restart)
        if below:
            return Verdict("below_minimum", 0)
        seen = ev.seen
        if seen is None:
            return Verdict("cold", 0)
        # the prefix was sent before but never confirmed cached
        x = ev.tokens(seen.position)
        if seen.pending:
            return Verdict("unknown", x)
        if x < ev.minimum * (1 - MINIMUM_BAND):
            return Verdict("cold", 0)  # what it shares with earlier requests is too short to cache: the rest is new
        if not ev.shape.marked or not seen.marked:
            return Verdict("not_marked", x)
        return Verdict("unknown", x)

    # Something could have been read, and less was.
    if below:
        return Verdict("below_minimum", expected)
    prior_path = change is not None and expected_prior > expected_idx
    known = ev.cached
    # An expired entry could not have been read whatever this request carried: expiry comes first.
    if prior_path:
        assert prior is not None
        state = _ttl_state(prior.cached_at, prior.ttl_seconds, ev.started)
    else:
        state = _ttl_state(known.cached_at, known.ttl_seconds, ev.started) if known is not None else "edge"
    if state == "expired" and (prior_path or known is not None):
        expired_at = (prior.cached_at or 0.0) + prior.ttl_seconds if prior_path and prior else (
            (known.cached_at or 0.0) + known.ttl_seconds if known is not None else 0.0)
        if prior is not None and not prior.marked and prior.started >= expired_at:
            # the conversation's previous request came after the expiry and could have written the
            # prefix again, but carried no marker: that is what this request lacks
            return Verdict("not_marked", expected)
        return Verdict("ttl_expired", expected)
    if not ev.shape.marked:
        return Verdict("not_marked", expected)
    if prior_path:
        assert prior is not None and change is not None
        position, kind = change
        block = ev.shape.blocks[position] if position < len(ev.shape.blocks) else prior.shape.blocks[min(position, len(prior.shape.blocks) - 1)]
        # A different model changes everything from the start: no section or block to point at.
        moved = prior.shape.model != ev.shape.model
        return Verdict("unknown" if state == "edge" else "prefix_changed", expected,
                       None if moved else block.part, None if moved else block.index, kind)
    if known is None:
        return Verdict("unknown", expected)
    if ev.tokens(known.position) < ev.minimum * (1 + MINIMUM_BAND):
        return Verdict("unknown", expected)  # a short prefix near the minimum: cannot tell
    if state == "edge":
        return Verdict("unknown", expected)
    if not _reachable(ev.shape, known.position, ev.lookback):
        return Verdict("lookback_exceeded", expected)
    # Cached within its TTL, reachable, and not read: the provider dropped it, if it promises to keep
    # entries for their TTL; a best-effort cache (OpenAI) may drop them any time, which says nothing.
    return Verdict("provider_evicted" if ev.blame_provider else "unknown", expected)


# The provider's divergence types (Anthropic cache diagnostics) and what our verdict says for each:
# the change kind and the section it points at (None: the whole prompt, as for a model change).
PROVIDER_CHANGES: dict[str, tuple[Change, str | None]] = {
    "model_changed": ("model_params", None),
    "tools_changed": ("tools", "tools"),
    "system_changed": ("system", "system"),
    "messages_changed": ("history", "messages"),
}


_STANDS: frozenset[str] = frozenset({"below_minimum", "ttl_expired", "not_marked"})


def as_provider_reason(reason: str | None, section: str | None, change: str | None) -> str | None:
    """Our verdict in the provider's words: the ``*_changed`` type it would state, or None when our
    reason is not a prefix change (the provider's types only name divergences)."""
    if reason != "prefix_changed":
        return None
    if section is None:
        return "model_changed" if change == "model_params" else None
    return {"tools": "tools_changed", "system": "system_changed", "messages": "messages_changed"}.get(section)


def reconcile(verdict: Verdict | None, provider: str | None) -> Verdict | None:
    """What the row says when the provider stated its own verdict (docs/sessions.md).

    The provider's verdict wins for the reason: where it names a divergence (``*_changed``) and we
    saw a miss, the reason is ``prefix_changed`` with the provider's kind of change. Ours keeps the
    cost (``expected_tokens``) and the where (section and block) it found. Three causes of ours
    stand, because the request would have missed even without the divergence: ``below_minimum``,
    ``ttl_expired`` and ``not_marked`` (the order in ``diagnose``). No miss is ever made up from the
    provider's verdict (it compares request structure, not what was read), and a verdict without a
    reason (``none``: it may still have been comparing) or one that names no cause
    (``previous_message_not_found``, ``unavailable``) leaves ours as it is.
    """
    if verdict is None or provider is None or verdict.reason in _STANDS:
        return verdict
    stated = PROVIDER_CHANGES.get(provider)
    if stated is not None:
        if as_provider_reason(verdict.reason, verdict.section, verdict.change) == provider:
            return verdict
        change, section = stated
        if verdict.reason == "prefix_changed" and section is not None and verdict.section == section:
            return verdict  # same section, a finer kind of ours (volatile, model_params folded in)
        return Verdict("prefix_changed", verdict.expected_tokens, verdict.section if section is not None else None,
                       verdict.block if section is not None else None, change)
    return verdict


def usage_with_read(usage: Usage, expected_tokens: int) -> Usage | None:
    """``usage`` as it would have been had the expected prefix been read in full.

    The tokens that were not read are taken from the cache writes first (a missed prefix is
    normally written again), 1h before 5m, then from the fresh input. None when usage is missing.
    """
    read, fresh = usage.cache_read_tokens, usage.input_tokens
    if read is None or fresh is None:
        return None
    w5 = usage.cache_write_5m_tokens
    w1 = usage.cache_write_1h_tokens
    write = usage.cache_write_tokens or 0
    if w5 is None and w1 is None:
        w5, w1 = write, 0
    w5, w1 = w5 or 0, w1 or 0
    total = read + fresh + write
    moved = max(0, min(expected_tokens, total) - read)
    take1 = min(w1, moved)
    take5 = min(w5, moved - take1)
    take_fresh = min(fresh, moved - take1 - take5)
    return Usage(
        input_tokens=fresh - take_fresh,
        cache_read_tokens=read + take1 + take5 + take_fresh,
        cache_write_tokens=write - take1 - take5,
        cache_write_5m_tokens=w5 - take5,
        cache_write_1h_tokens=w1 - take1,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        web_search_requests=usage.web_search_requests,
    )


def miss_cost_usd(provider: str, model: str | None, usage: Usage, expected_tokens: int) -> float | None:
    """What the request paid above a full read of the expected prefix (None when unpriced)."""
    if expected_tokens <= 0:
        return 0.0
    ideal = usage_with_read(usage, expected_tokens)
    if ideal is None:
        return None
    actual, best = price(provider, model, usage), price(provider, model, ideal)
    if actual.cost_usd is None or best.cost_usd is None:
        return None
    return round(max(0.0, actual.cost_usd - best.cost_usd), 9)
