"""One request's accounting: its session and turn, the miss diagnosis, the row (pure: values in,
values out; the clock is the caller's). The one home of every accounting rule.

The proxy hands each request to one ``Sink``, chosen once when the store is configured: it sends
one ``SessionFacts`` when a request goes upstream and one ``Finished`` (the record, with what
other addons noted on it) when it ends. ``Accountant.close`` / ``account`` turns that into the
request's one row, and is the only caller of ``telemetry.build_row``. It runs in the store's writer
process (``store_writer``), or in the proxy for a ``LocalSink`` (see ``Sink``).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from tokenpak_mitm import __version__
from tokenpak_mitm.core.account.cache_miss import miss_cost_usd, reconcile
from tokenpak_mitm.core.account.request_shape import Shape, parse_shape
from tokenpak_mitm.core.account.session_id import CLAUDE_CODE_SESSION_HEADER, PROJECT_HEADER, SESSION_HEADER, identify
from tokenpak_mitm.core.account.sessions import SessionTracker, Ticket, UsageFacts
from tokenpak_mitm.core.account.telemetry import Outcome, RequestRecord, build_row, cache_verdict, error_label
from tokenpak_mitm.core.dialects import dialect
from tokenpak_mitm.core.observe.tracker import Extract
from tokenpak_mitm.core.observe.usage import ExtraIteration, Usage
from tokenpak_mitm.core.plan.cache_facts import TTL_SECONDS
from tokenpak_mitm.core.routes import Route
from tokenpak_mitm.core.row import TelemetryRow
from tokenpak_mitm.core.wire import by_fields

__all__ = ["IDENTITY_HEADERS", "MINIMAL_OUTCOME", "SESSION_COLUMNS", "Accountant", "Begin", "ConsoleSwitch", "Finished", "OtlpSwitch", "SessionFacts", "Sink",
           "blind_until", "console_line", "finished_from_json", "finished_to_json", "identity_headers", "minimal_row"]

# The only request headers the session tracker reads (session_id.identify).
IDENTITY_HEADERS = (SESSION_HEADER, PROJECT_HEADER, CLAUDE_CODE_SESSION_HEADER)


def diagnosed(dialect_name: str) -> bool:
    """Misses are diagnosed where a cache family's rules apply (Gemini: sessions only)."""
    d = dialect(dialect_name)
    return d is not None and d.cache is not None


MAX_OPEN = 20_000  # requests begun and not yet finished that an Accountant keeps (oldest dropped)
MINIMAL_OUTCOME = Outcome("proxy_error", "absent", "telemetry_error", None)  # as `minimal_row` says
# The row's columns the session tracker fills (`Accountant.columns`); a replay reuses the live run's.
SESSION_COLUMNS = ("session_id", "session_source", "project", "turn", "cache_miss_reason", "miss_section", "miss_block",
                   "miss_change", "miss_expected_tokens", "cache_warm_until", "miss_cost_usd")


@by_fields
@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What the session tracker reads of a request as it went upstream (markers included)."""

    dialect: str
    headers: Mapping[str, str]  # IDENTITY_HEADERS that are present, lower-cased names
    scope: str  # an opaque credential scope (the addon's salted hash of the key), never the key
    started_at: float
    body: bytes | None = None  # identity-encoded body as sent; None: not read (sessions then come from headers)


@by_fields
@dataclass(frozen=True, slots=True)
class Finished:
    """A request as it ended: its record (with what other addons noted on it, e.g. the live
    checker's ``conformance_violations``), how it ended (the error text already redacted; None:
    it could not be read, the row is the minimal one), and when. ``session``: the columns a
    replayed flow's live run stashed, used instead of this tracker's (so the rows match)."""

    record: RequestRecord
    ended: Outcome | None
    response_started: float | None  # when the response began (cache writes readable from then)
    ended_at: float
    session: Mapping[str, Any] | None = None


class Begin(NamedTuple):
    """A request went upstream (the message to an ``Accountant`` in another process)."""

    key: str
    facts: SessionFacts


class ConsoleSwitch(NamedTuple):
    """Print one line per accounted request, or not (the message to the writer process)."""

    on: bool


class OtlpSwitch(NamedTuple):
    """Export every written row to this OTLP/HTTP collector, or to none (the message to the writer process)."""

    url: str | None


class _Lookup:
    """Case-insensitive lookup over the few identity headers (what `identify` expects)."""

    __slots__ = ("_map",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._map = headers

    def get(self, name: str, default: None = None, /) -> str | None:
        return self._map.get(name.lower(), default)


def identity_headers(get: Any) -> dict[str, str]:
    """The identity headers of a request, from any case-insensitive ``get``."""
    found: dict[str, str] = {}
    for name in IDENTITY_HEADERS:
        value = get(name)
        if value is not None:
            found[name] = value
    return found


class Accountant:
    """A proxy's session tracker and the rule that turns a finished request into its row.

    ``begin``/``columns``/``row`` are the steps; ``open``/``close`` do them for requests named by
    key (the writer process, which receives the two halves as messages). Never raises from
    ``close``: a row that cannot be built is replaced by the minimal row, so the request is counted.
    """

    def __init__(self, sessions: SessionTracker | None = None, max_open: int = MAX_OPEN) -> None:
        self.sessions = sessions if sessions is not None else SessionTracker()
        self._open: OrderedDict[str, Ticket] = OrderedDict()
        self._max_open = max_open
        self.failures = 0  # rows that fell back to the minimal row

    # -- the steps ------------------------------------------------------------------------------
    def begin(self, facts: SessionFacts, parsed: object = None, shape: Shape | None = None) -> Ticket:
        """Decide the request's session and turn; parses ``facts.body`` unless ``parsed``/``shape`` are given."""
        if facts.body is not None and parsed is None and shape is None:
            parsed, shape = parse_shape(facts.body, facts.dialect)
        hint = identify(_Lookup(facts.headers), parsed, facts.dialect, facts.scope)
        return self.sessions.begin(hint, shape, facts.started_at)

    def columns(self, ticket: Ticket, rec: RequestRecord, ended: Outcome, response_started: float | None,
                now: float | None = None) -> dict[str, Any]:
        """The row's session, turn, miss diagnosis and warm-until columns."""
        usage = rec.extract.usage
        facts = None
        if (diagnosed(rec.route.dialect) and ended.state == "completed"
                and ended.source == "final" and usage.input_tokens is not None):
            facts = UsageFacts(usage.input_tokens, usage.cache_read_tokens or 0, usage.cache_write_tokens or 0,
                               response_started=response_started)
        result = self.sessions.finish(ticket, facts, now)
        self.sessions.note_response(ticket, rec.extract.response_id)
        verdict = reconcile(result.verdict, rec.extract.provider_miss_reason)  # the provider's verdict wins for the reason
        if verdict is not result.verdict:
            result = replace(result, verdict=verdict)
        lost = miss_cost_usd(rec.route.provider, ended.model, usage, verdict.expected_tokens) if verdict else None
        return {**result.columns(), "miss_cost_usd": lost}

    # -- by key: the two halves of a request, as messages ---------------------------------------
    def open(self, key: str, facts: SessionFacts, parsed: object = None, shape: Shape | None = None) -> None:
        self._open[key] = self.begin(facts, parsed, shape)
        while len(self._open) > self._max_open:
            self._open.popitem(last=False)  # a request whose end never came (its proxy died)

    def close(self, done: Finished) -> TelemetryRow:
        """The request's one row (see `account`)."""
        return self.account(done)[0]

    def account(self, done: Finished) -> tuple[TelemetryRow, dict[str, Any] | None]:
        """The request's one row and its session columns (None: it had no session). The only place
        a row is built: ``build_row``, or the minimal row when that fails or the outcome could not
        be read. Never raises."""
        rec = done.record
        ticket = self._open.pop(rec.request_key, None)
        columns: dict[str, Any] = {}
        if ticket is not None:
            try:
                columns = self.columns(ticket, rec, done.ended or MINIMAL_OUTCOME, done.response_started, done.ended_at)
            except Exception:  # noqa: BLE001 - the row still goes, without its session columns
                self.failures += 1
            if done.session is not None:  # a replay: the live run's session and verdict, so the rows match
                columns = {k: done.session.get(k) for k in columns}
        session = columns if ticket is not None else None
        if done.ended is not None:
            try:
                return build_row(rec, done.ended, columns), session
            except Exception:  # noqa: BLE001 - the request is still counted
                self.failures += 1
        return minimal_row(rec, columns), session


class Sink(Protocol):
    """Where the proxy hands its requests' accounting: chosen once, when the store is configured.

    The store's writer process (``store_writer.StoreProcess``: the usual one) or the proxy itself
    (``store_writer.LocalSink``: a frozen mitmdump, tests, and proxies that save or record flows,
    whose files must carry the session columns their replays reuse). Either way the one
    ``Accountant.close`` builds the row.
    """

    db: str  # the database: a SQLite file or a PostgreSQL URL (which may hold a password: never shown)
    name: str  # the database as it may be shown
    path: Path  # the local file (the database, or what spill files are named after)

    def start(self) -> None: ...

    def begin(self, key: str, facts: SessionFacts) -> None:
        """A request went upstream (what the session tracker reads of it)."""

    def finish(self, done: Finished, accounted: Callable[[Mapping[str, Any] | None], None]) -> None:
        """A request ended. Calls ``accounted`` once it is accounted (maybe later: a ``LocalSink``
        waits for the session of a body its worker still reads): with its session columns when its
        row was built in this process, else None."""

    def set_console(self, on: bool) -> None: ...

    def set_otlp(self, url: str | None) -> None: ...

    def set_metrics(self, address: str | None) -> None:
        """Serve Prometheus metrics of the rows written on ``host:port`` (None: stop)."""

    def close(self) -> None: ...


def finished_to_json(done: Finished) -> dict[str, Any]:
    """A finished request as JSON values (what a spill file holds for it; see `finished_from_json`)."""
    return {"record": _plain(done.record), "ended": None if done.ended is None else list(done.ended),
            "response_started": done.response_started, "ended_at": done.ended_at,
            "session": None if done.session is None else dict(done.session)}


def _plain(value: Any) -> Any:
    """Dataclasses as dicts of their fields, tuples as lists; other values as they are (JSON's
    ``default=str`` takes any odd one). Not ``dataclasses.asdict``: it copies, and an odd value
    may not copy."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _known[T](cls: type[T], values: Mapping[str, Any], **given: Any) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in names and k not in given}, **given)


def finished_from_json(data: Mapping[str, Any]) -> Finished:
    """The ``Finished`` that `finished_to_json` wrote (fields it does not know are ignored; raises on a damaged one)."""
    rec = data["record"]
    x = rec["extract"]
    extras = tuple(ExtraIteration(e["kind"], e.get("model"), _known(Usage, e.get("usage") or {})) for e in x.get("extras") or ())
    extract = _known(Extract, x, usage=_known(Usage, x.get("usage") or {}), extras=extras)
    record = _known(RequestRecord, rec, route=_known(Route, rec["route"]), extract=extract,
                    known_secrets=tuple(rec.get("known_secrets") or ()))
    ended = data.get("ended")
    session = data.get("session")
    return Finished(record, None if ended is None else Outcome(*ended), data.get("response_started"), float(data["ended_at"]),
                    session if isinstance(session, dict) else None)


def blind_until(last: float | None, now: float) -> float | None:
    """Until when a new session tracker cannot know what an earlier run cached (that run's last
    request + the longest TTL); None when that moment has passed or there was no earlier request."""
    if last is None:
        return None
    until = min(last, now) + TTL_SECONDS["1h"]  # the longest Anthropic TTL (the diagnosis is Anthropic's)
    return until if until > now else None


def minimal_row(rec: RequestRecord, session: Mapping[str, Any] | None = None) -> TelemetryRow:
    """The row that is still written when building the real one failed: the request is counted
    (with its session columns, when the session tracker could give them)."""
    return TelemetryRow(
        request_key=rec.request_key, started_at=rec.started_at, provider=rec.route.provider, api=rec.route.api,
        route_class=rec.route_class, host=rec.host, path=rec.path, stream=int(rec.stream),
        billable=int(rec.route.billable), status_code=rec.status_code, terminal_state="proxy_error",
        usage_source="absent", error="telemetry_error", proxy_version=__version__, **(session or {}),
    )


def console_line(row: TelemetryRow) -> str:
    """The one concise line per request the proxy prints (``tokenpak_console``)."""

    def n(v: int | None) -> str:
        return "-" if v is None else str(v)

    cost = row.cost_usd
    ttft, dur = row.ttft_ms, row.duration_ms
    err = error_label(row)
    timing = f"ttft={ttft:.0f}ms" if ttft is not None else f"dur={dur:.0f}ms" if dur is not None else "ttft=-"
    reason = row.cache_miss_reason
    miss = ""
    if reason:
        lost = row.miss_cost_usd
        miss = f" miss={reason}" + (f"(+${lost:.6f})" if lost else "")
    return (
        f"tokenpak: {row.provider}/{row.api} {row.model or '?'} "
        f"in={n(row.input_tokens)} cache_read={n(row.cache_read_tokens)} cache_write={n(row.cache_write_tokens)} "
        f"out={n(row.output_tokens)} cache={cache_verdict(row)} "
        f"cost={'unknown' if cost is None else f'${cost:.6f}'} {timing} "
        f"{row.terminal_state}{f' {err}' if err else ''}{miss}"
    )

