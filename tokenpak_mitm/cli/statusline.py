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

__all__ = ["add_arguments", "line_for", "read_session_id", "run"]

NAME = "tokenpak"
_TOTALS = (
    "SELECT COUNT(*), TOTAL(cost_usd), "
    "TOTAL(CASE WHEN cost_usd IS NULL AND COALESCE(billable, 1) != 0 AND COALESCE(usage_source, 'absent') != 'absent' THEN 1 ELSE 0 END), "
    "TOTAL(savings_usd), TOTAL(cache_read_tokens), "
    "TOTAL(COALESCE(input_tokens, 0) + COALESCE(cache_read_tokens, 0) + COALESCE(cache_write_tokens, 0)) "
    "FROM requests WHERE session_id = ?"
)
# The newest rows by id: requests_session lists a session's rows in id order, so these walk it
# backwards from the end (by started_at they sorted every row of the session).
_LAST = "SELECT cache_warm_until FROM requests WHERE session_id = ? ORDER BY id DESC LIMIT 1"
_LAST_MISS = "SELECT cache_miss_reason FROM requests WHERE session_id = ? AND cache_miss_reason IS NOT NULL ORDER BY id DESC LIMIT 1"


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


def line_for(conn: sqlite3.Connection, session_id: str, now: float) -> str:
    """The status line for ``session_id`` from an open database."""
    n, cost, unpriced, saved, read, prompt = conn.execute(_TOTALS, (session_id,)).fetchone()
    if not n:
        return f"{NAME}: no requests through the proxy yet in this session"
    parts = [f"{NAME} {_money(cost)}" + (f" (+{int(unpriced)} unpriced)" if unpriced else ""), f"saved {_money(saved)}"]
    parts.append(f"hit {read / prompt:.0%}" if prompt else "hit -")
    miss = conn.execute(_LAST_MISS, (session_id,)).fetchone()
    if miss is not None:
        parts.append(f"last miss {miss[0]}")
    warm = conn.execute(_LAST, (session_id,)).fetchone()
    if warm is not None and warm[0] is not None:
        left = float(warm[0]) - now
        parts.append(f"warm {_countdown(left)}" if left > 0 else "cache cold")
    return " · ".join(parts)


def status(stdin_text: str, db: Path, now: float | None = None) -> str:
    """The line to print; never raises for bad input or a bad database."""
    session_id = read_session_id(stdin_text)
    if session_id is None:
        return f"{NAME}: no session"
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
    parser.add_argument("--db", help="telemetry database (default: $TOKENPAK_HOME/tokenpak.db or ~/.tokenpak/tokenpak.db)")


def run(args: argparse.Namespace) -> int:
    try:
        text = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read(1 << 20)
    except (OSError, ValueError, UnicodeDecodeError):
        text = ""
    db = Path(args.db).expanduser() if args.db else default_db()
    try:
        line = status(text, db)
    except Exception:  # noqa: BLE001 - a status line must never print a traceback
        line = f"{NAME}: -"
    print(line, flush=True)
    return 0
