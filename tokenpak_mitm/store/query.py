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
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from tokenpak_mitm.store.dialect import SQLITE, Dialect, dialect_of
from tokenpak_mitm.store.rollup import MEASURES

__all__ = [
    "ColumnFilter", "COLUMN_FILTERS", "DAY_GROUPS", "Filters", "GROUPINGS", "utc_offsets", "local_period_sql", "period_label", "LATENCY_COLUMNS", "PERCENTILES", "where",
    "latency_bucket", "percentiles", "CubeRow", "cube", "split_cell", "histograms", "latency_counts", "LatencyCounts", "span", "table_columns", "unpriced_groups", "Source", "sources", "raw_source", "bucket_sql", "error_groups", "UnitPrices", "dialect_of",
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


def where(filters: Filters, available: Iterable[str] | None = None, dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
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
            clauses.append("1 = 0")  # the database predates the column: nothing can match
            continue
        ors = []
        for v in values:
            glob = any(c in v for c in "*?[")
            ors.append(dialect.glob(column) if glob else f"{column} = ?")
            params.append(dialect.glob_param(v) if glob else v)
        clauses.append("(" + " OR ".join(ors) + ")")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


# -- groupings ----------------------------------------------------------------------------------
GROUPINGS: dict[str, str] = {
    "day": "",  # the local day: filled in by local_period_sql
    "week": "",  # local days too, labelled by their ISO week in Python (period_label): portable SQL
    "month": "",  # local days, labelled by their month
    "model": "COALESCE(model, '(unknown)')",
    "route": "COALESCE(route_class, '(unknown)')",
    "provider": "COALESCE(provider, '(unknown)')",
}
PERIOD_SECONDS = {"day": 86400, "hour": 3600}


def utc_offsets(lo: float, hi: float) -> list[tuple[float, int]]:
    """[(from timestamp, local UTC offset in seconds)] covering [lo, hi]: the time zone's changes.

    Users read reports in their own time zone. Asking SQLite for ``'localtime'`` per row costs
    microseconds each; the offset changes only at DST transitions, so the periods are computed
    with plain arithmetic from this short list instead.
    """
    def off(t: float) -> int:
        return time.localtime(t).tm_gmtoff

    segments = [(-math.inf, off(lo))]
    t = lo
    while t < hi:
        nxt = min(t + 3600, hi)
        if off(nxt) != segments[-1][1]:  # a change within this hour: find its quarter-hour
            q = t
            while off(q) == segments[-1][1]:
                q += 900
            segments.append((q - q % 900, off(q)))
        t = nxt
    return segments


def local_period_sql(period: str, offsets: Sequence[tuple[float, int]], dialect: Dialect = SQLITE) -> str:
    """SQL for the local day (hour) number of ``started_at``: days (hours) since 1970-01-01 local."""
    if len(offsets) == 1:
        shifted = f"started_at + {offsets[0][1]}"
    else:
        cases = " ".join(f"WHEN started_at < {start!r} THEN {prev}" for (_, prev), (start, _) in zip(offsets, offsets[1:], strict=False))
        shifted = f"started_at + (CASE {cases} ELSE {offsets[-1][1]} END)"
    return dialect.integer(f"({shifted}) / {PERIOD_SECONDS[period]}")


DAY_GROUPS = frozenset({"day", "week", "month"})  # groupings SQL computes as the local day number


def period_label(period: str, number: int) -> str:
    """``2026-05-16`` for a day number, ``2026-05-16 14:00`` for an hour number; a day number as
    its ISO week (``2026-W20``, weeks from Monday) or its month (``2026-05``)."""
    if period in DAY_GROUPS:
        day = date(1970, 1, 1) + timedelta(days=number)
        if period == "week":
            year, week, _ = day.isocalendar()
            return f"{year}-W{week:02d}"
        return day.isoformat() if period == "day" else day.strftime("%Y-%m")
    return (datetime(1970, 1, 1) + timedelta(hours=number)).strftime("%Y-%m-%d %H:00")


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


def bucket_sql(col: str, dialect: Dialect = SQLITE) -> str:
    cases = []
    for bound, m, d in _STEPS:
        if dialect.postgres:  # the same float operations: truncation, then a float division or product
            expr = (f"{dialect.integer(f'{col} * {m} + 0.5')} / {dialect.real(str(m))}" if m > 1
                    else dialect.real(f"{dialect.integer(f'{col} / {d} + 0.5')} * {d}"))
        else:
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
                out[name] = float(v)
                break
    return out


# -- aggregation --------------------------------------------------------------------------------

@dataclass(slots=True)
class CubeRow:
    """Sums over the rows sharing (group, period, provider, model, terminal state, usage source, cache decision)."""

    group: str
    period: str
    provider: str | None
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


def table_columns(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(dialect_of(conn).columns_sql("requests"))]


# A request the provider rejected (4xx) and that reported no usage is not billed: zero cost, priced.
_UNBILLED = "(cost_usd IS NULL AND status_code BETWEEN 400 AND 499 AND COALESCE(usage_source, 'absent') = 'absent')"
_USAGE = "usage_source != 'absent'"  # NULL (never written) counts as absent too: CASE WHEN NULL is false
_PRICED_USAGE = f"{_USAGE} AND cost_usd IS NOT NULL"


def split_cell(cost_with_usage: float, cost_without: float, tokens: Mapping[str, int], units: Mapping[str, float] | None) -> dict[str, float]:
    """Apportion a cell's cost to token buckets by the current unit prices (``other`` when unknown).

    Every row of a cell has the same provider and model, so its unit prices are the cell's; when
    each row's recorded cost was computed from those prices (the normal case), this equals the
    per-row split ``report.split_cost`` summed over the rows, and it always sums to the cost.
    """
    parts: dict[str, float] = {}
    weights = {}
    if units:
        w1h = tokens["cache_write_1h"]
        weights = {
            "input": tokens["input"] * units["input"],
            "cache_read": tokens["cache_read"] * units["cache_read"],
            "cache_write": (tokens["cache_write"] - w1h) * units["cache_write"] + w1h * units.get("cache_write_1h", units["cache_write"]),
            "output": tokens["output"] * units["output"],
        }
    total = math.fsum(weights.values())
    if total > 0:
        parts = {b: cost_with_usage * w / total for b, w in weights.items() if w}
    elif cost_with_usage:
        parts["other"] = cost_with_usage
    if cost_without:
        parts["other"] = parts.get("other", 0.0) + cost_without
    return parts


# -- sources: the raw rows, or the daily summaries plus the raw rows they do not cover ------------
@dataclass(frozen=True, slots=True)
class Source:
    """Where a pass reads: ``requests`` (rollup False) or a daily summary table (rollup True).

    ``days`` (rollup) are the local day numbers read from the summary; ``cond``/``params`` the
    filter for the raw rows (their time window minus the days the summary covers).
    """

    rollup: bool
    cond: str
    params: tuple[Any, ...]
    days: tuple[tuple[int, int], ...] = ()  # inclusive day-number runs (rollup)
    filters: Filters = Filters()


SUMS_COLUMNS = frozenset({"provider", "model", "route_class", "terminal_state"})  # what report_daily can filter and group on
LATENCY_KEY_COLUMNS = frozenset({"provider", "model"})  # report_latency_daily


def raw_source(conn: sqlite3.Connection, filters: Filters, ranges: Sequence[tuple[float, float]] | None = None) -> Source:
    """Raw rows matching ``filters``; with ``ranges``, only those [start, end) time ranges (index ranges).

    The ranges lie inside the window, so the window's own bounds are left out then: next to
    them SQLite's planner took the window's range for the index (a whole busy day scanned for an
    empty gap) instead of the OR of the small ones.
    """
    window = filters if ranges is None else Filters(errors=filters.errors, columns=filters.columns)
    cond, params = where(window, table_columns(conn), dialect_of(conn))
    if ranges is not None:
        ors = " OR ".join("(started_at >= ? AND started_at < ?)" for _ in ranges) or "1 = 0"
        cond += (" AND" if cond else " WHERE") + f" ({ors})"
        params += [v for r in ranges for v in r]
    return Source(rollup=False, cond=cond, params=tuple(params), filters=filters)


def _day_start(day: int) -> float:
    """The Unix time of local midnight starting day number ``day`` (days since 1970-01-01 local)."""
    d = date(1970, 1, 1) + timedelta(days=day)
    return datetime(d.year, d.month, d.day).timestamp()


def _local_day(ts: float) -> int:
    return (datetime.fromtimestamp(ts).date() - date(1970, 1, 1)).days


def sources(conn: sqlite3.Connection, filters: Filters, period: str, group_columns: frozenset[str] = frozenset(),
            latency: bool = False) -> list[Source]:
    """The daily summaries for the whole local days they can serve, and raw rows for the rest.

    A day is read from the summary when it lies wholly inside the window and the offsets the
    writer stored for it are ones this time zone has on that day; hourly views, filters or
    groupings on columns the summary lacks, and databases without it read raw rows only.
    ``latency``: for ``report_latency_daily``, which has fewer key columns (no route, no state).
    """
    raw = [raw_source(conn, filters)]
    table, keys = ("report_latency_daily", LATENCY_KEY_COLUMNS) if latency else ("report_daily", SUMS_COLUMNS)
    used = {_FILTER_COLUMNS[name] for name, _ in filters.columns} | set(group_columns) | ({"terminal_state"} if filters.errors else set())
    if period != "day" or not used <= keys:
        return raw
    if not conn.execute(dialect_of(conn).table_exists_sql(), (table,)).fetchone():
        return raw
    first_last = span(conn, filters)
    if first_last is None:
        return raw
    # An open end (no --since, or no --until: up to now) takes its edge day whole: no row lies
    # beyond the first or last one, so the day holding them is wholly inside the window. This is
    # what makes a busy today cheap: `--since 30d` reads today from the summary, not a million rows.
    # The report is of the rows there were when span() read the first and last: an open end's
    # raw range stops at the last row then (an open-ended range made SQLite's planner scan the
    # table rather than the started_at index).
    lo = filters.since_ts if filters.since_ts is not None else first_last[0]
    hi = filters.until_ts if filters.until_ts is not None else first_last[1] + 1e-3
    first, last = _local_day(lo), _local_day(hi if filters.until_ts is not None else first_last[1])
    if filters.since_ts is not None and _day_start(first) < lo:
        first += 1
    if filters.until_ts is not None and _day_start(last + 1) > hi:
        last -= 1
    if last < first:
        return raw
    stored: dict[int, set[int]] = {}
    for day, off in conn.execute("SELECT DISTINCT day, utc_offset FROM report_daily WHERE day BETWEEN ? AND ?", (first - 1, last + 1)):
        stored.setdefault(int(day), set()).add(int(off))

    def ours(day: int) -> set[int]:
        return {time.localtime(_day_start(day)).tm_gmtoff, time.localtime(_day_start(day + 1) - 1).tm_gmtoff}

    # Rows written under another UTC offset are filed under that zone's day, which may be the day
    # before or after ours: a day next to such a day is read raw too.
    foreign = {day for day, offs in stored.items() if not offs <= ours(day)}
    runs: list[list[int]] = []
    for day in range(first, last + 1):
        if foreign & {day - 1, day, day + 1}:
            continue  # written in another time zone: those rows are read raw
        if runs and runs[-1][1] == day - 1:
            runs[-1][1] = day
        else:
            runs.append([day, day])
    if not runs:
        return raw
    cond, params = where(Filters(errors=filters.errors, columns=filters.columns), keys, dialect_of(conn))
    rollup = Source(rollup=True, cond=cond, params=tuple(params), days=tuple((a, b) for a, b in runs), filters=filters)
    # Raw rows: the window minus the days read from the summary, as index ranges.
    gaps, at = [], lo
    for a, b in runs:
        gaps.append((at, _day_start(a)))
        at = _day_start(b + 1)
    gaps.append((at, hi))
    # One source per range: a single range is an index range for every query, where an OR of
    # ranges next to other conditions made SQLite's planner scan the table (0.6 s per pass on a
    # busy day for an empty gap).
    return [rollup, *(raw_source(conn, filters, [(x, y)]) for x, y in gaps if y > x)]


def _from(src: Source, table: str, columns: str, keys: Sequence[str] = ("provider", "model", "route_class", "terminal_state")) -> tuple[str, list[Any]]:
    """The FROM item of a pass and its parameters: a summary table exposed with ``requests``' column names."""
    if not src.rollup:
        return "requests", []
    days = " OR ".join("day BETWEEN ? AND ?" for _ in src.days)
    exposed = ", ".join(f"NULLIF({c}, '') AS {c}" if c != "terminal_state" else c for c in keys)
    sub = (f"(SELECT day * 86400 + 43200 - utc_offset AS started_at, {exposed}, {columns} "
           f"FROM {table} WHERE {days}) AS summary")
    return sub, [v for run in src.days for v in run]


_MEASURE_COLUMNS = ", ".join(name for name, _, _ in MEASURES)


def cube(conn: sqlite3.Connection, src: Source, group_sql: str, period_sql: str, unit_prices: UnitPrices) -> list[CubeRow]:
    """One pass: sums per (group, period, provider, model, state, usage source, decision).

    Raw rows and summary rows give the same sums (``report_rollup.MEASURES`` defines both). The
    per-bucket cost split is done per cell in Python (``split_cell``): written per row in SQL,
    SQLite re-evaluated the weights for every aggregate.
    """
    table, from_params = _from(src, "report_daily", "usage_source, NULLIF(cache_decision, '') AS cache_decision, " + _MEASURE_COLUMNS)
    total = dialect_of(conn).total
    if src.rollup:
        aggs = ", ".join(f"MAX({name})" if how == "max" else total(name) for name, _, how in MEASURES)
    else:
        aggs = ", ".join(f"MAX({expr.format(r='')})" if how == "max" else total(expr.format(r="")) for _, expr, how in MEASURES)
    sql = f"""
        SELECT {group_sql}, {period_sql}, provider, COALESCE(model, '(unknown)'), COALESCE(terminal_state, 'unknown'),
               COALESCE(usage_source, 'absent'), cache_decision, {aggs}
        FROM {table}{src.cond}
        GROUP BY 1, 2, 3, 4, 5, 6, 7"""
    out = []
    units_of: dict[tuple[str | None, str], Mapping[str, float] | None] = {}
    for r in conn.execute(sql, [*from_params, *src.params]):
        g, p, provider, model, st, src_, dec = r[:7]
        m = dict(zip((name for name, _, _ in MEASURES), r[7:], strict=True))
        key = (provider, model)
        if key not in units_of:
            units_of[key] = unit_prices(provider, model)
        priced_tokens = {"input": int(m["p_in"]), "cache_read": int(m["p_cr"]), "cache_write": int(m["p_cw"]),
                         "cache_write_1h": int(m["p_cw1h"]), "output": int(m["p_out"])}
        out.append(CubeRow(
            group=str(g), period=str(p), provider=provider, model=str(model), terminal_state=st, usage_source=src_, cache_decision=dec,
            requests=int(m["requests"]), with_usage=int(m["with_usage"]),
            tokens={"input": int(m["t_in"]), "cache_read": int(m["t_cr"]), "cache_write": int(m["t_cw"]), "output": int(m["t_out"]),
                    "reasoning": int(m["t_rs"])},
            priced=int(m["priced"]), unpriced=int(m["unpriced"]), cost=m["cost"],
            cost_by_bucket=split_cell(m["cost_u"], m["cost"] - m["cost_u"], priced_tokens, units_of[key]),
            savings={"proxy": m["s_proxy"], "client": m["s_client"], "unknown": m["s_unknown"], "none": m["s_none"]},
            markers_inserted=int(m["markers"]), proxy_max=m["proxy_max"],
        ))
    return out


def unpriced_groups(conn: sqlite3.Connection, src: Source) -> list[dict[str, Any]]:
    """Counts of unpriced billable rows by (provider, model, reason, usage source, status)."""
    if src.rollup:
        table, from_params = _from(src, "report_daily", "usage_source, NULLIF(unpriced_reason, '') AS unpriced_reason, unpriced")
        extra = f"{' AND' if src.cond else ' WHERE'} unpriced > 0"
        sql = f"SELECT provider, model, unpriced_reason, usage_source, NULL, {dialect_of(conn).count_sum('unpriced')} FROM {table}{src.cond}{extra} GROUP BY 1, 2, 3, 4"
    else:
        from_params = []
        reason = "unpriced_reason" if "unpriced_reason" in table_columns(conn) else "NULL"
        extra = f"{' AND' if src.cond else ' WHERE'} cost_usd IS NULL AND COALESCE(billable, 1) != 0 AND NOT {_UNBILLED}"
        sql = f"SELECT provider, model, {reason}, usage_source, status_code, COUNT(*) FROM requests{src.cond}{extra} GROUP BY 1, 2, 3, 4, 5"
    return [{"provider": p, "model": m, "unpriced_reason": r, "usage_source": u, "status_code": st, "cost_usd": None, "requests": n}
            for p, m, r, u, st, n in conn.execute(sql, [*from_params, *src.params])]


def error_groups(conn: sqlite3.Connection, src: Source) -> list[tuple[str, int | None, str | None, int]]:
    """(terminal state, status code, error type, requests) of the requests that did not complete."""
    if src.rollup:
        table, from_params = _from(src, "report_daily", "status_code, error, requests")
        extra = f"{' AND' if src.cond else ' WHERE'} terminal_state != 'completed'"
        sql = f"SELECT terminal_state, NULLIF(status_code, ''), NULLIF(error, ''), {dialect_of(conn).count_sum('requests')} FROM {table}{src.cond}{extra} GROUP BY 1, 2, 3"
    else:
        from_params = []
        extra = f"{' AND' if src.cond else ' WHERE'} COALESCE(terminal_state, '') != 'completed'"
        sql = f"SELECT COALESCE(terminal_state, 'unknown'), status_code, error, COUNT(*) FROM requests{src.cond}{extra} GROUP BY 1, 2, 3"
    return [(str(st), None if code is None else int(code), err, int(n)) for st, code, err, n in conn.execute(sql, [*from_params, *src.params])]


def histograms(conn: sqlite3.Connection, src: Source, group_sql: str, period_sql: str, *, same: bool = False,
               metrics: Sequence[str] = ("ttft", "duration"), totals_only: Sequence[str] = ("proxy",)) -> Iterable[tuple[str, str, list[Any]]]:
    """(metric, level, rows of (key, rounded value, count)) per pass: level "group" (key = group),
    "period" (key = period) or "total" (key None). Groups and periods are counted separately (the
    report shows latency per group and per period, never per group and period), which keeps the
    counts few. ``same``: the grouping is the period (``--by day``), so one pass serves both.

    The rows are the driver's, fetched whole and not converted: the SQL already answers a float
    value and an integer count on both engines (``latency_counts`` merges them).
    """
    passes: list[tuple[str, str, str]] = []
    for metric in metrics:
        passes.append((metric, "group", group_sql))
        if not same:
            passes.append((metric, "period", period_sql))
    passes += [(metric, "total", "NULL") for metric in totals_only]
    for metric, level, key_sql in passes:
        if src.rollup:
            table, from_params = _from(src, "report_latency_daily", "metric, bucket, n", ("provider", "model"))
            extra = f"{' AND' if src.cond else ' WHERE'} metric = ?"
            sql = f"SELECT {key_sql}, bucket, {dialect_of(conn).count_sum('n')} FROM {table}{src.cond}{extra} GROUP BY 1, 2"
            params = [*from_params, *src.params, metric]
        else:
            col = LATENCY_COLUMNS[metric]
            extra = f"{' AND' if src.cond else ' WHERE'} {col} IS NOT NULL"
            sql = f"SELECT {key_sql}, {bucket_sql(col, dialect_of(conn))} AS b, COUNT(*) FROM requests{src.cond}{extra} GROUP BY 1, 2"
            params = list(src.params)
        if isinstance(conn, sqlite3.Connection):  # plain tuples, not the reader's sqlite3.Row per count
            cur = conn.cursor()
            cur.row_factory = None
            yield metric, level, cur.execute(sql, params).fetchall()
        else:
            yield metric, level, conn.execute(sql, params).fetchall()


LatencyCounts = dict[tuple[str, str], dict[str | None, dict[float, int]]]


def latency_counts(conn: sqlite3.Connection, srcs: Iterable[Source], group_sql: str, period_sql: str, *, same: bool = False) -> LatencyCounts:
    """(metric, level) -> key -> rounded value -> count, summed over ``srcs`` (``histograms``' passes).

    A key is the group's or period's SQL value as text (None for level "total"). One dictionary
    update per count and no conversion per count: a million rows give ~100,000 counts (random
    latencies), and a Python call or conversion per count was a third of the report's time.
    """
    merged: dict[tuple[str, str], dict[Any, dict[float, int]]] = {}
    for src in srcs:
        for metric, level, rows in histograms(conn, src, group_sql, period_sql, same=same):
            per_key = merged.setdefault((metric, level), {})
            get = per_key.get
            for key, value, n in rows:
                counts = get(key)
                if counts is None:
                    counts = per_key[key] = {}
                counts[value] = counts.get(value, 0) + n
    out: LatencyCounts = {}
    for pass_key, per_key in merged.items():
        by_text: dict[str | None, dict[float, int]] = {}
        for key, counts in per_key.items():
            text = None if key is None else str(key)
            if text in by_text:  # two SQL values with one text (e.g. 1 and 1.0): merged as one key, as before
                into = by_text[text]
                for value, n in counts.items():
                    into[value] = into.get(value, 0) + n
            else:
                by_text[text] = counts
        out[pass_key] = by_text
    return out


def span(conn: sqlite3.Connection, filters: Filters) -> tuple[float, float] | None:
    """First and last ``started_at`` among the rows in the time window (index lookups only)."""
    cond, params = where(Filters(since_ts=filters.since_ts, until_ts=filters.until_ts))
    lo = conn.execute(f"SELECT MIN(started_at) FROM requests{cond}", params).fetchone()[0]
    hi = conn.execute(f"SELECT MAX(started_at) FROM requests{cond}", params).fetchone()[0]
    return None if lo is None else (float(lo), float(hi))
