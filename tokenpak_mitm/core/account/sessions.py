"""The per-proxy session tracker: which session and turn each request is, why its cache missed,
what the miss cost, and until when each session's cache is warm (pure: clock passed in, no I/O).

An ``accounting.Accountant`` owns one ``SessionTracker`` (the store's writer process for live
traffic, the addon for flows it accounts itself). It calls ``begin`` when a request goes upstream
(the session and turn are decided then, from the request alone) and ``finish`` with the final
usage (the miss verdict needs what the provider actually read). A lock guards the state so the
tracker is safe from any thread.

Memory is bounded: at most ``max_sessions`` sessions (least recently active dropped first), a
few recent requests per session, a global budget of retained blocks, and a bounded prefix index
(least recently used boundary dropped first). What is dropped is only forgotten history: a
forgotten prefix can make a later verdict ``unknown`` (never ``cold``: see ``_blind``), never a wrong cause of
another kind.

Sessions: an explicit id (``session_id.identify``) wins. Otherwise a request whose non-system
messages extend an earlier request's whole conversation continues that request's session, within
the same credential scope (see ``_by_lineage``); a single-message request continues one only when
it repeats an earlier request exactly and soon (a retry). Anything else starts a new session.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from tokenpak_mitm.core.account.cache_miss import MINIMUM_BAND, Evidence, Known, Prior, Verdict, diagnose
from tokenpak_mitm.core.account.request_shape import Shape
from tokenpak_mitm.core.account.session_id import Hint, Source
from tokenpak_mitm.core.dialects import dialect
from tokenpak_mitm.core.plan.cache_facts import TTL_SECONDS, facts_for

__all__ = ["TTL_SECONDS", "Outcome", "SessionTracker", "Ticket", "UsageFacts"]

REQUESTS_PER_SESSION = 4
MAX_SESSIONS = 1000
MAX_RETAINED_BLOCKS = 400_000
MAX_INDEX = 200_000
MAX_LINEAGE = 200_000
MAX_RESPONSES = 20_000
RETRY_SECONDS = 120.0  # an identical request this soon after is a retry of the same session


@dataclass(frozen=True, slots=True)
class Rules:
    """How one provider's prompt cache behaves, as far as the diagnosis needs it (from cache_facts)."""

    minimum: int
    lookback: int | None  # None: no lookback limit
    blame_provider: bool  # entries are kept for their TTL (Anthropic); False: best effort (OpenAI)
    ttl_seconds: float | None  # the entries' lifetime, None: from each marker's TTL
    granularity: int  # reads are reported rounded down to this
    implicit_write: bool  # the provider caches the prompt's end by itself and reports no write (OpenAI before GPT-5.6)


def rules_for(shape: Shape) -> Rules | None:
    """The rules of the shape's dialect's cache family; None where misses are not diagnosed (no family: Gemini)."""
    d = dialect(shape.api)
    family = d.cache if d is not None else None
    if family == "anthropic":
        f = facts_for(shape.model, "anthropic")
        return Rules(f.minimum_tokens, f.lookback_blocks, True, None, f.cached_granularity, False)
    if family == "openai":
        f = facts_for(shape.model, "openai")
        # Before GPT-5.6 retention is "5 to 10 minutes of inactivity, up to one hour" (or 24 h when
        # asked): only the longest is a fact, so only past it is a miss put down to expiry.
        ttl = TTL_SECONDS["30m"] if f.write else 3600.0
        if f.write and shape.options_ttl:
            ttl = shape.options_ttl  # the request's prompt_cache_options.ttl (GPT-5.6+ breakpoints)
        if shape.long_retention:
            ttl = 24 * 3600.0
        return Rules(f.minimum_tokens, f.lookback_blocks, False, ttl, f.cached_granularity, not f.write)
    return None


@dataclass(frozen=True, slots=True)
class UsageFacts:
    """The exact usage of a finished request (exclusive buckets, as in ``usage.Usage``)."""

    fresh: int
    read: int
    write: int
    completed: bool = True  # final usage from a completed response
    response_started: float | None = None  # when the response began: what it wrote is readable from then on


@dataclass(slots=True)
class _Entry:  # mutable, and only ever touched under the tracker's lock: no copy per update
    first_seen: float
    marked: bool
    cached: bool | None  # None while undecided (near the minimum) or pending
    cached_at: float | None  # start of the last request that wrote or read it
    readable_at: float | None  # when that request's response began (a write is readable from then on)
    prev_cached_at: float | None  # the write or read before that one
    ttl_seconds: float
    pending: int  # requests that sent it and have not reported usage


@dataclass(slots=True)
class _Request:
    shape: Shape
    started: float
    indexed: tuple[int, ...] = ()  # the positions remembered in the prefix index (see _indexed)
    cached_position: int | None = None
    cached_tokens: int = 0
    cached_at: float | None = None
    ttl_seconds: float = 300.0
    finished: bool = False


@dataclass(slots=True)
class _Session:
    id: str
    project: str | None
    scope: str
    turns: int = 0
    last_active: float = 0.0
    warm_until: float | None = None
    requests: deque[_Request] = field(default_factory=lambda: deque(maxlen=REQUESTS_PER_SESSION))


@dataclass(frozen=True, slots=True)
class Ticket:
    """What ``begin`` decided; handed back to ``finish``."""

    session_id: str
    source: Source
    project: str | None
    turn: int
    started: float
    scope: str
    shape: Shape | None = None
    prior: _Request | None = None
    request: _Request | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The row columns for one finished request."""

    session_id: str
    session_source: str
    project: str | None
    turn: int
    verdict: Verdict | None = None
    warm_until: float | None = None

    def columns(self) -> dict[str, Any]:
        """The session and miss fields of ``row.TelemetryRow`` this outcome fills (``miss_cost_usd`` aside: it needs prices)."""
        v = self.verdict
        return {
            "session_id": self.session_id,
            "session_source": self.session_source,
            "project": self.project,
            "turn": self.turn,
            "cache_miss_reason": v.reason if v else None,
            "miss_section": v.section if v else None,
            "miss_block": v.block if v else None,
            "miss_change": v.change if v else None,
            "miss_expected_tokens": v.expected_tokens if v else None,
            "cache_warm_until": self.warm_until,
        }


class SessionTracker:
    def __init__(self, clock: Callable[[], float] = time.time, *, max_sessions: int = MAX_SESSIONS,
                 max_index: int = MAX_INDEX, max_blocks: int = MAX_RETAINED_BLOCKS) -> None:
        self.clock = clock
        self.max_sessions = max_sessions
        self.max_index = max_index
        self.max_blocks = max_blocks
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._index: OrderedDict[tuple[str, bytes], _Entry] = OrderedDict()
        self._lineage: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self._responses: OrderedDict[str, str] = OrderedDict()
        self._blocks = 0
        self._ids = itertools.count(1)
        self._prefix = os.urandom(3).hex()
        self.forgotten = 0  # index entries dropped for space
        self._forgot_at: deque[float] = deque(maxlen=8)  # when the index last dropped entries for space
        # Until this time the tracker may not know what was cached before it started (an earlier
        # proxy run wrote entries that can still be live): a request it knows nothing about is
        # then "unknown", not "cold". The addon sets it from the database's newest row.
        self.blind_until: float | None = None

    # -- the request ----------------------------------------------------------------------------
    def begin(self, hint: Hint, shape: Shape | None, now: float | None = None) -> Ticket:
        now = self.clock() if now is None else now
        with self._lock:
            sess, source = self._session_for(hint, shape, now)
            sess.turns += 1
            sess.last_active = now
            self._sessions.move_to_end(sess.id)
            prior = self._prior(sess, shape) if shape is not None else None
            request = None
            if shape is not None:
                request = _Request(shape, now, self._indexed(shape))
                self._remember(sess, request)
                self._see(hint.scope, shape, request.indexed, now)
                if shape.turn_keys:
                    full, head = shape.turn_keys[-1], _head(shape)
                    self._put(self._lineage, (sess.scope, full), sess.id, MAX_LINEAGE)
                    self._put(self._lineage, (sess.scope, full + head), sess.id, MAX_LINEAGE)
            self._trim(now)
            return Ticket(sess.id, source, sess.project, sess.turns, now, hint.scope, shape, prior, request)

    def note_response(self, ticket: Ticket, response_id: str | None) -> None:
        """Remember which session a response belongs to (OpenAI ``previous_response_id``)."""
        if response_id:
            with self._lock:
                self._put(self._responses, response_id, ticket.session_id, MAX_RESPONSES)

    def finish(self, ticket: Ticket, usage: UsageFacts | None, now: float | None = None) -> Outcome:
        """Record what the provider did with the request and diagnose a miss (Anthropic and OpenAI)."""
        with self._lock:
            sess = self._sessions.get(ticket.session_id)
            verdict = None
            shape, req = ticket.shape, ticket.request
            if shape is not None and req is not None:
                rules = rules_for(shape)
                if usage is not None and usage.completed and rules is not None:
                    verdict = self._diagnose(ticket, shape, usage, rules)
                    self._settle(ticket, shape, req, usage, sess, rules)
                else:
                    self._release(ticket.scope, shape, req.indexed)
                req.finished = True
            warm = sess.warm_until if sess is not None else None
            return Outcome(ticket.session_id, ticket.source, ticket.project, ticket.turn, verdict, warm)

    def warm_until(self, session_id: str) -> float | None:
        with self._lock:
            sess = self._sessions.get(session_id)
            return sess.warm_until if sess else None

    # -- sessions -------------------------------------------------------------------------------
    def _session_for(self, hint: Hint, shape: Shape | None, now: float) -> tuple[_Session, Source]:
        sid: str | None = hint.session_id
        source: Source = hint.source or "new"
        if sid is None and hint.previous_response_id:
            sid = self._responses.get(hint.previous_response_id)
            source = "previous_response"
        if sid is None and shape is not None:
            sid = self._by_lineage(hint.scope, shape, now)
            source = "lineage"
        if sid is not None and sid in self._sessions:
            sess = self._sessions[sid]
            if hint.project and not sess.project:
                sess.project = hint.project
            return sess, (hint.source or source)
        if sid is None:
            sid = f"s-{self._prefix}-{next(self._ids)}"
            source = "new"
        sess = _Session(sid, hint.project, hint.scope)
        self._sessions[sid] = sess
        return sess, source

    def _by_lineage(self, scope: str, shape: Shape, now: float) -> str | None:
        """The session whose last request's whole conversation this request extends.

        At each length (longest first) a match that also has the same tools and system wins over
        one on the messages alone (two conversations can open with the same message). A request
        that repeats an earlier request's whole conversation (same messages, tools and system)
        continues it at once only within ``RETRY_SECONDS`` (a retry); later, a single-message one
        is the same prompt run again, a new session.
        """
        keys, head = shape.turn_keys, _head(shape)
        if keys:
            sid = self._lineage.get((scope, keys[-1] + head))
            sess = self._sessions.get(sid) if sid else None
            if sess is not None and now - sess.last_active <= RETRY_SECONDS:
                return sid
        for key in reversed(keys[:-1]):
            sid = self._lineage.get((scope, key + head)) or self._lineage.get((scope, key))
            if sid is not None:
                return sid
        return None

    @staticmethod
    def _prior(sess: _Session, shape: Shape) -> _Request | None:
        """The session's earlier request this one continues: longest shared message history."""
        best, best_len = None, 0
        for req in reversed(sess.requests):
            n = _common(req.shape.turn_keys, shape.turn_keys)
            if n > best_len:
                best, best_len = req, n
        if best is None and sess.requests and not shape.turn_keys:
            best = sess.requests[-1]
        return best

    def _remember(self, sess: _Session, request: _Request) -> None:
        if len(sess.requests) == sess.requests.maxlen:
            self._blocks -= len(sess.requests[0].shape.blocks)
        sess.requests.append(request)
        self._blocks += len(request.shape.blocks)

    def _trim(self, now: float) -> None:
        while self._sessions and (len(self._sessions) > self.max_sessions or self._blocks > self.max_blocks):
            _, old = self._sessions.popitem(last=False)
            self._blocks -= sum(len(r.shape.blocks) for r in old.requests)

    @staticmethod
    def _put(table: OrderedDict, key: object, value: object, cap: int) -> None:  # type: ignore[type-arg]
        table[key] = value
        table.move_to_end(key)
        while len(table) > cap:
            table.popitem(last=False)

    # -- the prefix index -----------------------------------------------------------------------
    @staticmethod
    def _indexed(shape: Shape) -> tuple[int, ...]:
        """Boundaries worth remembering: breakpoints, section ends and message ends."""
        points = set(shape.breakpoints())
        points.update(i for i, b in enumerate(shape.blocks) if b.message_end)
        return tuple(sorted(points))

    def _see(self, scope: str, shape: Shape, indexed: tuple[int, ...], now: float) -> None:
        breakpoints = set(shape.breakpoints())
        index = self._index
        for i in indexed:
            key = (scope, shape.blocks[i].prefix)
            e = index.get(key)
            if e is None:
                index[key] = _Entry(now, i in breakpoints, False, None, None, None, TTL_SECONDS[shape.ttl_at(i)], 1)
            else:
                e.marked = e.marked or i in breakpoints
                e.pending += 1
                index.move_to_end(key)
        while len(index) > self.max_index:
            index.popitem(last=False)
            self.forgotten += 1
            if not self._forgot_at or self._forgot_at[-1] != now:
                self._forgot_at.append(now)

    def _release(self, scope: str, shape: Shape, indexed: tuple[int, ...]) -> None:
        for i in indexed:
            e = self._index.get((scope, shape.blocks[i].prefix))
            if e is not None and e.pending > 0:
                e.pending -= 1

    def _known(self, scope: str, shape: Shape, indexed: tuple[int, ...], started: float, own: int) -> tuple[Known | None, Known | None]:
        """(deepest boundary confirmed cached before ``started``, deepest seen before it)."""
        cached = seen = None
        for i in reversed(indexed):
            e = self._index.get((scope, shape.blocks[i].prefix))
            if e is None or e.first_seen >= started:
                continue  # first sent by this request, or by one that started with it
            usable = e.cached_at is not None and e.cached_at < started and (e.readable_at or e.cached_at) <= started
            at = e.cached_at if usable else e.prev_cached_at
            # in flight: sent by a request still running, or written by one whose response began after this one started
            in_flight = at is None and (e.pending > own or e.cached_at is not None)
            k = Known(i, e.cached if at is not None else False, e.marked, at, e.ttl_seconds, pending=in_flight)
            if seen is None:
                seen = k
            if at is not None and e.cached is not False:
                cached = k
                break
        return cached, seen

    def _diagnose(self, t: Ticket, shape: Shape, usage: UsageFacts, rules: Rules) -> Verdict | None:
        if not shape.blocks:
            return None
        assert t.request is not None
        cached, seen = self._known(t.scope, shape, t.request.indexed, t.started, own=1)
        prior = None
        p = t.prior
        if p is not None and p.finished:
            prior = Prior(p.shape, p.cached_position, p.cached_tokens, p.cached_at, p.ttl_seconds, p.started, p.shape.marked)
        ev = Evidence(shape, t.started, usage.read, usage.write, usage.fresh, rules.minimum, cached, seen, prior,
                      rules.lookback, rules.blame_provider, rules.granularity)
        verdict = diagnose(ev)
        if verdict is not None and verdict.reason == "cold" and self._blind(t.started):
            return replace(verdict, reason="unknown")  # it may have been cached where the tracker cannot see
        return verdict

    def _blind(self, started: float) -> bool:
        """Could a prefix have been cached without the tracker knowing, at ``started``?

        After a restart (an earlier run's entries may still live), or within the longest TTL of the
        index dropping an entry for space (it may have been this one).
        """
        longest = TTL_SECONDS["1h"]
        if self.blind_until is not None and started < self.blind_until:
            return True
        # (a request's own start never forgets its own prefixes: they are looked up before anything is dropped)
        return any(at < started and started - at < longest for at in self._forgot_at)

    def _settle(self, t: Ticket, shape: Shape, req: _Request, usage: UsageFacts, sess: _Session | None, rules: Rules) -> None:
        """Mark the boundaries the provider wrote or read, and the session's warm-until."""
        total = usage.fresh + usage.read + usage.write
        est = shape.tokens
        scale = total / est if est > 0 else 0.0
        minimum = rules.minimum
        covered = usage.read + usage.write
        if rules.implicit_write and shape.top_level_ttl is not None and total >= minimum:
            covered = total  # the provider caches the whole prompt by itself and reports no write
        readable = usage.response_started if usage.response_started is not None else t.started
        deepest: int | None = None
        breakpoints = set(shape.breakpoints())
        indexed = req.indexed
        # The entry the read came from (the deepest confirmed one the read covers): a read refreshes
        # its lifetime, even when it is not one of this request's breakpoints (a lookback hit).
        hit = next((i for i in reversed(indexed) if usage.read > 0
                    and shape.blocks[i].tokens * scale <= usage.read * 1.02 + 8 + rules.granularity
                    and (e := self._index.get((t.scope, shape.blocks[i].prefix))) is not None and e.cached is True), None)
        for i in indexed:
            key = (t.scope, shape.blocks[i].prefix)
            e = self._index.get(key)
            if e is None:
                continue
            tokens = shape.blocks[i].tokens * scale
            is_break = i in breakpoints
            cached: bool | None = e.cached
            at, prev, when = e.cached_at, e.prev_cached_at, e.readable_at
            ttl = e.ttl_seconds
            if covered > 0 and is_break and tokens <= covered * 1.02 + 8:
                if tokens >= minimum * (1 + MINIMUM_BAND):
                    cached, prev, at, when, ttl = True, at, t.started, readable, rules.ttl_seconds or TTL_SECONDS[shape.ttl_at(i)]
                    deepest = i
                elif tokens >= minimum * (1 - MINIMUM_BAND) and cached is not True:
                    cached = None  # too close to the minimum to say whether it was written
            if i == hit and at != t.started:
                prev, at, when = at, t.started, t.started  # refreshed with its own TTL
            e.cached, e.cached_at, e.readable_at, e.prev_cached_at, e.ttl_seconds = cached, at, when, prev, ttl
            e.pending = max(0, e.pending - 1)
        if deepest is not None:
            req.cached_position = deepest
            req.cached_tokens = round(shape.blocks[deepest].tokens * scale)
            req.cached_at = t.started
            req.ttl_seconds = rules.ttl_seconds or TTL_SECONDS[shape.ttl_at(deepest)]
            if sess is not None:
                until = t.started + req.ttl_seconds
                sess.warm_until = until if sess.warm_until is None else max(sess.warm_until, until)


def _head(shape: Shape) -> bytes:
    """The prefix digest of everything before the messages (tools and system)."""
    head = b""
    for b in shape.blocks:
        if b.section == "messages":
            break
        head = b.prefix
    return head


def _common(a: tuple[bytes, ...], b: tuple[bytes, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
