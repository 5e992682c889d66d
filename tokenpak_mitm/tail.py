"""``tokenpak tail``: one line per request, live, from a running proxy's database.

It polls ``id > last_id`` over a read-only connection: in WAL mode a reader never blocks the
proxy's writer thread, and the proxy does not need to know anyone is watching.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = ["format_line", "fetch_new", "follow", "add_arguments", "run"]

BATCH = 500
LIVE_BACKLOG = 10  # rows shown before following, like tail(1)


def _count(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def format_line(row: Mapping[str, Any]) -> str:
    """time route model tokens cache-verdict cost ttft state, in fixed-ish columns."""
    from tokenpak_mitm.telemetry import cache_verdict  # here: pricing tables load slowly, `tokenpak setup` must not wait

    when = datetime.fromtimestamp(float(row["started_at"])).strftime("%H:%M:%S")
    cost = row.get("cost_usd")
    ttft = row.get("ttft_ms")
    if row.get("usage_source") == "absent":
        tokens = "usage not reported"
    else:
        tokens = (f"in {_count(row.get('input_tokens'))} read {_count(row.get('cache_read_tokens'))} "
                  f"write {_count(row.get('cache_write_tokens'))} out {_count(row.get('output_tokens'))}")
    return (
        f"{when}  {row.get('route_class') or '-':<11} {row.get('model') or '?':<26} {tokens:<44} "
        f"{cache_verdict(dict(row)):<5} {'$?' if cost is None else f'${cost:.6f}':>10}  "
        f"ttft {'-' if ttft is None else f'{ttft:.0f}ms':>7}  {row.get('terminal_state') or '-'}"
        f"{_session_note(row)}"
    )


def _session_note(row: Mapping[str, Any]) -> str:
    """The miss cause (and its cost) and until when the session's cache is warm, when known."""
    parts = []
    if row.get("cache_miss_reason"):
        lost = row.get("miss_cost_usd")
        parts.append(f"miss {row['cache_miss_reason']}" + (f" +${lost:.6f}" if lost else ""))
    warm = row.get("cache_warm_until")
    if warm is not None:
        parts.append(f"warm until {datetime.fromtimestamp(float(warm)).strftime('%H:%M:%S')}")
    return ("  " + "  ".join(parts)) if parts else ""


def fetch_new(conn: sqlite3.Connection, last_id: int, limit: int = BATCH) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT * FROM requests WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit))]


def _start_id(conn: sqlite3.Connection, backlog: int | None) -> int:
    """The id after which to start: 0 for everything, else leave ``backlog`` rows to show."""
    if backlog is None:
        return 0
    row = conn.execute("SELECT id FROM requests ORDER BY id DESC LIMIT 1 OFFSET ?", (backlog,)).fetchone()
    return int(row[0]) if row else 0


def follow(db: Path, *, once: bool, interval: float, backlog: int | None) -> Iterator[str]:
    """Lines for existing rows (then, unless ``once``, for new rows as they arrive)."""
    from tokenpak_mitm.store import connect_readonly

    conn: sqlite3.Connection | None = None
    last_id = -1
    while True:
        try:
            if conn is None and db.is_file():
                conn = connect_readonly(db)
            if conn is not None:
                if last_id < 0:
                    last_id = _start_id(conn, backlog)
                while rows := fetch_new(conn, last_id):
                    for row in rows:
                        last_id = int(row["id"])
                        yield format_line(row)
        except sqlite3.OperationalError:
            if once:
                raise
            if conn is not None:  # e.g. the file was replaced: reopen on the next poll
                conn.close()
                conn = None
        if once:
            return
        time.sleep(interval)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="telemetry database (default: $TOKENPAK_HOME/tokenpak.db or ~/.tokenpak/tokenpak.db)")
    parser.add_argument("--once", action="store_true", help="print the existing rows and exit")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls (default 0.5)")
    parser.add_argument("--last", type=int, default=None, help=f"start with the last N rows (default: all with --once, {LIVE_BACKLOG} live)")


def run(args: argparse.Namespace) -> int:
    from tokenpak_mitm.store import default_db_path

    db = Path(args.db).expanduser() if args.db else default_db_path()
    if args.once and not db.is_file():
        print(f"tokenpak tail: no database at {db}", file=sys.stderr)
        return 1
    if not args.once:
        print(f"tokenpak tail: following {db} (Ctrl-C to stop)", file=sys.stderr)
    backlog = args.last if args.last is not None else (None if args.once else LIVE_BACKLOG)
    try:
        for line in follow(db, once=args.once, interval=max(0.05, args.interval), backlog=backlog):
            print(line, flush=True)
    except sqlite3.Error as e:
        print(f"tokenpak tail: cannot read {db}: {e}", file=sys.stderr)
        return 1
    return 0
