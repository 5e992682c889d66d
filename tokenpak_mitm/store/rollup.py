"""Daily summary tables that let ``tokenpak report`` read thousands of rows instead of millions.

Two tables, kept up to date by ``AFTER INSERT`` triggers on ``requests`` (so every writer, the
spill import included, feeds them, and an ignored duplicate does not) and filled from the
existing rows by the migration that creates them:

* ``report_daily``: per (local day, UTC offset, provider, model, route class, terminal state,
  usage source, planner decision, unpriced reason, status code, error type of a failed request)
  the sums ``report_query.cube`` computes
  (``MEASURES``, the one definition both use);
* ``report_latency_daily``: per (local day, UTC offset, provider, model, metric) the number of
  requests at each latency rounded to three significant digits (reports filtered or grouped by
  route or state read latency from ``requests``).

The day is the writer's local day, stored with the UTC offset it used, so a report in the same
time zone reads whole days from here (the day at an open end of the window included: today,
when the report runs up to now); the partial days at a closed edge of the window, days whose offset
differs from the reader's, hourly views and filters on columns these tables do not carry are read
from ``requests`` (``report_query.sources``). Rows are never updated or deleted by the proxy; a
hand-made DELETE leaves these sums stale (``tokenpak report`` then disagrees with raw SQL).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MEASURES", "DIMS", "LATENCY_DIMS", "LATENCY", "migration_sql", "TABLES"]

# NULL-free key columns (NULL would make every row its own key): '' stands for NULL.
DIMS: tuple[tuple[str, str], ...] = (
    ("provider", "COALESCE({r}provider, '')"),
    ("model", "COALESCE({r}model, '')"),
    ("route_class", "COALESCE({r}route_class, '')"),
    ("terminal_state", "COALESCE({r}terminal_state, 'unknown')"),
    ("usage_source", "COALESCE({r}usage_source, 'absent')"),
    ("cache_decision", "COALESCE({r}cache_decision, '')"),
    ("unpriced_reason", "COALESCE({r}unpriced_reason, '')"),
    ("status_code", "COALESCE(CAST({r}status_code AS TEXT), '')"),
    ("error", "CASE WHEN COALESCE({r}terminal_state, '') = 'completed' THEN '' ELSE COALESCE({r}error, '') END"),
)
LATENCY_DIMS = DIMS[:2]  # provider, model: more keys multiply the rows (one per distinct latency value)

_USAGE = "{r}usage_source != 'absent'"  # NULL (never written) counts as absent: CASE WHEN NULL is false
_UNBILLED = "({r}cost_usd IS NULL AND {r}status_code BETWEEN 400 AND 499 AND COALESCE({r}usage_source, 'absent') = 'absent')"
_PRICED_USAGE = "{r}usage_source != 'absent' AND {r}cost_usd IS NOT NULL"
_W1H = "MIN(COALESCE({r}cache_write_1h_tokens, 0), COALESCE({r}cache_write_tokens, 0))"


def _when(cond: str, value: str) -> str:
    return f"CASE WHEN {cond} THEN {value} ELSE 0 END"


# (name, per-row value with {r} for the row prefix, how cells combine: "sum" or "max")
MEASURES: tuple[tuple[str, str, str], ...] = (
    ("requests", "1", "sum"),
    ("with_usage", _when(_USAGE, "1"), "sum"),
    ("t_in", _when(_USAGE, "COALESCE({r}input_tokens, 0)"), "sum"),
    ("t_cr", _when(_USAGE, "COALESCE({r}cache_read_tokens, 0)"), "sum"),
    ("t_cw", _when(_USAGE, "COALESCE({r}cache_write_tokens, 0)"), "sum"),
    ("t_out", _when(_USAGE, "COALESCE({r}output_tokens, 0)"), "sum"),
    ("t_rs", _when(_USAGE, "COALESCE({r}reasoning_tokens, 0)"), "sum"),
    ("priced", _when(f"{{r}}cost_usd IS NOT NULL OR {_UNBILLED}", "1"), "sum"),
    ("unpriced", _when(f"{{r}}cost_usd IS NULL AND COALESCE({{r}}billable, 1) != 0 AND NOT {_UNBILLED}", "1"), "sum"),
    ("cost", "COALESCE({r}cost_usd, 0)", "sum"),
    ("cost_u", _when(_USAGE, "COALESCE({r}cost_usd, 0)"), "sum"),
    ("p_in", _when(_PRICED_USAGE, "COALESCE({r}input_tokens, 0)"), "sum"),
    ("p_cr", _when(_PRICED_USAGE, "COALESCE({r}cache_read_tokens, 0)"), "sum"),
    ("p_cw", _when(_PRICED_USAGE, "COALESCE({r}cache_write_tokens, 0)"), "sum"),
    ("p_cw1h", _when(_PRICED_USAGE, _W1H), "sum"),
    ("p_out", _when(_PRICED_USAGE, "COALESCE({r}output_tokens, 0)"), "sum"),
    ("s_proxy", _when("{r}cache_origin = 'proxy'", "COALESCE({r}savings_usd, 0)"), "sum"),
    ("s_client", _when("{r}cache_origin = 'client'", "COALESCE({r}savings_usd, 0)"), "sum"),
    ("s_unknown", "CASE WHEN {r}cache_origin IN ('proxy', 'client', 'none') THEN 0 ELSE COALESCE({r}savings_usd, 0) END", "sum"),
    ("s_none", _when("{r}cache_origin = 'none'", "COALESCE({r}savings_usd, 0)"), "sum"),
    ("markers", "COALESCE({r}markers_inserted, 0)", "sum"),
    ("proxy_max", "{r}proxy_request_ms", "max"),
)
# metric name -> column; values are rounded by report_query.bucket_sql
LATENCY: dict[str, str] = {"ttft": "ttft_ms", "duration": "duration_ms", "proxy": "proxy_request_ms"}
TABLES = ("report_daily", "report_latency_daily")

# The writer's UTC offset (seconds) and local day number of a timestamp, as SQLite's 'localtime' sees it.
_OFFSET = "CAST(ROUND((julianday({ts}, 'unixepoch', 'localtime') - julianday({ts}, 'unixepoch')) * 86400) AS INTEGER)"


def _offset(ts: str) -> str:
    return _OFFSET.format(ts=ts)


def _day(ts: str) -> str:
    return f"CAST(({ts} + {_offset(ts)}) / 86400 AS INTEGER)"


def migration_sql(bucket_sql: Callable[[str], str]) -> str:
    """CREATE the tables and triggers and fill them from the rows already stored (one script)."""
    keys = ", ".join(name for name, _ in DIMS)
    lat_keys = ", ".join(name for name, _ in LATENCY_DIMS)
    measure_cols = ", ".join(f"{name} {'REAL' if name.startswith(('cost', 's_', 'proxy')) else 'INTEGER'}" for name, _, _ in MEASURES)
    ddl = (
        "CREATE TABLE IF NOT EXISTS report_daily (day INTEGER NOT NULL, utc_offset INTEGER NOT NULL, "
        + ", ".join(f"{name} TEXT NOT NULL" for name, _ in DIMS)
        + f", {measure_cols}, PRIMARY KEY (day, utc_offset, {keys})) WITHOUT ROWID;"
        f"CREATE TABLE IF NOT EXISTS report_latency_daily (day INTEGER NOT NULL, utc_offset INTEGER NOT NULL, "
        + ", ".join(f"{name} TEXT NOT NULL" for name, _ in LATENCY_DIMS)
        + f", metric TEXT NOT NULL, bucket REAL NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (day, utc_offset, {lat_keys}, metric, bucket)) WITHOUT ROWID;"
    )

    def values(r: str) -> str:
        return ", ".join([_day(f"{r}started_at"), _offset(f"{r}started_at"), *(e.format(r=r) for _, e in DIMS)])

    upsert = ", ".join(f"{n} = {'MAX(COALESCE(' + n + ', excluded.' + n + '), COALESCE(excluded.' + n + ', ' + n + '))' if how == 'max' else n + ' + excluded.' + n}"
                       for n, _, how in MEASURES)
    trigger = (
        "CREATE TRIGGER IF NOT EXISTS report_daily_insert AFTER INSERT ON requests BEGIN "
        f"INSERT INTO report_daily VALUES ({values('NEW.')}, {', '.join(e.format(r='NEW.') for _, e, _ in MEASURES)}) "
        f"ON CONFLICT (day, utc_offset, {keys}) DO UPDATE SET {upsert};"
    )
    lat_values = ", ".join([_day("NEW.started_at"), _offset("NEW.started_at"), *(e.format(r="NEW.") for _, e in LATENCY_DIMS)])
    for metric, col in LATENCY.items():
        trigger += (
            f"INSERT INTO report_latency_daily SELECT {lat_values}, '{metric}', {bucket_sql('NEW.' + col)}, 1 WHERE NEW.{col} IS NOT NULL "
            f"ON CONFLICT (day, utc_offset, {lat_keys}, metric, bucket) DO UPDATE SET n = n + 1;"
        )
    trigger += " END;"
    fill = (
        f"INSERT INTO report_daily SELECT {values('')}, "
        + ", ".join(f"{'MAX' if how == 'max' else 'SUM'}({e.format(r='')})" for _, e, how in MEASURES)
        + f" FROM requests WHERE true GROUP BY 1, 2, {', '.join(str(i + 3) for i in range(len(DIMS)))};"
    )
    lat_raw = ", ".join([_day("started_at"), _offset("started_at"), *(e.format(r="") for _, e in LATENCY_DIMS)])
    for metric, col in LATENCY.items():
        fill += (
            f"INSERT INTO report_latency_daily SELECT {lat_raw}, '{metric}', {bucket_sql(col)}, COUNT(*) FROM requests "
            f"WHERE {col} IS NOT NULL GROUP BY 1, 2, {', '.join(str(i + 3) for i in range(len(LATENCY_DIMS)))}, {len(LATENCY_DIMS) + 4};"
        )
    return ddl + trigger + fill
