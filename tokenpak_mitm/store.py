"""Embedded SQLite telemetry store: one row per request, written off the event loop.

Why it looks like this:

* mitmproxy runs every hook on one thread and sends the end of a streamed response only after
  the ``response`` hook returns, so hooks only enqueue; a writer thread batches inserts.
* ``request_key`` (the flow id) is UNIQUE and inserts are ``INSERT OR IGNORE``: a row can never be
  doubled, even if a path reports twice or a spill file is imported again.
* When the database cannot be written (read-only, deleted directory, locked, disk full), rows
  are kept in memory (bounded) and appended to a JSONL spill file beside the database; the next
  start imports the spill file. A clean shutdown flushes everything.
* The schema is versioned with ``PRAGMA user_version`` and upgraded by migrations, so users keep
  their history across upgrades. WAL lets ``tokenpak report`` read while the proxy writes.
* Files are created owner-only (0600); the database holds no secrets by construction.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tokenpak_mitm import report_query, report_rollup
from tokenpak_mitm.row import COLUMNS as ROW_COLUMNS
from tokenpak_mitm.row import FIELD_NAMES, SCHEMA_VERSION, TelemetryRow

__all__ = ["TelemetryStore", "COLUMNS", "COLUMN_NAMES", "MIGRATIONS", "add_columns", "connect_readonly", "default_db_path", "migrate"]

logger = logging.getLogger(__name__)

# The columns are TelemetryRow's fields (row.py); each field says which schema version added it.
# Schema v1 is what the first release created; later columns arrive in existing databases through
# MIGRATIONS, one entry per version, so older databases upgrade in place and keep their rows.
COLUMNS: tuple[tuple[str, str], ...] = tuple((c.name, c.sql) for c in ROW_COLUMNS)
COLUMN_NAMES: tuple[str, ...] = FIELD_NAMES
COLUMNS_V1: tuple[tuple[str, str], ...] = tuple((c.name, c.sql) for c in ROW_COLUMNS if c.since == 1)


def add_columns(version: int) -> str:
    """The migration that adds the row fields declared with ``since=version``."""
    added = [c for c in ROW_COLUMNS if c.since == version]
    if not added:
        raise ValueError(f"no TelemetryRow field is declared with since={version}")
    return "".join(f"ALTER TABLE requests ADD COLUMN {c.name} {c.sql};" for c in added)


MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    "CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    + ", ".join(f"{n} {t}" for n, t in COLUMNS_V1)
    + ");"
    "CREATE INDEX IF NOT EXISTS requests_started_at ON requests(started_at);",
    # 2: proxy_request_ms
    add_columns(2),
    # 3: price factors (issue 18): service tier, speed, region, modality parts, iterations, multiplier, unpriced reason
    add_columns(3),
    # 4: cache_reasons (issue 13): why each marker was placed and each candidate skipped
    add_columns(4),
    # 5: for `tokenpak report` (aggregation runs in SQL): an index for the price lookup's
    # distinct (provider, model) pairs, a narrow covering index for windows and latency, and the
    # daily summary tables with the triggers that keep them (report_rollup), filled from the
    # rows already stored.
    "CREATE INDEX IF NOT EXISTS requests_provider_model ON requests(provider, model);"
    "CREATE INDEX IF NOT EXISTS requests_latency ON requests(started_at, provider, model, route_class, terminal_state, "
    "ttft_ms, duration_ms, proxy_request_ms);"
    + report_rollup.migration_sql(report_query.bucket_sql),
)
# A field declared with a `since` that no migration adds. (Later migrations may add only indexes.)
if len(MIGRATIONS) < SCHEMA_VERSION:
    raise RuntimeError(f"store.MIGRATIONS reaches v{len(MIGRATIONS)} but TelemetryRow declares v{SCHEMA_VERSION}")

SPILL_SUFFIX = ".spill.jsonl"
MAX_PENDING = 100_000  # rows kept in memory while the database is unavailable
BATCH = 500
FLUSH_INTERVAL = 0.2  # seconds; a crash loses at most this window (plus LINGER) of rows
LINGER = 0.1  # seconds a batch may wait for more rows before it is written


def default_db_path() -> Path:
    return Path(os.environ.get("TOKENPAK_HOME", Path.home() / ".tokenpak")) / "tokenpak.db"


def _touch_private(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def _open(path: Path) -> sqlite3.Connection:
    if not path.exists():
        _touch_private(path)
    conn = sqlite3.connect(path, timeout=2.0, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn)
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists():
                os.chmod(side, 0o600)
    except BaseException:
        conn.close()  # a half-opened connection would hold the file and leak a descriptor per retry
        raise
    return conn


_INT64 = 2**63


def _sql_value(v: Any) -> Any:
    """A value SQLite accepts: one odd value (a list, a 2**70 int) must not poison a whole batch."""
    if v is None or isinstance(v, (str, float)):
        return v
    if isinstance(v, int):
        return int(v) if -_INT64 <= v < _INT64 else str(v)
    return str(v)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file now at ``path``; None when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the newest version in place; returns that version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for n, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript("BEGIN;" + script + f"PRAGMA user_version={n};COMMIT;")
    return len(MIGRATIONS)


def connect_readonly(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A reader connection for reports (WAL: never blocks the writer)."""
    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=2.0)
    conn.row_factory = sqlite3.Row
    return conn


class TelemetryStore:
    """Queue rows from any thread; a daemon thread writes them. ``close`` flushes everything."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.spill_path = Path(str(self.path) + SPILL_SUFFIX)
        self._queue: queue.SimpleQueue[TelemetryRow | None] = queue.SimpleQueue()
        self._pending: deque[TelemetryRow] = deque()
        self._conn: sqlite3.Connection | None = None
        self._conn_identity: tuple[int, int] | None = None
        self._thread = threading.Thread(target=self._run, name="tokenpak-store", daemon=True)
        self._closed = threading.Event()
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._warned = False
        self._spilled_keys: set[str] = set()

    def start(self) -> None:
        self._thread.start()

    def submit(self, row: TelemetryRow | Mapping[str, Any]) -> None:
        """Non-blocking; safe from the event loop.

        A mapping is turned into a ``TelemetryRow`` first, so a key that is not a column raises
        ``ValueError`` here instead of becoming a silent NULL.
        A row that arrives after ``close`` (a flow that errors while mitmproxy shuts down) has no
        writer left to take it, so it goes straight to the spill file the next start imports.
        """
        if not isinstance(row, TelemetryRow):
            row = TelemetryRow.from_mapping(row)
        if self._closed.is_set():
            self._spill([row])
            return
        self._queue.put(row)

    def close(self, timeout: float = 10.0) -> None:
        self._closed.set()
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join(timeout)

    # -- writer thread --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self._connect():
                self._import_spill()
        except Exception:
            logger.exception("tokenpak: store start-up failed; rows will be kept and spilled")
        stop = False
        while not stop:
            batch: list[TelemetryRow] = []
            try:
                item = self._queue.get(timeout=FLUSH_INTERVAL)
                if item is None:
                    stop = True
                else:
                    batch.append(item)
                # Linger briefly so a burst is one transaction: waking (and taking the GIL from
                # the event loop) once per row was the proxy's main tail-latency cost. Sleeping,
                # rather than waiting on the queue, keeps each submit a plain append meanwhile.
                if not stop:
                    time.sleep(LINGER)
                while len(batch) < BATCH and not stop:
                    item = self._queue.get_nowait()
                    if item is None:
                        stop = True
                    else:
                        batch.append(item)
            except queue.Empty:
                pass
            self._pending.extend(batch)
            try:
                if self._pending:
                    self._flush()
            except Exception:  # a dead writer would silently lose every later row
                logger.exception("tokenpak: store writer error; rows kept for the next attempt")
                self._drop_connection()
                time.sleep(0.05)
        fresh = [r for r in self._pending if r.request_key not in self._spilled_keys]
        if fresh:
            self._spill(fresh)
        self._pending.clear()
        self._drop_connection()

    def _connect(self) -> bool:
        if self._conn is not None and _identity(self.path) != self._conn_identity:
            # The file was deleted or replaced under us (e.g. its directory removed). SQLite would
            # keep writing into the unlinked inode and every row would vanish: reopen instead.
            logger.warning("tokenpak: database %s was removed or replaced; reopening it", self.path)
            self._drop_connection()
        if self._conn is not None:
            return True
        try:
            self._conn = _open(self.path)
            self._conn_identity = _identity(self.path)
            return True
        except (sqlite3.Error, OSError) as e:
            self._note_failure(e)
            return False

    def _drop_connection(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except sqlite3.Error:
            pass
        self._conn = None
        self._conn_identity = None

    def _flush(self) -> None:
        if not self._connect():
            self._overflow()
            return
        rows = list(self._pending)
        try:
            self._insert(rows)
        except (sqlite3.Error, OSError) as e:
            self._note_failure(e)
            self._drop_connection()
            self._overflow()
            return
        self._pending.clear()
        if self._warned:
            logger.warning("tokenpak: database %s writable again; pending rows written", self.path)
            self._warned = False
            self._import_spill()

    def _insert(self, rows: Iterable[TelemetryRow]) -> None:
        assert self._conn is not None
        sql = f"INSERT OR IGNORE INTO requests ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMN_NAMES))})"
        values = [tuple(_sql_value(getattr(r, c)) for c in COLUMN_NAMES) for r in rows]
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(sql, values)
            self._conn.execute("COMMIT")
        except BaseException:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self.written += len(values)

    def _overflow(self) -> None:
        """Database unavailable: spill to JSONL so a crash loses nothing; keep memory bounded."""
        fresh = [r for r in self._pending if r.request_key not in self._spilled_keys]
        if fresh and self._spill(fresh):
            self._spilled_keys.update(r.request_key for r in fresh)
        while len(self._pending) > MAX_PENDING:
            self._pending.popleft()
            self.dropped += 1

    def _spill(self, rows: list[TelemetryRow]) -> bool:
        try:
            fd = os.open(self.spill_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(dict(r), separators=(",", ":"), default=str) + "\n")
            return True
        except OSError as e:
            self._note_failure(e)
            return False

    def _import_spill(self) -> None:
        if self._conn is None or not self.spill_path.exists():
            return
        rows: list[TelemetryRow] = []
        try:
            with open(self.spill_path, encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a torn last line from a crash
                    # Keys of another version's schema are left out; a row without its key or start
                    # time could not be stored (NOT NULL) and is skipped, as before.
                    if isinstance(row, dict) and isinstance(row.get("request_key"), str) and row.get("started_at") is not None:
                        rows.append(TelemetryRow.from_stored(row))
            self._insert(rows)  # INSERT OR IGNORE: rows already written are not doubled
            self.spill_path.unlink()
            self._spilled_keys.clear()
            logger.info("tokenpak: imported %d spilled rows into %s", len(rows), self.path)
        except (sqlite3.Error, OSError) as e:
            self._note_failure(e)

    def _note_failure(self, e: BaseException) -> None:
        self.last_error = f"{type(e).__name__}: {e}"
        if not self._warned:
            logger.warning("tokenpak: cannot write %s (%s); keeping rows and spilling to %s", self.path, self.last_error, self.spill_path)
            self._warned = True
        time.sleep(0.05)  # on the writer thread only: avoid a hot retry loop
