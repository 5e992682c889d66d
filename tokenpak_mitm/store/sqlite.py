"""Embedded SQLite telemetry store: one row per request, written off the event loop.

Why it looks like this:

* mitmproxy runs every hook on one thread and sends the end of a streamed response only after
  the ``response`` hook returns, so hooks only enqueue; a writer thread batches inserts.
* ``request_key`` (the flow id) is UNIQUE and inserts are ``INSERT OR IGNORE``: a row can never be
  doubled, even if a path reports twice or a spill file is imported again.
* When the database cannot be written (read-only, deleted directory, locked, disk full), rows
  are kept in memory (bounded) and appended to a JSONL spill file beside the database, or, when
  that directory cannot be written either, to an owner-only fallback in the system temp
  directory; the next start imports both. A clean shutdown flushes everything.
* No row disappears without a count: a row that can be neither written nor spilled is counted
  as lost, logged at the time and again at close, and appended to a loss ledger that
  ``tokenpak doctor`` reads (see ``losses``).
* In the proxy this class runs in a separate writer process (``store_writer``), so a fault of
  SQLite itself (a truncated memory-mapped ``-shm`` raises SIGBUS) costs rows, never the proxy.
* The schema is versioned with ``PRAGMA user_version`` and upgraded by migrations, so users keep
  their history across upgrades. WAL lets ``tokenpak report`` read while the proxy writes.
* Files are created owner-only (0600); the database holds no secrets by construction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import sqlite3
import stat
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

try:
    import fcntl
except ImportError:  # Windows: no flock; appends and imports are then not coordinated across processes
    fcntl = None  # type: ignore[assignment]

from tokenpak_mitm.core.account.accounting import Accountant, Finished, finished_from_json
from tokenpak_mitm.core.row import COLUMNS as ROW_COLUMNS
from tokenpak_mitm.core.row import FIELD_NAMES, TelemetryRow
from tokenpak_mitm.store.dburl import is_postgres, local_base
from tokenpak_mitm.store.dialect import SQLITE
from tokenpak_mitm.store.schema import add_columns, migrations

__all__ = [
    "SPILLED_RECORD",
    "COLUMNS",
    "COLUMN_NAMES",
    "MIGRATIONS",
    "TelemetryStore",
    "add_columns",
    "append_jsonl",
    "connect_readonly",
    "connect_reader",
    "reader_errors",
    "has_requests",
    "store_local_base",
    "default_db_path",
    "fallback_spill_path",
    "last_request_at",
    "newest_request",
    "loss_ledger_paths",
    "losses",
    "migrate",
    "record_loss",
    "spill_paths",
    "take_jsonl",
]

logger = logging.getLogger(__name__)

# The columns are TelemetryRow's fields (core/row.py); the migrations are derived from them for
# SQLite here and for PostgreSQL in store/postgres.py (store/schema.py: one definition, two dialects).
COLUMNS: tuple[tuple[str, str], ...] = tuple((c.name, c.sql) for c in ROW_COLUMNS)
COLUMN_NAMES: tuple[str, ...] = FIELD_NAMES
COLUMNS_V1: tuple[tuple[str, str], ...] = tuple((c.name, c.sql) for c in ROW_COLUMNS if c.since == 1)
MIGRATIONS: tuple[str, ...] = migrations(SQLITE)

SPILL_SUFFIX = ".spill.jsonl"
SPILLED_RECORD = "finished"  # a spill line holding a finished request's record (accounted when imported), not a row
MAX_PENDING = 100_000  # rows kept in memory while the database is unavailable
BATCH = 500
FLUSH_INTERVAL = 0.2  # seconds; a crash loses at most this window (plus LINGER) of rows
LINGER = 0.1  # seconds a batch may wait for more rows before it is written
IMPORT_INTERVAL = 5.0  # seconds between looks for spill files to import while idle


LOSS_SUFFIX = ".lost.jsonl"


def default_db_path() -> Path:
    return Path(os.environ.get("TOKENPAK_HOME", Path.home() / ".tokenpak")) / "tokenpak.db"


def store_local_base(db: str) -> Path:
    """The local file a database's spill file and loss ledger are named after (dburl.local_base);
    for a PostgreSQL URL its directory ($TOKENPAK_HOME) is created owner-only when missing."""
    base = local_base(db, default_db_path().parent)
    if is_postgres(db):
        try:
            base.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            pass  # the spill goes to the fallback in the system temp directory
    return base


def newest_request(db: str) -> float | None:
    """``last_request_at`` for the writer process: for a PostgreSQL database it asks the server
    (bounded by the connect timeout; None when it does not answer: the tracker then starts unblind)."""
    if not is_postgres(db):
        return last_request_at(db)
    from tokenpak_mitm.store.postgres import newest_request as pg_newest

    return pg_newest(db)


def connect_reader(db: str) -> Any:
    """A read-only connection to a SQLite path or a PostgreSQL URL (``store.postgres.PgReader``)."""
    if is_postgres(db):
        from tokenpak_mitm.store.postgres import connect_readonly as pg_readonly

        return pg_readonly(db)
    return connect_readonly(db)


def has_requests(conn: Any) -> bool:
    """Whether a reader's database has the ``requests`` table yet (a new PostgreSQL database has
    none until a proxy has written to it)."""
    from tokenpak_mitm.store.dialect import dialect_of

    return conn.execute(dialect_of(conn).table_exists_sql(), ("requests",)).fetchone() is not None


def reader_errors() -> tuple[type[BaseException], ...]:
    """What reading either kind of database may raise."""
    from tokenpak_mitm.store.postgres import errors

    return (sqlite3.Error, *errors())


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


def _fallback_root() -> Path:
    return Path(tempfile.gettempdir()) / f"tokenpak-{_uid()}"


def _fallback_dir() -> Path:
    """An owner-only directory in the system temp dir (created 0700, refused if not ours)."""
    d = _fallback_root()
    d.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != _uid() or st.st_mode & 0o077:
        raise PermissionError(f"{d} is not an owner-only directory of ours")
    return d


def _fallback_name(db: Path, suffix: str) -> str:
    digest = hashlib.sha256(str(db.expanduser().absolute()).encode()).hexdigest()[:16]
    return f"{db.name}-{digest}{suffix}"


def fallback_spill_path(db: Path) -> Path:
    """The second spill location for ``db``: used when the database's own directory refuses."""
    return _fallback_root() / _fallback_name(db, SPILL_SUFFIX)


def spill_paths(db: Path) -> tuple[Path, Path]:
    """Where rows of ``db`` may be spilled, in the order they are tried."""
    return Path(str(db) + SPILL_SUFFIX), fallback_spill_path(db)


def loss_ledger_paths(db: Path) -> tuple[Path, Path]:
    return Path(str(db) + LOSS_SUFFIX), _fallback_root() / _fallback_name(db, LOSS_SUFFIX)


APPEND_RETRY_SECONDS = 5.0
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # a planted symlink is not followed (POSIX)


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def _lock(fd: int) -> None:
    """An exclusive lock on the open file, released when ``fd`` is closed."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


def append_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append rows to an owner-only JSONL file under an exclusive lock; raises OSError.

    The lock (and the re-check that the path still names the locked file) makes appends from
    the proxy and from the writer process safe against an import that takes the file away.
    """
    data = "".join(json.dumps(dict(r), separators=(",", ":"), default=str) + "\n" for r in rows).encode()
    if path.parent == _fallback_root():
        _fallback_dir()  # created owner-only, and refused if someone else made it first
    # An import that keeps taking the file can win the race between our open and our lock several
    # times in a row; retry for a while (imports are rare and short) rather than a fixed count.
    give_up = time.monotonic() + APPEND_RETRY_SECONDS
    while time.monotonic() < give_up:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND | _NOFOLLOW, 0o600)
        try:
            _lock(fd)
            if _identity(path) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                continue  # imported and removed while we waited: append to the new file
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            return
        finally:
            os.close(fd)
    raise OSError("spill file keeps being replaced")


def take_jsonl(path: Path, consume: Callable[[list[dict[str, Any]]], None]) -> int:
    """Read every row of ``path``, hand them to ``consume`` and remove the file, under the lock.

    ``consume`` raising leaves the file in place. Returns how many rows were consumed.
    """
    try:
        fd = os.open(path, os.O_RDWR | _NOFOLLOW)
    except FileNotFoundError:
        return 0
    try:
        _lock(fd)
        if _identity(path) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            return 0
        rows: list[dict[str, Any]] = []
        with os.fdopen(os.dup(fd), encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a crash
                if isinstance(row, dict) and isinstance(row.get("request_key"), str):
                    rows.append(row)
        consume(rows)
        os.unlink(path)
        return len(rows)
    finally:
        os.close(fd)


def record_loss(db: Path, count: int, reason: str) -> Path | None:
    """Append a loss entry to the ledger beside ``db`` (or its fallback); None if neither took it."""
    entry = {"at": time.time(), "lost": count, "reason": reason}
    for path in loss_ledger_paths(db):
        try:
            append_jsonl(path, [entry])
            return path
        except OSError:
            continue
    return None


def losses(db: Path) -> tuple[int, list[str]]:
    """(rows lost in total, the distinct reasons) from the loss ledgers of ``db``."""
    by_cause = losses_by_cause(db)
    return sum(by_cause.values()), list(by_cause)


def losses_by_cause(db: Path) -> dict[str, int]:
    """Rows lost by cause (in the order first seen) from the loss ledgers of ``db``."""
    out: dict[str, int] = {}
    for path in loss_ledger_paths(db):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
                n = int(entry["lost"])
            except (ValueError, KeyError, TypeError):
                continue
            reason = str(entry.get("reason"))
            out[reason] = out.get(reason, 0) + n
    return out


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


def last_request_at(path: str | os.PathLike[str]) -> float | None:
    """Newest request time in the database at ``path`` (an upper bound); None when none or unreadable.

    Called inside the proxy process, which must never map the WAL index (a truncated ``-shm`` is a
    SIGBUS there): the file is opened ``immutable`` (no ``-shm``, no locks), which reads only what
    was checkpointed, so a non-empty ``-wal`` counts by its modification time, a later moment than
    any row it holds.
    """
    if is_postgres(str(path)):
        return None  # not from the proxy's event loop: the writer asks PostgreSQL (newest_request)
    db = Path(path)
    if not db.is_file():
        return None
    newest: float | None = None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True, timeout=2.0)
        try:
            value = conn.execute("SELECT MAX(started_at) FROM requests").fetchone()[0]
        finally:
            conn.close()
        newest = float(value) if isinstance(value, (int, float)) else None
    except sqlite3.Error:
        pass
    try:
        wal = os.stat(str(db) + "-wal")
    except OSError:
        return newest
    if wal.st_size > 0:
        newest = max(newest or 0.0, wal.st_mtime)
    return newest


class Backend(Protocol):
    """Where ``TelemetryStore`` writes: SQLite (below) or PostgreSQL (``store.postgres``).

    ``insert`` writes rows (tuples in ``COLUMN_NAMES`` order, the request key first) in one
    transaction, ignoring a row whose request key is already stored, and returns the request keys
    it added, or None when it added every row (the metrics count exactly the rows added); it
    raises one of ``errors`` and is then retried (the rows are kept and spilled meanwhile). ``describe`` is an error as one line, with no secret.
    """

    name: str
    local_base: Path
    errors: tuple[type[BaseException], ...]

    @property
    def connected(self) -> bool: ...
    def connect(self) -> None: ...
    def insert(self, values: list[tuple[Any, ...]]) -> set[str] | None: ...
    def close(self) -> None: ...
    def describe(self, e: BaseException) -> str: ...


class SqliteBackend:
    """The embedded default: one SQLite file in WAL mode."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)

    def __init__(self, path: Path) -> None:
        self.path = self.local_base = path
        self.name = str(path)
        self._conn: sqlite3.Connection | None = None
        self._conn_identity: tuple[int, int] | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> None:
        if self._conn is not None and _identity(self.path) != self._conn_identity:
            # The file was deleted or replaced under us (e.g. its directory removed). SQLite would
            # keep writing into the unlinked inode and every row would vanish: reopen instead.
            logger.warning("tokenpak: database %s was removed or replaced; reopening it", self.path)
            self.close()
        if self._conn is None:
            self._conn = _open(self.path)
            self._conn_identity = _identity(self.path)

    def close(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except sqlite3.Error:
            pass
        self._conn = None
        self._conn_identity = None

    def insert(self, values: list[tuple[Any, ...]]) -> set[str] | None:
        assert self._conn is not None
        sql = f"INSERT OR IGNORE INTO requests ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMN_NAMES))})"
        rows = [tuple(_sql_value(v) for v in row) for row in values]
        added: set[str] | None = None
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            if self._conn.executemany(sql, rows).rowcount != len(rows):
                # Some rows were here already (a spill imported again, a late acknowledgement):
                # redo the batch row by row to know which ones this transaction adds.
                self._conn.execute("ROLLBACK")
                self._conn.execute("BEGIN IMMEDIATE")
                added = {str(row[0]) for row in rows if self._conn.execute(sql, row).rowcount}
            self._conn.execute("COMMIT")
        except BaseException:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        return added

    def describe(self, e: BaseException) -> str:
        return f"{type(e).__name__}: {e}"


def _backend(db: str) -> Backend:
    if is_postgres(db):
        from tokenpak_mitm.store.postgres import PostgresBackend  # the optional extra, only when asked for

        return PostgresBackend(db, store_local_base(db))
    return SqliteBackend(Path(db).expanduser())


class TelemetryStore:
    """Queue rows from any thread; a daemon thread writes them. ``close`` flushes everything.

    ``on_durable`` (called on the writer thread) receives the keys of rows that are safe: written
    to the database or appended to a spill file. The writer process acknowledges rows with it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_durable: Callable[[list[str]], None] | None = None,
        on_lost: Callable[[list[str]], None] | None = None,
        account: Callable[[Finished], TelemetryRow] | None = None,
        on_inserted: Callable[[list[TelemetryRow]], None] | None = None,
    ) -> None:
        db = self.db = str(path)  # a path, or a PostgreSQL URL (which may hold a password: never shown)
        self.backend: Backend = _backend(db)
        self.name = self.backend.name  # as it may be shown (a URL without its password)
        self.path = self.backend.local_base  # the file the spill file and the loss ledger are named after
        self._account = account or Accountant().close  # spilled finished requests become rows here
        self.spill_paths = spill_paths(self.path)
        self.spill_path = self.spill_paths[0]
        self._on_durable = on_durable
        self._on_lost = on_lost  # keys of rows counted as lost here (so nobody counts them twice)
        self.on_inserted = on_inserted  # rows a committed transaction added (the metrics count them)
        self._queue: queue.SimpleQueue[TelemetryRow | None] = queue.SimpleQueue()
        self._pending: deque[TelemetryRow] = deque()
        self._thread = threading.Thread(target=self._run, name="tokenpak-store", daemon=True)
        self._closed = threading.Event()
        self.written = 0
        self.spilled = 0
        self.dropped = 0  # rows lost: neither written nor spilled (see ``lost_reason``)
        self.lost_reason: str | None = None
        self.last_error: str | None = None
        self._warned = False
        self._fallback_warned = False
        self._spilled_keys: set[str] = set()
        self._next_import = time.monotonic() + IMPORT_INTERVAL

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
            if not self._spill([row]):
                self._lose([row])
            return
        self._queue.put(row)

    def close(self, timeout: float = 10.0) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
        if self.dropped:
            logger.error("tokenpak: store closed with %d rows LOST (%s); see %s", self.dropped, self.lost_reason, loss_ledger_paths(self.path)[0])

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
                if not stop and self._queue.qsize() < BATCH:  # a full batch waiting: no need to linger
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
                elif time.monotonic() >= self._next_import and not self._warned:
                    self._next_import = time.monotonic() + IMPORT_INTERVAL
                    if any(p.exists() for p in self.spill_paths) and self._connect():
                        self._import_spill()  # rows another process spilled while we ran (its writer behind or hung)
            except Exception:  # a dead writer would silently lose every later row
                logger.exception("tokenpak: store writer error; rows kept for the next attempt")
                self._drop_connection()
                time.sleep(0.05)
        fresh = [r for r in self._pending if r.request_key not in self._spilled_keys]
        if fresh and not self._spill(fresh):
            self._lose(fresh)
        self._pending.clear()
        self._drop_connection()

    def _durable(self, rows: Iterable[TelemetryRow]) -> None:
        if self._on_durable is not None:
            self._on_durable([r.request_key for r in rows])

    def _lose(self, rows: list[TelemetryRow]) -> None:
        """Count, log and ledger rows that could be neither written nor spilled."""
        n = len(rows)
        self.dropped += n
        if self._on_lost is not None:
            self._on_lost([r.request_key for r in rows])
        self.lost_reason = self.last_error or "unknown"
        logger.error("tokenpak: %d telemetry rows LOST: %s could not be written and no spill file could be (%s)", n, self.name, self.lost_reason)
        record_loss(self.path, n, self.lost_reason)

    def _connect(self) -> bool:
        try:
            self.backend.connect()
            return True
        except self.backend.errors as e:
            self._note_failure(e)
            return False

    def _drop_connection(self) -> None:
        self.backend.close()

    def _flush(self) -> None:
        if not self._connect():
            self._overflow()
            return
        rows = list(self._pending)
        try:
            self._insert(rows)
        except self.backend.errors as e:
            self._note_failure(e)
            self._drop_connection()
            self._overflow()
            return
        self._pending.clear()
        self._durable(rows)
        if self._warned:
            logger.warning("tokenpak: database %s writable again; pending rows written", self.name)
            self._warned = False
            self._import_spill()

    def _insert(self, rows: Iterable[TelemetryRow]) -> None:
        batch = list(rows)
        values = [tuple(getattr(r, c) for c in COLUMN_NAMES) for r in batch]
        added = self.backend.insert(values)  # one transaction; a duplicate request key is ignored
        self.written += len(values)
        if self.on_inserted is not None and batch:
            if added is not None:  # each added key once (a key twice in one batch is one row)
                new = []
                for r in batch:
                    if r.request_key in added:
                        added.discard(r.request_key)
                        new.append(r)
                batch = new
            try:
                self.on_inserted(batch)
            except Exception:  # noqa: BLE001 - the rows are written; counting them must not undo that
                logger.exception("tokenpak: rows written but not counted in the metrics")

    def _insert_stored(self, rows: list[dict[str, Any]]) -> None:
        # Keys of another version's schema are left out; a row without its start time could not be
        # stored (NOT NULL) and is skipped, as before. A finished request the proxy spilled is
        # accounted now (without session columns: they were its writer's).
        stored: list[TelemetryRow] = []
        for r in rows:
            record = r.get(SPILLED_RECORD)
            if isinstance(record, dict):
                try:
                    stored.append(self._account(finished_from_json(record)))
                except (KeyError, TypeError, ValueError) as e:
                    # Neither written nor spillable again: a loss, counted and put in the ledger like any other.
                    self.dropped += 1
                    self.lost_reason = f"a spilled request could not be read ({type(e).__name__}: {e})"
                    logger.error("tokenpak: a spilled request could not be read (%s: %s); counted as lost", type(e).__name__, e)
                    record_loss(self.path, 1, self.lost_reason)
            elif r.get("started_at") is not None:
                stored.append(TelemetryRow.from_stored(r))
        self._insert(stored)

    def _overflow(self) -> None:
        """Database unavailable: spill to JSONL so a crash loses nothing; keep memory bounded."""
        fresh = [r for r in self._pending if r.request_key not in self._spilled_keys]
        if fresh and self._spill(fresh):
            self._spilled_keys.update(str(r.request_key) for r in fresh)
        lost: list[TelemetryRow] = []
        while len(self._pending) > MAX_PENDING:
            old = self._pending.popleft()
            if old.request_key not in self._spilled_keys:
                lost.append(old)  # neither in the database nor in a spill file: counted, never silent
        if lost:
            self._lose(lost)

    def _spill(self, rows: list[TelemetryRow]) -> bool:
        """Append rows to the first spill location that takes them; False when none does."""
        for n, path in enumerate(self.spill_paths):
            try:
                append_jsonl(path, rows)
            except OSError as e:
                self._note_failure(e)
                continue
            if n and not self._fallback_warned:
                logger.warning("tokenpak: %s cannot be written; spilling rows to the fallback %s", self.spill_path, path)
                self._fallback_warned = True
            self.spilled += len(rows)
            self._durable(rows)
            return True
        return False

    def _import_spill(self) -> None:
        if not self.backend.connected:
            return
        ok = True
        for path in self.spill_paths:
            try:
                n = take_jsonl(path, self._insert_stored)  # INSERT OR IGNORE: rows already written are not doubled
            except self.backend.errors as e:
                self._note_failure(e)
                ok = False
                continue
            if n:
                logger.info("tokenpak: imported %d spilled rows from %s into %s", n, path, self.name)
        if ok:
            self._spilled_keys.clear()

    def _note_failure(self, e: BaseException) -> None:
        self.last_error = self.backend.describe(e)
        if not self._warned:
            logger.warning("tokenpak: cannot write %s (%s); keeping rows and spilling to %s", self.name, self.last_error, self.spill_path)
            self._warned = True
        if threading.current_thread() is self._thread:
            time.sleep(0.05)  # on the writer thread only: avoid a hot retry loop
