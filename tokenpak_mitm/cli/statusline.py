"""``tokenpak statusline``: one line for Claude Code's ``statusLine`` setting.

Claude Code runs the command after each assistant message (at most every 300 ms) and passes the
session as JSON on stdin (``session_id``, ``transcript_path``, ``cwd``, ``model``, ``workspace``,
``cost``, ...; code.claude.com/docs/en/statusline); the first line printed becomes the status line.
This prints what the proxy recorded for that session (``requests.session_id`` is Claude Code's own
session id, ``core/account/session_id.py``): what it cost and saved, the cache hit ratio, the last
cache miss's cause, and how long the session's cache stays warm (``cache_warm_until``, counting
down). For example::

    tokenpak $0.4213 · saved $1.1050 · hit 87% · last miss ttl_expired · warm 4m10s

It must be fast and must never fail loudly, since it runs on every message: only the standard
library is imported (no store, no price table), the database is opened read-only with a short
timeout, the session's sums come from one covering index (``requests_session_sums``) and its
newest row and miss from ``requests_session`` walked backwards, and every failure (no database,
an empty or damaged one, a session not recorded yet, malformed stdin) prints a short neutral line
and exits 0.

With ``--db postgresql://…`` (a team's shared store, ``store/postgres.py``) the same three queries
run on PostgreSQL (its sums as ``float8``, so the figures are the SQLite ones for the same rows).
psycopg is imported only then; the connection is read-only with a short connect and statement
timeout, so a server that is down or slow prints the neutral line and exits 0; no error text is
printed, so the URL's password never is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "line_for", "read_session_id", "run"]

NAME = "tokenpak"
# What is summed over the session's rows: cost, unpriced rows, savings, cache reads, prompt tokens.
_SUMMED = (
    "cost_usd",
    "CASE WHEN cost_usd IS NULL AND COALESCE(billable, 1) != 0 AND COALESCE(usage_source, 'absent') != 'absent' THEN 1 ELSE 0 END",
    "savings_usd", "cache_read_tokens",
    "COALESCE(input_tokens, 0) + COALESCE(cache_read_tokens, 0) + COALESCE(cache_write_tokens, 0)",
)
_TOTALS = f"SELECT COUNT(*), {', '.join(f'TOTAL({e})' for e in _SUMMED)} FROM requests WHERE session_id = ?"
# PostgreSQL has no TOTAL (a float sum, 0.0 over no rows) and sums integers as numeric: a float8 SUM, 0 when none.
_TOTALS_PG = f"SELECT COUNT(*), {', '.join(f'COALESCE(SUM(({e})::float8), 0)' for e in _SUMMED)} FROM requests WHERE session_id = %s"
# The newest rows by id: requests_session lists a session's rows in id order, so these walk it
# backwards from the end (by started_at they sorted every row of the session).
_LAST = "SELECT cache_warm_until FROM requests WHERE session_id = ? ORDER BY id DESC LIMIT 1"
_LAST_MISS = "SELECT cache_miss_reason FROM requests WHERE session_id = ? AND cache_miss_reason IS NOT NULL ORDER BY id DESC LIMIT 1"
# On PostgreSQL the newest rows walk requests_session_newest / requests_session_misses (migration 9).
_PG_QUERIES = (_TOTALS_PG, _LAST.replace("?", "%s"), _LAST_MISS.replace("?", "%s"))
_PG_SCHEMES = ("postgresql://", "postgres://")  # store.dburl.SCHEMES (not imported: see default_db; a test keeps them equal)
_PG_TIMEOUT = 2  # seconds to connect (libpq's minimum); statements get half that


def default_db() -> Path:
    """The store's default database (``store.sqlite.default_db_path``; not imported: it would load
    the whole store and cost this command most of its time budget; a test keeps the two equal)."""
    return Path(os.environ.get("TOKENPAK_HOME", Path.home() / ".tokenpak")) / "tokenpak.db"


def read_session_id(text: str) -> str | None:
    """Claude Code's ``session_id`` from the JSON it passes; None when absent or malformed."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    sid = data.get("session_id") if isinstance(data, dict) else None
    return sid.strip()[:128] if isinstance(sid, str) and sid.strip() else None


def _money(v: float) -> str:
    if v == 0:
        return "$0"
    if abs(v) < 0.0001:  # two significant digits, never $0.0000 for money that was spent
        return f"${v:.{min(12, 1 - math.floor(math.log10(abs(v))))}f}"
    return f"${v:,.2f}" if abs(v) >= 100 else f"${v:.4f}"


def _countdown(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def line_for(conn: Any, session_id: str, now: float, queries: tuple[str, str, str] = (_TOTALS, _LAST, _LAST_MISS)) -> str:
    """The status line for ``session_id`` from an open database (a ``sqlite3`` connection, or a
    psycopg one with ``_PG_QUERIES``)."""
    totals, last, last_miss = queries
    n, cost, unpriced, saved, read, prompt = conn.execute(totals, (session_id,)).fetchone()
    if not n:
        return f"{NAME}: no requests through the proxy yet in this session"
    parts = [f"{NAME} {_money(cost)}" + (f" (+{int(unpriced)} unpriced)" if unpriced else ""), f"saved {_money(saved)}"]
    parts.append(f"hit {read / prompt:.0%}" if prompt else "hit -")
    miss = conn.execute(last_miss, (session_id,)).fetchone()
    if miss is not None:
        parts.append(f"last miss {miss[0]}")
    warm = conn.execute(last, (session_id,)).fetchone()
    if warm is not None and warm[0] is not None:
        left = float(warm[0]) - now
        parts.append(f"warm {_countdown(left)}" if left > 0 else "cache cold")
    return " · ".join(parts)


def is_postgres(db: str | Path) -> bool:
    return isinstance(db, str) and db.strip().lower().startswith(_PG_SCHEMES)


def _postgres_line(url: str, session_id: str, now: float) -> str:
    """The line from a PostgreSQL store: psycopg is imported here only; nothing of an error is
    shown (a driver's message may echo the URL and its password)."""
    try:
        import psycopg
    except ImportError:
        return f"{NAME}: PostgreSQL needs pip install 'tokenpak-mitm[team]'"
    try:
        conn = psycopg.connect(url.strip(), autocommit=True, connect_timeout=_PG_TIMEOUT, application_name="tokenpak-mitm statusline",
                               options=f"-c default_transaction_read_only=on -c statement_timeout={_PG_TIMEOUT * 500}")
    except psycopg.Error:  # down, refused, wrong password, no such database
        return f"{NAME}: database unreachable"
    try:
        with conn:
            return line_for(conn, session_id, now, _PG_QUERIES)
    except psycopg.errors.UndefinedTable:
        return f"{NAME}: no database yet"
    except (psycopg.Error, TypeError, ValueError):  # slow, a schema from before sessions, a restart
        return f"{NAME}: -"


def status(stdin_text: str, db: Path | str, now: float | None = None) -> str:
    """The line to print; never raises for bad input or a bad database."""
    session_id = read_session_id(stdin_text)
    if session_id is None:
        return f"{NAME}: no session"
    if is_postgres(db):
        return _postgres_line(str(db), session_id, time.time() if now is None else now)
    db = Path(db)
    if not db.is_file():
        return f"{NAME}: no database yet"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return line_for(conn, session_id, time.time() if now is None else now)
        finally:
            conn.close()
    except (sqlite3.Error, TypeError, ValueError):  # locked, damaged, a database from before sessions
        return f"{NAME}: -"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ('In ~/.claude/settings.json: "statusLine": {"type": "command", "command": "tokenpak statusline"} '
                     "(`tokenpak setup claude-code` prints it with this installation's path).")
    parser.add_argument("--db", help="telemetry database: a SQLite path or a postgresql:// URL (default: $TOKENPAK_HOME/tokenpak.db or ~/.tokenpak/tokenpak.db)")


def run(args: argparse.Namespace) -> int:
    try:
        text = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read(1 << 20)
    except (OSError, ValueError, UnicodeDecodeError):
        text = ""
    db: Path | str = args.db if args.db and is_postgres(args.db) else (Path(args.db).expanduser() if args.db else default_db())
    try:
        line = status(text, db)
    except Exception:  # noqa: BLE001 - a status line must never print a traceback
        line = f"{NAME}: -"
    print(line, flush=True)
    return 0
