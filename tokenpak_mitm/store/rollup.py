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

from tokenpak_mitm.store.dialect import SQLITE, Dialect

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
# the smaller of the two (portable: SQLite's two-argument MIN is PostgreSQL's LEAST)
_W1H = ("CASE WHEN COALESCE({r}cache_write_1h_tokens, 0) < COALESCE({r}cache_write_tokens, 0) "
        "THEN COALESCE({r}cache_write_1h_tokens, 0) ELSE COALESCE({r}cache_write_tokens, 0) END")


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

# The writer's UTC offset (seconds) and local day number of a timestamp: SQLite's 'localtime' is
# the writer process's time zone; PostgreSQL's is the writer session's TimeZone setting.
_OFFSET = "CAST(ROUND((julianday({ts}, 'unixepoch', 'localtime') - julianday({ts}, 'unixepoch')) * 86400) AS INTEGER)"
_PG_OFFSET = "CAST(EXTRACT(TIMEZONE FROM to_timestamp({ts})) AS INTEGER)"


def _offset(ts: str, dialect: Dialect = SQLITE) -> str:
    return (_PG_OFFSET if dialect.postgres else _OFFSET).format(ts=ts)


def _day(ts: str, dialect: Dialect = SQLITE) -> str:
    return dialect.integer(f"({ts} + {_offset(ts, dialect)}) / 86400")


def _measure_type(name: str, dialect: Dialect) -> str:
    return dialect.column_type("REAL" if name.startswith(("cost", "s_", "proxy")) else "INTEGER")


def migration_sql(bucket_sql: Callable[[str], str], dialect: Dialect = SQLITE) -> str:
    """CREATE the tables and what keeps them and fill them from the rows already stored (one script).

    SQLite keeps them with a row trigger; PostgreSQL with a statement trigger over the rows the
    statement inserted (its transition table: an ignored duplicate is not in it), so a batch of
    rows costs one aggregate upsert per table rather than one per row.
    """
    keys = ", ".join(name for name, _ in DIMS)
    lat_keys = ", ".join(name for name, _ in LATENCY_DIMS)
    text, bigint = dialect.column_type("TEXT"), dialect.column_type("INTEGER")
    measure_cols = ", ".join(f"{name} {_measure_type(name, dialect)}" for name, _, _ in MEASURES)
    rowid = "" if dialect.postgres else " WITHOUT ROWID"
    ddl = (
        f"CREATE TABLE IF NOT EXISTS report_daily (day {bigint} NOT NULL, utc_offset {bigint} NOT NULL, "
        + ", ".join(f"{name} {text} NOT NULL" for name, _ in DIMS)
        + f", {measure_cols}, PRIMARY KEY (day, utc_offset, {keys})){rowid};"
        f"CREATE TABLE IF NOT EXISTS report_latency_daily (day {bigint} NOT NULL, utc_offset {bigint} NOT NULL, "
        + ", ".join(f"{name} {text} NOT NULL" for name, _ in LATENCY_DIMS)
        + f", metric {text} NOT NULL, bucket {dialect.column_type('REAL')} NOT NULL, n {bigint} NOT NULL, "
        f"PRIMARY KEY (day, utc_offset, {lat_keys}, metric, bucket)){rowid};"
    )
    if dialect.postgres:
        return ddl + _pg_keeper(bucket_sql, dialect, keys, lat_keys)

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
    return ddl + trigger + _fill("requests", bucket_sql, dialect)


def _fill(source: str, bucket_sql: Callable[[str], str], dialect: Dialect, upsert: str = "", lat_upsert: str = "") -> str:
    """Add the rows of ``source`` (``requests``, or a trigger's transition table) to both summaries."""
    def values(r: str) -> str:
        return ", ".join([_day(f"{r}started_at", dialect), _offset(f"{r}started_at", dialect), *(e.format(r=r) for _, e in DIMS)])

    keys = ", ".join(str(i + 3) for i in range(len(DIMS)))
    sql = (
        f"INSERT INTO report_daily SELECT {values('')}, "
        + ", ".join(f"{'MAX' if how == 'max' else 'SUM'}({e.format(r='')})" for _, e, how in MEASURES)
        + f" FROM {source} WHERE true GROUP BY 1, 2, {keys}{' ORDER BY 1, 2, ' + keys if upsert else ''}{upsert};"
    )
    lat_raw = ", ".join([_day("started_at", dialect), _offset("started_at", dialect), *(e.format(r="") for _, e in LATENCY_DIMS)])
    lat_group = f"1, 2, {', '.join(str(i + 3) for i in range(len(LATENCY_DIMS)))}, {len(LATENCY_DIMS) + 4}"
    for metric, col in LATENCY.items():
        sql += (
            f"INSERT INTO report_latency_daily SELECT {lat_raw}, '{metric}', {bucket_sql(col)}, COUNT(*) FROM {source} "
            f"WHERE {col} IS NOT NULL GROUP BY {lat_group}{' ORDER BY ' + lat_group if lat_upsert else ''}{lat_upsert};"
        )
    return sql


def _pg_keeper(bucket_sql: Callable[[str], str], dialect: Dialect, keys: str, lat_keys: str) -> str:
    """PostgreSQL: a statement trigger adds each INSERT's new rows, aggregated, to the summaries
    (in key order, so concurrent writers lock summary rows in the same order)."""
    upsert = f" ON CONFLICT (day, utc_offset, {keys}) DO UPDATE SET " + ", ".join(
        f"{n} = GREATEST(report_daily.{n}, excluded.{n})" if how == "max" else f"{n} = report_daily.{n} + excluded.{n}"
        for n, _, how in MEASURES)
    lat_upsert = f" ON CONFLICT (day, utc_offset, {lat_keys}, metric, bucket) DO UPDATE SET n = report_latency_daily.n + excluded.n"
    body = _fill("new_rows", bucket_sql, dialect, upsert, lat_upsert)
    return (
        f"CREATE OR REPLACE FUNCTION report_daily_add() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN {body} RETURN NULL; END $fn$;"
        "DROP TRIGGER IF EXISTS report_daily_insert ON requests;"
        "CREATE TRIGGER report_daily_insert AFTER INSERT ON requests REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION report_daily_add();"
        + _fill("requests", bucket_sql, dialect)
    )
