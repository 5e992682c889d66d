"""The SQL behind ``tokenpak report`` and ``tokenpak tail``: filters, groupings, aggregation.

SQLite does the aggregating, so a report over a million rows moves a few thousand aggregate rows
into Python, not a million row dicts: memory does not grow with the row count. Three tables of
data keep it easy to extend without touching the query code:

* ``COLUMN_FILTERS``: one line adds a ``--name VALUE`` filter on a column (repeatable: any of the
  values; ``*`` and ``?`` are globs). ``Filters`` holds their values by name.
* ``GROUPINGS``: one line adds a ``--by`` choice (a SQL expression of the row).
* ``LATENCY_COLUMNS``: the latency figures reported as percentiles.

Latency percentiles are exact to three significant digits: each value is first rounded to three
significant digits (``latency_bucket``; 0.001 ms below 1 ms, 1 ms from 100 ms to 1 s, 10 ms up
to 10 s ...), SQLite counts rows per rounded value, and the percentile is read off those counts.
Rounding is monotonic, so the result is the rounded value of the exact percentile
(``ordered[min(n - 1, int(q * n))]``), and the counts are bounded by the number of distinct rounded
values, not by the rows.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ColumnFilter", "COLUMN_FILTERS", "Filters", "GROUPINGS", "PERIODS", "LATENCY_COLUMNS", "PERCENTILES", "where",
    "latency_bucket", "percentiles", "CubeRow", "cube", "histograms", "UnitPrices",
]

UnitPrices = Callable[[str | None, str | None], Mapping[str, float] | None]


@dataclass(frozen=True, slots=True)
class ColumnFilter:
    name: str  # the option is --NAME
    column: str
    help: str


COLUMN_FILTERS: tuple[ColumnFilter, ...] = (
    ColumnFilter("model", "model", "only this model (repeat for several; * and ? are globs, e.g. 'claude-*')"),
    ColumnFilter("provider", "provider", "only this provider: anthropic, openai, gemini"),
    ColumnFilter("route", "route_class", "only this route class: claude-code, sdk, other"),
    ColumnFilter("state", "terminal_state", "only this terminal state, e.g. completed, error_response, client_disconnected"),
)
_FILTER_COLUMNS = {f.name: f.column for f in COLUMN_FILTERS}


@dataclass(frozen=True, slots=True)
class Filters:
    """What rows a report or tail covers. ``columns`` maps a COLUMN_FILTERS name to accepted values."""

    since_ts: float | None = None
    until_ts: float | None = None
    errors: bool = False  # any terminal state but completed
    columns: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def of(cls, since_ts: float | None = None, until_ts: float | None = None, errors: bool = False,
           **columns: Iterable[str] | None) -> Filters:
        unknown = set(columns) - set(_FILTER_COLUMNS)
        if unknown:
            raise ValueError(f"unknown filter {sorted(unknown)[0]!r}")
        cols = tuple((k, tuple(v)) for k, v in columns.items() if v)
        return cls(since_ts=since_ts, until_ts=until_ts, errors=errors, columns=cols)

    def describe(self) -> str:
        parts = [f"{k}={','.join(v)}" for k, v in self.columns]
        if self.errors:
            parts.append("errors only")
        return " ".join(parts)


def where(filters: Filters, available: Iterable[str] | None = None) -> tuple[str, list[Any]]:
    """``WHERE ...`` (or "") and its parameters. ``available``: the table's columns, when known."""
    clauses: list[str] = []
    params: list[Any] = []
    if filters.since_ts is not None:
        clauses.append("started_at >= ?")
        params.append(filters.since_ts)
    if filters.until_ts is not None:
        clauses.append("started_at < ?")
        params.append(filters.until_ts)
    if filters.errors:
        clauses.append("COALESCE(terminal_state, '') != 'completed'")
    have = set(available) if available is not None else None
    for name, values in filters.columns:
        column = _FILTER_COLUMNS[name]
        if have is not None and column not in have:
            clauses.append("0")  # the database predates the column: nothing can match
            continue
        ors = []
        for v in values:
            ors.append(f"{column} GLOB ?" if any(c in v for c in "*?[") else f"{column} = ?")
            params.append(v)
        clauses.append("(" + " OR ".join(ors) + ")")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


# -- groupings ----------------------------------------------------------------------------------
# Local calendar days and hours: users read reports in their own time zone.
PERIODS: dict[str, str] = {
    "day": "date(started_at, 'unixepoch', 'localtime')",
    "hour": "strftime('%Y-%m-%d %H:00', started_at, 'unixepoch', 'localtime')",
}
GROUPINGS: dict[str, str] = {
    "day": PERIODS["day"],
    "model": "COALESCE(model, '(unknown)')",
    "route": "COALESCE(route_class, '(unknown)')",
    "provider": "COALESCE(provider, '(unknown)')",
}

# -- latency ------------------------------------------------------------------------------------
LATENCY_COLUMNS: dict[str, str] = {"ttft": "ttft_ms", "duration": "duration_ms", "proxy": "proxy_request_ms"}
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
# (upper bound, multiplier, divisor): values below the bound become round(v * m / d) * d / m. Only
# exact integer constants, so Python and SQLite compute bit-identical floats.
_STEPS: tuple[tuple[float, int, int], ...] = (
    (1, 1000, 1), (10, 100, 1), (100, 10, 1), (1000, 1, 1), (10_000, 1, 10), (100_000, 1, 100), (math.inf, 1, 1000),
)


def latency_bucket(v: float) -> float:
    """``v`` rounded to three significant digits, with exactly the float operations the SQL uses."""
    _, m, d = next(step for step in _STEPS if v < step[0])
    if m > 1:
        return int(v * m + 0.5) / m
    return float(int(v / d + 0.5) * d)


def _bucket_sql(col: str) -> str:
    cases = []
    for bound, m, d in _STEPS:
        expr = f"CAST({col} * {m} + 0.5 AS INTEGER) / {m}.0" if m > 1 else f"CAST(CAST({col} / {d} + 0.5 AS INTEGER) * {d} AS REAL)"
        cases.append(f"WHEN {col} < {bound} THEN {expr}" if bound != math.inf else f"ELSE {expr}")
    return f"(CASE {' '.join(cases)} END)"


def percentiles(hist: Mapping[float, int]) -> dict[str, float] | None:
    """p50/p95/p99 (``ordered[min(n-1, int(q*n))]``) of a value -> count histogram."""
    n = sum(hist.values())
    if not n:
        return None
    out: dict[str, float] = {}
    values = sorted(hist.items())
    for name, q in PERCENTILES:
        rank = min(n - 1, int(q * n))
        seen = 0
        for v, c in values:
            seen += c
            if seen > rank:
                out[name] = v
                break
    return out


# -- aggregation --------------------------------------------------------------------------------
BUCKET_PARTS = ("input", "cache_read", "cache_write", "output", "other")
ORIGIN_SUMS = ("proxy", "client", "unknown", "none")


@dataclass(slots=True)
class CubeRow:
    """Sums over the rows sharing (group, period, model, terminal state, usage source, cache decision)."""

    group: str
    period: str
    model: str
    terminal_state: str
    usage_source: str
    cache_decision: str | None
    requests: int
    with_usage: int
    tokens: dict[str, int]
    priced: int
    unpriced: int
    cost: float
    cost_by_bucket: dict[str, float]
    savings: dict[str, float]
    markers_inserted: int
    proxy_max: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def _units_cte(conn: sqlite3.Connection, unit_prices: UnitPrices) -> tuple[str, list[Any]]:
    """A ``units`` CTE of per-token prices for every (provider, model) in the table."""
    rows: list[Any] = []
    for provider, model in conn.execute("SELECT DISTINCT provider, model FROM requests"):
        u = unit_prices(provider, model)
        if u:
            rows.append((provider, model, u["input"], u["cache_read"], u["cache_write"], u.get("cache_write_1h", u["cache_write"]), u["output"]))
    if not rows:
        return "units(u_provider, u_model, u_in, u_cr, u_cw, u_cw1h, u_out) AS (SELECT NULL, NULL, 0, 0, 0, 0, 0 WHERE 0)", []
    values = ", ".join("(?, ?, ?, ?, ?, ?, ?)" for _ in rows)
    return f"units(u_provider, u_model, u_in, u_cr, u_cw, u_cw1h, u_out) AS (VALUES {values})", [v for r in rows for v in r]


def table_columns(conn: sqlite3.Connection) -> list[str]:
    return [r[1] for r in conn.execute("PRAGMA table_info(requests)")]


# A request the provider rejected (4xx) and that reported no usage is not billed: zero cost, priced.
_UNBILLED = "(cost_usd IS NULL AND status_code BETWEEN 400 AND 499 AND COALESCE(usage_source, 'absent') = 'absent')"
_HAS_USAGE = "(COALESCE(usage_source, 'absent') != 'absent')"


def cube(conn: sqlite3.Connection, filters: Filters, group_sql: str, period_sql: str, unit_prices: UnitPrices) -> list[CubeRow]:
    """One pass over the filtered rows: sums per (group, period, state, usage source, decision).

    The per-bucket cost split (each row's recorded cost apportioned by the current unit prices of
    its buckets, ``report.split_cost``) is computed per row inside SQLite.
    """
    units, unit_params = _units_cte(conn, unit_prices)
    cond, params = where(filters, table_columns(conn))
    tok = {b: f"CASE WHEN {_HAS_USAGE} THEN COALESCE({b}_tokens, 0) ELSE 0 END" for b in ("input", "cache_read", "cache_write", "output", "reasoning")}
    w1h = "MIN(COALESCE(cache_write_1h_tokens, 0), COALESCE(cache_write_tokens, 0))"
    inner = f"""
        SELECT {group_sql} AS g, {period_sql} AS p, COALESCE(model, '(unknown)') AS m, COALESCE(terminal_state, 'unknown') AS st,
               COALESCE(usage_source, 'absent') AS src, cache_decision AS dec,
               {_HAS_USAGE} AS has_usage, {tok['input']} AS t_in, {tok['cache_read']} AS t_cr, {tok['cache_write']} AS t_cw,
               {tok['output']} AS t_out, {tok['reasoning']} AS t_rs,
               (cost_usd IS NOT NULL OR {_UNBILLED}) AS priced,
               (cost_usd IS NULL AND COALESCE(billable, 1) != 0 AND NOT {_UNBILLED}) AS unpriced,
               cost_usd AS c, savings_usd AS sv,
               CASE WHEN cache_origin IN ('proxy', 'client', 'none') THEN cache_origin ELSE 'unknown' END AS origin,
               COALESCE(markers_inserted, 0) AS mk, proxy_request_ms AS pm,
               CASE WHEN {_HAS_USAGE} AND u.u_in IS NOT NULL THEN COALESCE(input_tokens, 0) * u.u_in ELSE 0 END AS w_in,
               CASE WHEN {_HAS_USAGE} AND u.u_in IS NOT NULL THEN COALESCE(cache_read_tokens, 0) * u.u_cr ELSE 0 END AS w_cr,
               CASE WHEN {_HAS_USAGE} AND u.u_in IS NOT NULL
                    THEN (COALESCE(cache_write_tokens, 0) - {w1h}) * u.u_cw + {w1h} * u.u_cw1h ELSE 0 END AS w_cw,
               CASE WHEN {_HAS_USAGE} AND u.u_in IS NOT NULL THEN COALESCE(output_tokens, 0) * u.u_out ELSE 0 END AS w_out
        FROM requests LEFT JOIN units u ON u.u_provider IS requests.provider AND u.u_model IS requests.model{cond}"""
    sql = f"""
        WITH {units}
        SELECT g, p, m, st, src, dec, COUNT(*), SUM(has_usage), SUM(t_in), SUM(t_cr), SUM(t_cw), SUM(t_out), SUM(t_rs),
               SUM(priced), SUM(unpriced), TOTAL(c),
               TOTAL(CASE WHEN w_in + w_cr + w_cw + w_out > 0 THEN c * w_in / (w_in + w_cr + w_cw + w_out) END),
               TOTAL(CASE WHEN w_in + w_cr + w_cw + w_out > 0 THEN c * w_cr / (w_in + w_cr + w_cw + w_out) END),
               TOTAL(CASE WHEN w_in + w_cr + w_cw + w_out > 0 THEN c * w_cw / (w_in + w_cr + w_cw + w_out) END),
               TOTAL(CASE WHEN w_in + w_cr + w_cw + w_out > 0 THEN c * w_out / (w_in + w_cr + w_cw + w_out) END),
               TOTAL(CASE WHEN w_in + w_cr + w_cw + w_out > 0 THEN 0 ELSE c END),
               {", ".join(f"TOTAL(CASE WHEN origin = '{o}' THEN sv END)" for o in ORIGIN_SUMS)},
               SUM(mk), MAX(pm)
        FROM ({inner})
        GROUP BY g, p, m, st, src, dec"""
    out = []
    for r in conn.execute(sql, [*unit_params, *params]):
        g, p, m, st, src, dec, n, wu, t_in, t_cr, t_cw, t_out, t_rs, priced, unpriced, cost, *rest = r
        parts, savings, (mk, pmax) = rest[:5], rest[5:9], rest[9:]
        out.append(CubeRow(
            group=str(g), period=str(p), model=str(m), terminal_state=st, usage_source=src, cache_decision=dec, requests=n, with_usage=wu or 0,
            tokens={"input": t_in or 0, "cache_read": t_cr or 0, "cache_write": t_cw or 0, "output": t_out or 0, "reasoning": t_rs or 0},
            priced=priced or 0, unpriced=unpriced or 0, cost=cost, cost_by_bucket={b: v for b, v in zip(BUCKET_PARTS, parts, strict=True) if v},
            savings=dict(zip(ORIGIN_SUMS, savings, strict=True)), markers_inserted=mk or 0, proxy_max=pmax,
        ))
    return out


def histograms(conn: sqlite3.Connection, filters: Filters, group_sql: str, period_sql: str,
               metrics: Sequence[str] = ("ttft", "duration", "proxy")) -> Iterable[tuple[str, str, str, float, int]]:
    """(metric, group, period, rounded value, count) for each latency metric."""
    cond, params = where(filters, table_columns(conn))
    for metric in metrics:
        col = LATENCY_COLUMNS[metric]
        extra = f"{' AND' if cond else ' WHERE'} {col} IS NOT NULL"
        sql = f"SELECT {group_sql}, {period_sql}, {_bucket_sql(col)} AS b, COUNT(*) FROM requests{cond}{extra} GROUP BY 1, 2, 3"
        for g, p, b, n in conn.execute(sql, params):
            yield metric, str(g), str(p), float(b), int(n)


def span(conn: sqlite3.Connection, filters: Filters) -> tuple[float, float] | None:
    """First and last ``started_at`` among the rows in the time window (index lookups only)."""
    cond, params = where(Filters(since_ts=filters.since_ts, until_ts=filters.until_ts))
    lo = conn.execute(f"SELECT MIN(started_at) FROM requests{cond}", params).fetchone()[0]
    hi = conn.execute(f"SELECT MAX(started_at) FROM requests{cond}", params).fetchone()[0]
    return None if lo is None else (float(lo), float(hi))


def fsum(values: Iterable[float]) -> float:
    return math.fsum(values)
