"""The telemetry row: one frozen dataclass that *is* the row, and the vocabularies it uses.

Everything that writes or reads a row goes through :class:`TelemetryRow`: ``telemetry.build_row``
builds it, the SQLite store derives its columns and migrations from its fields, the OpenTelemetry
mapping reads its attributes, and the report and ``tokenpak tail`` turn stored rows back into it.
``tests/test_row.py`` fails when any of them drifts from it.

Adding a column is one change here (a field declared with :func:`column`, ``since`` = the new
schema version) plus one line in ``store.schema.migrations`` (``add_columns(N, dialect)``); older databases then
upgrade in place.

A misspelt name cannot silently become NULL: the constructor rejects unknown keywords,
:meth:`TelemetryRow.from_mapping` rejects unknown keys, and ``row["x"]`` / ``row.get("x")`` raise
``KeyError`` for a name that is not a field (a plain dict would answer ``None``).

Pure module: no I/O, no mitmproxy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, get_args

__all__ = [
    "TelemetryRow", "Column", "COLUMNS", "FIELD_NAMES", "SCHEMA_VERSION", "column",
    "TerminalState", "TERMINAL_STATES", "UsageSource", "USAGE_SOURCES", "CacheOrigin", "CACHE_ORIGINS",
    "CacheDecision", "CACHE_DECISIONS", "CacheVerdict", "CACHE_VERDICTS", "ClosedBy", "RouteClass", "ROUTE_CLASSES",
    "SessionSource", "SESSION_SOURCES", "MissReason", "MISS_REASONS", "MissChange", "MISS_CHANGES", "PROVIDER_VERDICTS",
]

# -- vocabularies -------------------------------------------------------------------------------
# Who ended the request (one per row).
# proxy_shutdown: a stream cut because the proxy itself was stopping (SIGTERM/SIGINT), not by a
# peer. upstream_unreachable: no connection to the upstream could be made (refused, blocked, name or
# TLS failure); the client got the proxy's 502. terminal_state is TEXT without a constraint, so
# older databases take both with no schema change.
TerminalState = Literal["completed", "error_response", "stream_error", "client_disconnected", "upstream_disconnected", "proxy_error", "proxy_shutdown",
                        "upstream_unreachable"]
TERMINAL_STATES: Final[tuple[TerminalState, ...]] = get_args(TerminalState)
# Where the token counts came from: the provider's final figure, a partial one (cut short), none.
UsageSource = Literal["final", "partial", "absent"]
USAGE_SOURCES: Final[tuple[UsageSource, ...]] = get_args(UsageSource)
# Who placed the cache markers the provider may have read or written.
CacheOrigin = Literal["proxy", "client", "unknown", "none"]
CACHE_ORIGINS: Final[tuple[CacheOrigin, ...]] = get_args(CacheOrigin)
# The marker planner's verdict for one request (descriptions: ``cache_planner.DECISIONS``), plus
# ``request_streamed`` (the addon never saw the body: mitmproxy streamed it upstream) and
# ``openai_cache``'s ``not_supported`` (an OpenAI model before GPT-5.6), which the addon stores as
# NULL: no planner applies, as for Gemini.
CacheDecision = Literal[
    "inserted", "stood_down", "below_minimum", "off", "not_json", "not_messages", "no_eligible_block",
    "encoded_unsupported", "too_large", "error", "request_streamed", "not_worth",
    "not_supported",
]
CACHE_DECISIONS: Final[tuple[CacheDecision, ...]] = get_args(CacheDecision)
# One word per request for console lines and ``tokenpak tail`` (derived, not stored).
CacheVerdict = Literal["hit", "write", "miss", "none"]
CACHE_VERDICTS: Final[tuple[CacheVerdict, ...]] = get_args(CacheVerdict)
# Whose connection was already closed when a flow failed (not stored; decides the terminal state).
ClosedBy = Literal["client", "server"]
RouteClass = Literal["claude-code", "sdk", "other"]
ROUTE_CLASSES: Final[tuple[RouteClass, ...]] = get_args(RouteClass)
# Where a row's session id came from (session_id.py, sessions.py).
SessionSource = Literal["header", "claude-code", "prompt_cache_key", "conversation", "previous_response", "lineage", "new"]
SESSION_SOURCES: Final[tuple[SessionSource, ...]] = get_args(SessionSource)
# Why a cache read that was possible did not happen (cache_miss.py; NULL: no miss).
MissReason = Literal["cold", "ttl_expired", "prefix_changed", "below_minimum", "lookback_exceeded", "not_marked", "provider_evicted", "unknown"]
MISS_REASONS: Final[tuple[MissReason, ...]] = get_args(MissReason)
# The provider's own verdicts the dialects know (provider_miss_reason; docs/sessions.md): Anthropic's
# cache_miss_reason types and "none", OpenAI's prompt_cache_diagnostics types. A newer word is stored
# as sent; bounded label sets (metrics) count it as "other".
PROVIDER_VERDICTS: Final[tuple[str, ...]] = (
    "model_changed", "system_changed", "tools_changed", "messages_changed", "previous_message_not_found", "unavailable", "none",
    "cache_hit", "cache_miss", "comparison_response_not_found",
)
# What changed between a conversation's previous request and this one, for prefix_changed.
MissChange = Literal["tools", "system", "volatile", "history", "model_params"]
MISS_CHANGES: Final[tuple[MissChange, ...]] = get_args(MissChange)


@dataclass(frozen=True, slots=True)
class Column:
    """One SQLite column: the field's name, its SQL type and the schema version that added it."""

    name: str
    sql: str
    since: int


def column(sql: str, *, since: int = 1) -> Any:
    """Declare a row field stored in a column of SQL type ``sql``, added by schema version ``since``."""
    return field(default=None, metadata={"sql": sql, "since": since})


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryRow(Mapping[str, Any]):
    """Exactly one per LLM request. Field order is column order; ``None`` means not known.

    Read it by attribute (``row.input_tokens``, checked by mypy). It is also a read-only
    ``Mapping`` of every field, for code that picks a column by name (grouping, JSON).
    """

    request_key: str = field(metadata={"sql": "TEXT NOT NULL UNIQUE", "since": 1})  # mitmproxy's flow id
    started_at: float = field(metadata={"sql": "REAL NOT NULL", "since": 1})
    provider: str | None = column("TEXT")
    api: str | None = column("TEXT")
    route_class: str | None = column("TEXT")
    host: str | None = column("TEXT")
    path: str | None = column("TEXT")  # query secrets redacted
    model: str | None = column("TEXT")
    stream: int | None = column("INTEGER")  # 0/1
    billable: int | None = column("INTEGER")  # 0/1
    status_code: int | None = column("INTEGER")
    terminal_state: TerminalState | None = column("TEXT")
    stop_reason: str | None = column("TEXT")
    # Exclusive buckets (see usage.Usage): input is fresh input only.
    input_tokens: int | None = column("INTEGER")
    cache_read_tokens: int | None = column("INTEGER")
    cache_write_tokens: int | None = column("INTEGER")
    cache_write_5m_tokens: int | None = column("INTEGER")
    cache_write_1h_tokens: int | None = column("INTEGER")
    output_tokens: int | None = column("INTEGER")
    reasoning_tokens: int | None = column("INTEGER")
    web_search_requests: int | None = column("INTEGER")
    usage_source: UsageSource | None = column("TEXT")
    ttfb_ms: float | None = column("REAL")
    ttft_ms: float | None = column("REAL")
    duration_ms: float | None = column("REAL")
    frames: int | None = column("INTEGER")
    response_bytes: int | None = column("INTEGER")
    response_id: str | None = column("TEXT")
    upstream_request_id: str | None = column("TEXT")
    error: str | None = column("TEXT")  # redacted
    cache_origin: CacheOrigin | None = column("TEXT")
    markers_inserted: int | None = column("INTEGER")
    client_markers: int | None = column("INTEGER")
    cache_decision: CacheDecision | None = column("TEXT")
    prefix_tokens_est: int | None = column("INTEGER")
    cost_usd: float | None = column("REAL")
    savings_usd: float | None = column("REAL")
    price_version: str | None = column("TEXT")
    conformance_violations: int | None = column("INTEGER")
    proxy_version: str | None = column("TEXT")
    # v2: the proxy's own request-side time (client's last request byte -> request sent upstream).
    proxy_request_ms: float | None = column("REAL", since=2)
    # v3: what changes the price (issue 18; docs/dialects.md "Pricing"). The modality and iteration
    # columns split buckets above and are never added to them.
    service_tier: str | None = column("TEXT", since=3)  # as the provider reported it, lower-case
    speed: str | None = column("TEXT", since=3)  # Anthropic fast mode: "fast"
    inference_geo: str | None = column("TEXT", since=3)  # Anthropic pinned region ("us": x1.1 on 4.6+)
    input_audio_tokens: int | None = column("INTEGER", since=3)  # part of input_tokens
    input_image_tokens: int | None = column("INTEGER", since=3)  # part of input_tokens
    input_video_tokens: int | None = column("INTEGER", since=3)  # part of input_tokens
    cache_read_audio_tokens: int | None = column("INTEGER", since=3)  # part of cache_read_tokens
    cache_read_image_tokens: int | None = column("INTEGER", since=3)  # part of cache_read_tokens
    cache_read_video_tokens: int | None = column("INTEGER", since=3)  # part of cache_read_tokens
    extra_iterations: int | None = column("INTEGER", since=3)  # billed iterations outside the top-level usage
    extra_input_tokens: int | None = column("INTEGER", since=3)  # their input (fresh + cache), part of the buckets
    extra_output_tokens: int | None = column("INTEGER", since=3)  # their output, part of output_tokens
    price_multiplier: float | None = column("REAL", since=3)  # price_multipliers' factor on token charges
    unpriced_reason: str | None = column("TEXT", since=3)  # pricing.UNPRICED_REASONS, when cost_usd is NULL
    # v4: why the cache planner placed each marker and skipped each candidate: a JSON list of
    # {"at", "why", "tokens", "ttl" | "skipped": true, "detail"?} (reasons: learning_planner.REASONS).
    cache_reasons: str | None = column("TEXT", since=4)
    # v6: sessions and cache-miss diagnosis (docs/sessions.md): which conversation and turn the
    # request is, why its cache missed, where the prompt changed, what the miss cost, and until
    # when the session's cache is warm (a Unix time).
    session_id: str | None = column("TEXT", since=6)
    session_source: SessionSource | None = column("TEXT", since=6)
    project: str | None = column("TEXT", since=6)
    turn: int | None = column("INTEGER", since=6)
    cache_miss_reason: MissReason | None = column("TEXT", since=6)
    miss_section: str | None = column("TEXT", since=6)  # tools | system | messages
    miss_block: int | None = column("INTEGER", since=6)  # tool / system block index, or message number
    miss_change: MissChange | None = column("TEXT", since=6)
    miss_expected_tokens: int | None = column("INTEGER", since=6)
    miss_cost_usd: float | None = column("REAL", since=6)
    cache_warm_until: float | None = column("REAL", since=6)
    # v7: the provider's own verdict when the response carried one (Anthropic cache diagnostics:
    # dialects/anthropic.PROVIDER_MISS_REASONS; docs/sessions.md "The provider's verdict").
    provider_miss_reason: str | None = column("TEXT", since=7)
    provider_missed_tokens: int | None = column("INTEGER", since=7)

    # -- construction from stored forms -----------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TelemetryRow:
        """A row from a dict of field values; an unknown key is an error, never a silent NULL."""
        unknown = [k for k in values if k not in _FIELD_SET]
        if unknown:
            raise ValueError(f"not telemetry row fields: {', '.join(sorted(map(str, unknown)))}")
        missing = [k for k in _REQUIRED if k not in values]
        if missing:
            raise ValueError(f"telemetry row needs {', '.join(missing)}")
        return cls(**values)

    @classmethod
    def from_stored(cls, values: Mapping[str, Any]) -> TelemetryRow:
        """A row read back from SQLite or a spill file (readers only).

        Keys that are not fields (the table's ``id``, columns of a newer schema) are left out, and
        missing fields (an older schema) are ``None``.
        """
        keys = values.keys()
        kwargs = {k: values[k] for k in keys if k in _FIELD_SET}
        kwargs.setdefault("request_key", "")
        kwargs.setdefault("started_at", 0.0)
        return cls(**kwargs)

    # -- read access by name (for the report and callers that group by a column) ------------------
    def __getitem__(self, name: str) -> Any:
        if name not in _FIELD_SET:
            raise KeyError(f"not a telemetry row field: {name!r}")
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        """``row[name]``: every field is always present, and an unknown name raises ``KeyError``."""
        return self[name]

    def __iter__(self) -> Iterator[str]:
        return iter(FIELD_NAMES)

    def __len__(self) -> int:
        return len(FIELD_NAMES)

    def __contains__(self, name: object) -> bool:
        return name in _FIELD_SET

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELD_NAMES}


def _columns() -> tuple[Column, ...]:
    out = []
    for f in fields(TelemetryRow):
        if "sql" not in f.metadata:
            raise TypeError(f"TelemetryRow.{f.name} is not declared with column()")
        out.append(Column(f.name, f.metadata["sql"], int(f.metadata["since"])))
    return tuple(out)


COLUMNS: Final[tuple[Column, ...]] = _columns()
FIELD_NAMES: Final[tuple[str, ...]] = tuple(c.name for c in COLUMNS)
SCHEMA_VERSION: Final[int] = max(c.since for c in COLUMNS)
_FIELD_SET: Final[frozenset[str]] = frozenset(FIELD_NAMES)
_REQUIRED: Final[tuple[str, ...]] = ("request_key", "started_at")
