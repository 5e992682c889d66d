"""The PostgreSQL store (``--set tokenpak_db=postgresql://…``): the writer's backend and the reports' reader.

Why it looks like this:

* The schema is the SQLite one, derived from ``TelemetryRow`` by ``store.schema`` for the
  PostgreSQL dialect; the version lives in the one-row table ``tokenpak_schema`` and migrations
  run in one transaction under an advisory lock, so several proxies starting at once upgrade the
  database once.
* ``TelemetryStore`` (the writer process's thread) calls :class:`PostgresBackend`: a batch is one
  ``INSERT … SELECT FROM unnest(…) ON CONFLICT (request_key) DO NOTHING`` in one transaction, one
  array per column, so a flow id already stored (a spill file imported twice, a commit whose
  answer was lost when the server restarted) is never doubled. The daily summaries follow by a
  statement trigger (``store.rollup``).
* When the server is unreachable, slow (``statement_timeout``) or restarts, ``insert`` raises and
  ``TelemetryStore`` keeps the rows, spills them to the local spill file and imports it when the
  server answers again, as for SQLite. All of it happens in the writer process: the proxy's event
  loop never waits on PostgreSQL.
* The URL's password is never shown: ``name`` is the URL without it, and ``describe`` scrubs
  driver errors (``dburl.scrub``). Prefer no password in the URL at all: libpq reads
  ``PGPASSWORD`` and ``~/.pgpass``.
* psycopg 3 is the optional ``team`` extra; without it :func:`require` says which command installs it.

The reader (:func:`connect_readonly`) gives ``store.query`` a connection that looks like the
``sqlite3`` one it was written for: ``execute(sql, params)`` with ``?`` placeholders, rows as
tuples (psycopg's fast default), integer sums as ints, and a ``dialect`` the queries ask for the few
constructs the engines spell differently.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenpak_mitm.core.row import COLUMNS as ROW_COLUMNS
from tokenpak_mitm.core.row import FIELD_NAMES
from tokenpak_mitm.store.dburl import EXTRA_HINT, display, scrub
from tokenpak_mitm.store.dialect import POSTGRESQL
from tokenpak_mitm.store.schema import migrations

__all__ = ["newest_request", "MissingExtra", "PostgresBackend", "PgReader", "connect_readonly", "require", "migrate", "schema_version", "errors", "one_line"]

logger = logging.getLogger(__name__)

# Every wait on the server stays under the writer's acknowledgement bound (store/writer.py
# ACK_TIMEOUT, 5 s): a batch that cannot be written in time is spilled (and acknowledged) instead,
# so an unreachable or slow server never makes the proxy take the writer for hung.
# (A row also waits in the queue and the linger before its batch starts, and the machine may be
# loaded, and a writer started for the first rows spends a second or two importing: 4 s and 2.5 s
# left too little margin in tests/test_store_postgres.py's slow-server test. A 500-row
# batch takes 0.1-0.35 s on the shared 2-core VM at load 13.)
CONNECT_TIMEOUT = 2  # seconds (libpq's minimum); an unreachable server costs this per attempt
STATEMENT_TIMEOUT_MS = 2_000  # a slow server: the batch is rolled back, spilled and retried
TCP_USER_TIMEOUT_MS = 2_000  # a server gone mid-statement (no RST: a partition): the socket errors
_LOCK_ID = 0x746F6B70  # pg_advisory_xact_lock key for migrations ("tokp")


class MissingExtra(RuntimeError):
    """psycopg is not installed: the message names the extra that brings it."""


def require() -> Any:
    """The psycopg module, or MissingExtra with the install command."""
    try:
        import psycopg
    except ImportError:
        raise MissingExtra(f"a PostgreSQL tokenpak_db needs psycopg: {EXTRA_HINT}") from None
    return psycopg


def errors() -> tuple[type[BaseException], ...]:
    """What a PostgreSQL operation may raise (empty without the extra)."""
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


def one_line(e: BaseException, url: str) -> str:
    """A driver error as one line without the password: libpq's text spans lines."""
    text = " ".join(str(e).split())
    return scrub(f"{type(e).__name__}: {text}", url)


def schema_version(conn: Any) -> int:
    row = conn.execute("SELECT version FROM tokenpak_schema").fetchone() if _has_table(conn, "tokenpak_schema") else None
    return int(row[0]) if row else 0


def _has_table(conn: Any, name: str) -> bool:
    # (no parameters: this runs on the writer's psycopg connection and on a PgReader alike; names are ours)
    return conn.execute(f"SELECT to_regclass('{name}') IS NOT NULL").fetchone()[0] is True


def migrate(conn: Any) -> int:
    """Bring the schema to the newest version in place (one transaction); returns that version."""
    scripts = migrations(POSTGRESQL)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
        conn.execute("CREATE TABLE IF NOT EXISTS tokenpak_schema (version INTEGER NOT NULL)")
        version = schema_version(conn)
        for script in scripts[version:]:
            conn.execute(script)
        if version < len(scripts):
            conn.execute("DELETE FROM tokenpak_schema")
            conn.execute("INSERT INTO tokenpak_schema VALUES (%s)", (len(scripts),))
    return len(scripts)


def _local_zone() -> str | None:
    """This machine's time zone name, so the writer's days are the local ones (as SQLite's are)."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and not tz.startswith("/"):
        return tz
    try:
        target = os.path.realpath(tz or "/etc/localtime")
    except OSError:
        return None
    _, sep, name = target.partition("zoneinfo/")
    return name if sep and name else None


# Each column's value as PostgreSQL's type takes it: one odd value (a bool, a 2**70 int, a NUL in a
# text) must not fail a whole batch.
def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v if -(2**63) <= v < 2**63 else None
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**63:
        return int(v)
    return None


def _as_float(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            return None
    return None


def _as_text(v: Any) -> str | None:
    if v is None:
        return None
    return (v if isinstance(v, str) else str(v)).replace("\x00", "\ufffd")


def _is_int(v: Any) -> bool:
    return type(v) is int and -(2**63) <= v < 2**63


def _is_float(v: Any) -> bool:
    return type(v) is float


def _is_text(v: Any) -> bool:
    return type(v) is str and "\x00" not in v


# per SQL type: PostgreSQL's type, the quick check of a value that is fine as it is, the fix of one that is not
_KINDS: dict[str, tuple[str, Callable[[Any], bool], Callable[[Any], Any]]] = {
    "INTEGER": ("bigint", _is_int, _as_int), "REAL": ("double precision", _is_float, _as_float), "TEXT": ("text", _is_text, _as_text),
}
_COLUMN_KINDS = [_KINDS[c.sql.split()[0].upper()] for c in ROW_COLUMNS]
_INSERT = (
    f"INSERT INTO requests ({', '.join(FIELD_NAMES)}) "
    f"SELECT * FROM unnest({', '.join(f'%s::{pg}[]' for pg, _, _ in _COLUMN_KINDS)}) "
    "ON CONFLICT (request_key) DO NOTHING RETURNING request_key"  # what was added: the metrics count exactly those
)


class PostgresBackend:
    """The writer's PostgreSQL connection (see the module's docstring)."""

    def __init__(self, url: str, local_base: Path) -> None:
        self._psycopg = require()
        self.url = url
        self.name = display(url)
        self.local_base = local_base
        self.errors: tuple[type[BaseException], ...] = (self._psycopg.Error, OSError)
        self._conn: Any = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed and not self._conn.broken

    def connect(self) -> None:
        if self.connected:
            return
        self.close()
        conn = self._psycopg.connect(
            self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="tokenpak-mitm writer",
            keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3, tcp_user_timeout=TCP_USER_TIMEOUT_MS,
        )
        try:
            zone = _local_zone()
            if zone:
                try:
                    conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
                except self._psycopg.Error:
                    pass  # a zone name the server does not know: its own zone (reports read those days raw)
            migrate(conn)  # (without the statement timeout: filling the summaries of a big database takes longer)
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped either way
                pass
        self._conn = None

    def insert(self, values: list[tuple[Any, ...]]) -> set[str] | None:
        assert self._conn is not None
        columns = [[v if v is None or ok(v) else fix(v) for v in col] for (_, ok, fix), col in zip(_COLUMN_KINDS, zip(*values), strict=True)]
        with self._conn.transaction():  # binary parameters: ~25% less time than text for a 500-row batch
            cursor = self._conn.cursor()
            cursor.execute(_INSERT, columns, prepare=True, binary=True)
            added = [row[0] for row in cursor.fetchall()]
        return None if len(added) == len(values) else {str(k) for k in added}

    def describe(self, e: BaseException) -> str:
        return one_line(e, self.url)


# -- the reports' reader ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Result:
    """A query's rows, fetched at once (psycopg converts a whole result in C; iterating its
    cursor is a Python call per row: 0.6 s of a million-row report's latency counts)."""

    __slots__ = ("description", "_rows")

    def __init__(self, description: Any, rows: list[Any]) -> None:
        self.description = description
        self._rows = rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows


class PgReader:
    """A read-only connection for ``tokenpak report``, ``tail`` and ``doctor``."""

    dialect = POSTGRESQL

    def __init__(self, url: str) -> None:
        psycopg = require()
        from psycopg.adapt import Loader

        class _Numeric(Loader):
            """SUM over integers is numeric in PostgreSQL: an int (as SQLite answers), else a float."""

            def load(self, data: Any) -> Any:
                text = bytes(data)
                return int(text) if text.lstrip(b"-").isdigit() else float(text)

        self.url = url
        self.name = display(url)
        self._conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT, application_name="tokenpak-mitm report")
        try:
            self._conn.execute("SET default_transaction_read_only = on")
            self._conn.adapters.register_loader("numeric", _Numeric)
        except BaseException:
            self._conn.close()
            raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        # no placeholders: the text goes as it is (a % stays a %)
        cur = self._conn.execute(_pg_sql(sql), tuple(params)) if params else self._conn.execute(sql)
        return _Result(cur.description, cur.fetchall() if cur.description else [])

    def close(self) -> None:
        self._conn.close()


def connect_readonly(url: str) -> PgReader:
    return PgReader(url)


def newest_request(url: str) -> float | None:
    """The newest ``started_at`` in the database (any proxy's); None when unknown or unreachable."""
    unreachable: tuple[type[BaseException], ...] = (MissingExtra, *errors())
    try:
        reader = PgReader(url)
    except unreachable:
        return None
    try:
        if not _has_table(reader, "requests"):
            return None
        reader.execute("SET statement_timeout = 1000")  # a locked or slow table must not hold the writer's start
        value = reader.execute("SELECT MAX(started_at) FROM requests").fetchone()[0]
        return float(value) if isinstance(value, (int, float)) else None
    except errors():
        return None
    finally:
        reader.close()
