"""The ``requests`` table and its migrations, derived from ``TelemetryRow`` for either dialect.

One definition, two dialects of SQL: the columns are TelemetryRow's fields (``core.row``), each
declaring the schema version that added it; :func:`migrations` lists, for a :class:`Dialect`, one
script per version, so a database of either engine upgrades in place and keeps its rows. SQLite
records the version in ``PRAGMA user_version`` (``store.sqlite``), PostgreSQL in the one-row
table ``tokenpak_schema`` (``store.postgres``).

Pure module: no I/O.
"""

from __future__ import annotations

from functools import cache

from tokenpak_mitm.core.row import COLUMNS as ROW_COLUMNS
from tokenpak_mitm.core.row import SCHEMA_VERSION
from tokenpak_mitm.store import query as report_query
from tokenpak_mitm.store import rollup as report_rollup
from tokenpak_mitm.store.dialect import SQLITE, Dialect

__all__ = ["add_columns", "migrations", "create_requests"]


def create_requests(dialect: Dialect) -> str:
    """Schema v1: the table as the first release created it, and its time index."""
    cols = ", ".join(f"{c.name} {dialect.column_type(c.sql)}" for c in ROW_COLUMNS if c.since == 1)
    return (f"CREATE TABLE IF NOT EXISTS requests ({dialect.id_column()}, {cols});"
            "CREATE INDEX IF NOT EXISTS requests_started_at ON requests(started_at);")


def add_columns(version: int, dialect: Dialect = SQLITE) -> str:
    """The migration that adds the row fields declared with ``since=version``."""
    added = [c for c in ROW_COLUMNS if c.since == version]
    if not added:
        raise ValueError(f"no TelemetryRow field is declared with since={version}")
    return "".join(f"ALTER TABLE requests ADD COLUMN {c.name} {dialect.column_type(c.sql)};" for c in added)


@cache
def migrations(dialect: Dialect = SQLITE) -> tuple[str, ...]:
    """One script per schema version (index 0 creates v1)."""
    scripts = (
        # 1: initial schema
        create_requests(dialect),
        # 2: proxy_request_ms
        add_columns(2, dialect),
        # 3: price factors (issue 18): service tier, speed, region, modality parts, iterations, multiplier, unpriced reason
        add_columns(3, dialect),
        # 4: cache_reasons (issue 13): why each marker was placed and each candidate skipped
        add_columns(4, dialect),
        # 5: for `tokenpak report` (aggregation runs in SQL): an index for the price lookup's
        # distinct (provider, model) pairs, a narrow covering index for windows and latency, and the
        # daily summary tables kept by the database itself (report_rollup), filled from the rows
        # already stored.
        "CREATE INDEX IF NOT EXISTS requests_provider_model ON requests(provider, model);"
        "CREATE INDEX IF NOT EXISTS requests_latency ON requests(started_at, provider, model, route_class, terminal_state, "
        "ttft_ms, duration_ms, proxy_request_ms);"
        + report_rollup.migration_sql(lambda col: report_query.bucket_sql(col, dialect), dialect),
        # 6: sessions and cache-miss diagnosis (sessions.py, cache_miss.py)
        add_columns(6, dialect) + "CREATE INDEX IF NOT EXISTS requests_session ON requests(session_id);",
        # 7: the provider's own cache-miss verdict (issue 25: Anthropic cache diagnostics)
        add_columns(7, dialect),
        # 8: `tokenpak statusline` (issue 26) sums one session on every Claude Code message: a covering
        # index answers from its own pages (a 100k-row session: seconds of row lookups before). The
        # last row and last miss come from requests_session, whose entries are in id order per session.
        "CREATE INDEX IF NOT EXISTS requests_session_sums ON requests(session_id, cost_usd, savings_usd, input_tokens, "
        "cache_read_tokens, cache_write_tokens, billable, usage_source);",
        # 9: the status line's newest row and newest miss of a session on PostgreSQL: its index on
        # (session_id) is not in id order as SQLite's is (there the rowid ends every index entry),
        # so the planner walked the primary key backwards past every other session's rows (0.2-0.5 s
        # on a million rows for a session without a miss). The misses get their own partial index:
        # rare per session, the planner could not tell. SQLite needs nothing: only its version moves.
        ("CREATE INDEX IF NOT EXISTS requests_session_newest ON requests(session_id, id);"
         "CREATE INDEX IF NOT EXISTS requests_session_misses ON requests(session_id, id) WHERE cache_miss_reason IS NOT NULL;")
        if dialect.postgres else "",
    )
    # A field declared with a `since` that no migration adds. (Later migrations may add only indexes.)
    if len(scripts) < SCHEMA_VERSION:
        raise RuntimeError(f"schema migrations reach v{len(scripts)} but TelemetryRow declares v{SCHEMA_VERSION}")
    return scripts
