"""``tokenpak tail``: one line per request, live, from a running proxy's database.

It polls ``id > last_id`` over a read-only connection: in WAL mode a reader never blocks the
proxy's writer thread, and the proxy does not need to know anyone is watching. It takes the
report's filters (``report_query``), fits the terminal's width (a compact layout under 100
columns, cut to the width so a line never wraps) and colours lines when writing to a terminal.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenpak_mitm.store.query import Filters, dialect_of, where

__all__ = ["format_line", "format_compact", "fetch_new", "follow", "add_arguments", "run", "COMPACT_BELOW"]

BATCH = 500
LIVE_BACKLOG = 10  # rows shown before following, like tail(1)
COMPACT_BELOW = 100  # terminal columns
UNKNOWN_COST = "unknown"

_RESET = "\x1b[0m"
_COLOURS = {"hit": "\x1b[32m", "write": "\x1b[33m", "miss": "\x1b[35m", "error": "\x1b[31m", "dim": "\x1b[2m"}


def _count(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _short_count(v: int | None) -> str:
    if v is None:
        return "-"
    if v < 1000:
        return str(v)
    if v < 1_000_000:
        return f"{v / 1000:.1f}k" if v < 10_000 else f"{v // 1000}k"
    return f"{v / 1_000_000:.1f}M"


def _ms(v: float, compact: bool = False) -> str:
    return f"{v:.0f}ms" if v < (1000 if compact else 10_000) else f"{v / 1000:.1f}s"


def _latency(row: Mapping[str, Any], compact: bool) -> str:
    """TTFT for streamed rows; the whole duration for the others (``dur``)."""
    ttft, dur = row.get("ttft_ms"), row.get("duration_ms")
    if ttft is not None:
        return _ms(ttft, compact) if compact else f"ttft {_ms(ttft):>7}"
    if dur is not None:
        return f"d{_ms(dur, compact)}" if compact else f"dur  {_ms(dur):>7}"
    return "-" if compact else f"ttft {'-':>7}"


def money(cost: float | None, min_digits: int = 4) -> str:
    """``$0.0016``, ``$0.000045`` (two significant digits below ``min_digits`` decimals, never
    ``$0.0000`` for a cost that is not zero), ``unknown`` for an unpriced row."""
    if cost is None:
        return UNKNOWN_COST
    if cost == 0:
        return "$0"
    digits = min_digits
    if abs(cost) < 10 ** -min_digits:
        digits = min(12, 1 - math.floor(math.log10(abs(cost))))
    return f"${cost:.{digits}f}"


def _cost(row: Mapping[str, Any], digits: int) -> str:
    return money(row.get("cost_usd"), digits)


_SHORT_STATES = {"completed": "ok", "client_disconnected": "client closed", "upstream_disconnected": "upstream closed",
                 "proxy_error": "proxy error"}


def _state(row: Mapping[str, Any], compact: bool) -> str:
    from tokenpak_mitm.core.account.telemetry import error_label

    state = row.get("terminal_state") or "-"
    label = error_label(dict(row))
    if compact:  # "429 rate_limit" rather than "error_response 429 rate_limit_error"
        if state in _SHORT_STATES:
            return _SHORT_STATES[state]
        short = (label or state).replace("_error", "")
        return f"stream {short}" if state == "stream_error" and label else short
    return f"{state} {label}" if label else state


def _tokens(row: Mapping[str, Any], compact: bool) -> str:
    if row.get("usage_source") == "absent":
        return "no usage" if compact else "usage not reported"
    if compact:
        return "/".join(_short_count(row.get(c)) for c in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens"))
    return (f"in {_count(row.get('input_tokens'))} read {_count(row.get('cache_read_tokens'))} "
            f"write {_count(row.get('cache_write_tokens'))} out {_count(row.get('output_tokens'))}")


def _when(row: Mapping[str, Any]) -> str:
    return datetime.fromtimestamp(float(row["started_at"])).strftime("%H:%M:%S")


def format_line(row: Mapping[str, Any], note: str = "full") -> str:
    """time route model tokens cache-verdict cost ttft/duration state, in fixed-ish columns (wide).

    ``note``: ``full`` (miss cause, its cost, warm-until), ``miss`` (the cause only) or ``none``.
    """
    from tokenpak_mitm.core.account.telemetry import cache_verdict  # here: pricing tables load slowly, `tokenpak setup` must not wait

    return (
        f"{_when(row)}  {row.get('route_class') or '-':<11} {row.get('model') or '?':<26} {_tokens(row, False):<44} "
        f"{cache_verdict(dict(row)):<5} {_cost(row, 6):>10}  {_latency(row, False)}  {_state(row, False)}"
        f"{_session_note(row, note)}"
    )


def _medium(row: Mapping[str, Any], note: str, pad: bool = True) -> str:
    """The wide line's facts with short tokens (between the two layouts); ``pad=False`` drops the padding."""
    from tokenpak_mitm.core.account.telemetry import cache_verdict

    route, model, tokens, verdict, cost = (row.get("route_class") or "-", row.get("model") or "?", _tokens(row, True),
                                           cache_verdict(dict(row)), _cost(row, 6))
    if pad:
        return (f"{_when(row)}  {route:<11} {model:<26} {tokens:>17} {verdict:<5} {cost:>10}  {_latency(row, False)}  "
                f"{_state(row, False)}{_session_note(row, note)}")
    return (f"{_when(row)}  {route} {model}  {tokens} {verdict} {cost}  {_latency(row, False).replace('  ', ' ')}  "
            f"{_state(row, False)}{_session_note(row, note)}")


def _session_note(row: Mapping[str, Any], note: str = "full") -> str:
    """The miss cause (and its cost) and until when the session's cache is warm, when known."""
    parts = []
    if note == "none":
        return ""
    if row.get("cache_miss_reason"):
        lost = row.get("miss_cost_usd")
        parts.append(f"miss {row['cache_miss_reason']}" + (f" +{money(lost, 6)}" if lost and note == "full" else ""))
    warm = row.get("cache_warm_until")
    if warm is not None and note == "full":
        parts.append(f"warm until {datetime.fromtimestamp(float(warm)).strftime('%H:%M:%S')}")
    return ("  " + "  ".join(parts)) if parts else ""


def _short_model(row: Mapping[str, Any], limit: int | None = 14) -> str:
    model = str(row.get("model") or "?").removeprefix("claude-")
    if limit is not None and len(model) > limit:
        model = model[: max(0, limit - 1)] + "…"
    return model


def format_compact(row: Mapping[str, Any], miss: bool = True, pad: bool = True, model_width: int | None = 14,
                   tokens: bool = True) -> str:
    """The same facts in under 80 columns: tokens as in/read/write/out with k and M, errors shortened.

    ``pad=False`` drops the column padding, ``model_width`` cuts the model name (None: whole),
    ``tokens=False`` leaves the tokens and the cache verdict out (the narrowest panes).
    """
    from tokenpak_mitm.core.account.telemetry import cache_verdict

    reason = row.get("cache_miss_reason")
    miss_word = f" miss:{_SHORT_REASONS.get(str(reason), str(reason))}" if reason and miss else ""
    model = _short_model(row, model_width)
    verdict = cache_verdict(dict(row))
    if pad:
        middle = f"{model:<{model_width or 14}} {_tokens(row, True):>17} {verdict:<5} {_cost(row, 4):>7} {_latency(row, True):>6}"
    elif tokens:
        middle = f"{model} {_tokens(row, True)} {verdict} {_cost(row, 4)} {_latency(row, True)}"
    else:
        middle = f"{model} {_cost(row, 4)} {_latency(row, True)}"
    return f"{_when(row)} {middle} {_state(row, True)}{miss_word}"


_SHORT_REASONS = {"ttl_expired": "ttl", "prefix_changed": "changed", "below_minimum": "short", "lookback_exceeded": "lookback",
                  "not_marked": "unmarked", "provider_evicted": "evicted"}

LEGEND = """\
A line: time, route class, model, tokens, cache verdict, cost, latency, how the request ended, and
the cache-miss cause with what it cost and until when the session's cache stays warm.
Under 100 columns (compact): time model in/read/write/out verdict cost latency state miss:cause
  tokens       fresh input / cache read / cache write / output; k = thousand, M = million
  verdict      hit (read from the cache), write (cache written), miss (marked, nothing read), none
  latency      412ms = time to the first token of a stream; d8ms = whole duration of a request
               that was not streamed (wide: "ttft 412ms", "dur 8ms")
  state        ok = completed; client closed, upstream closed, proxy error; an error shows its
               status and type ("429 rate_limit")
  miss:cause   why a possible cache read did not happen: ttl = ttl_expired, changed = prefix_changed,
               short = below_minimum (prompt under the provider's cacheable minimum), lookback =
               lookback_exceeded, unmarked = not_marked, evicted = provider_evicted, unknown
A line never wraps: what does not fit is dropped in this order (warm-until, the miss cost, the wide
layout, the miss cause, padding, the model's tail, tokens); the time, cost and outcome always show.
"""


def _colour(row: Mapping[str, Any], line: str) -> str:
    from tokenpak_mitm.core.account.telemetry import cache_verdict

    if (row.get("terminal_state") or "completed") != "completed":
        return _COLOURS["error"] + line + _RESET
    verdict = cache_verdict(dict(row))
    return _COLOURS[verdict] + line + _RESET if verdict in _COLOURS else line


def fit(row: Mapping[str, Any], width: int) -> str:
    """The most complete layout of ``row`` that fits ``width`` columns; the time, the cost and how
    the request ended (state, status, error type) are never cut."""
    candidates = []
    if width >= COMPACT_BELOW:
        candidates += [format_line(row), format_line(row, "miss"), *(_medium(row, note, pad) for pad in (True, False)
                                                                      for note in ("full", "miss", "none"))]
    candidates += [format_compact(row), format_compact(row, miss=False), format_compact(row, pad=False, model_width=None),
                   format_compact(row, miss=False, pad=False, model_width=None)]
    for line in candidates:
        if len(line) <= width:
            return line
    # The model's tail, then the tokens, give way (the model keeps at least its first character).
    for tokens in (True, False):
        rest = len(format_compact(row, miss=False, pad=False, model_width=0, tokens=tokens)) - 1  # without the model
        if width - rest >= 2:
            return format_compact(row, miss=False, pad=False, model_width=width - rest, tokens=tokens)
    line = format_compact(row, miss=False, pad=False, model_width=2, tokens=False)  # an error text longer than the pane
    return line if len(line) <= width else line[: max(1, width - 1)] + "…"


def render(row: Mapping[str, Any], width: int | None, colour: bool) -> str:
    """One row as printed: the fullest layout that fits ``width`` (no limit: the wide one), coloured or not."""
    line = format_line(row) if width is None else fit(row, width)
    return _colour(row, line) if colour else line


def fetch_new(conn: sqlite3.Connection, last_id: int, limit: int = BATCH, filters: Filters | None = None) -> list[dict[str, Any]]:
    cond, params = where(filters or Filters(), dialect=dialect_of(conn))
    cond = cond.replace(" WHERE ", " AND ", 1)
    cur = conn.execute(f"SELECT * FROM requests WHERE id > ?{cond} ORDER BY id LIMIT ?", (last_id, *params, limit))
    names = [d[0] for d in cur.description]  # (by the cursor, not the row type: SQLite's and PostgreSQL's differ)
    return [dict(zip(names, r, strict=True)) for r in cur]


def _start_id(conn: sqlite3.Connection, backlog: int | None, filters: Filters | None = None) -> int:
    """The id after which to start: 0 for everything, else leave ``backlog`` matching rows to show."""
    if backlog is None:
        return 0
    cond, params = where(filters or Filters(), dialect=dialect_of(conn))
    row = conn.execute(f"SELECT id FROM requests{cond} ORDER BY id DESC LIMIT 1 OFFSET ?", (*params, backlog)).fetchone()
    if row is not None:
        return int(row[0])
    if backlog == 0:  # nothing matches yet: follow from the newest row
        newest = conn.execute("SELECT MAX(id) FROM requests").fetchone()[0]
        return int(newest or 0)
    return 0


class NoTable(Exception):
    """A PostgreSQL database no proxy has written to yet (``tail --once``)."""


def _transient(e: BaseException) -> bool:
    """A reader error worth reopening for (a replaced file, a restarted server), not a bad query."""
    return isinstance(e, sqlite3.OperationalError) or any(c.__name__ in ("OperationalError", "InterfaceError") for c in type(e).__mro__)


def follow(db: Path | str, *, once: bool, interval: float, backlog: int | None, filters: Filters | None = None,
           width: int | None = None, colour: bool = False) -> Iterator[str]:
    """Lines for existing rows (then, unless ``once``, for new rows as they arrive)."""
    from tokenpak_mitm.store.dburl import is_postgres
    from tokenpak_mitm.store.sqlite import connect_reader, has_requests, reader_errors

    remote = is_postgres(str(db))
    errors = reader_errors()
    conn: Any = None
    last_id = -1
    while True:
        try:
            if conn is None and (remote or Path(db).is_file()):
                conn = connect_reader(str(db))
            if conn is not None and remote and not has_requests(conn):
                if once:
                    raise NoTable
                conn.close()  # no proxy has written to it yet: look again on the next poll
                conn = None
            if conn is not None:
                if last_id < 0:
                    last_id = _start_id(conn, backlog, filters)
                while rows := fetch_new(conn, last_id, filters=filters):
                    for row in rows:
                        last_id = int(row["id"])
                        yield render(row, width, colour)
        except errors as e:
            if once or not _transient(e):
                raise
            if conn is not None:  # e.g. the file was replaced, the server restarted: reopen on the next poll
                try:
                    conn.close()
                except errors:
                    pass
                conn = None
        if once:
            return
        time.sleep(interval)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tokenpak_mitm.cli.report import add_filter_arguments

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = LEGEND

    parser.add_argument("--db", help="telemetry database (default: $TOKENPAK_HOME/tokenpak.db or ~/.tokenpak/tokenpak.db)")
    parser.add_argument("--once", action="store_true", help="print the existing rows and exit")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls (default 0.5)")
    parser.add_argument("--last", type=int, default=None, help=f"start with the last N rows (default: all with --once, {LIVE_BACKLOG} live)")
    parser.add_argument("--width", type=int, default=None,
                        help=f"line width (default: the terminal's; compact under {COMPACT_BELOW}; no limit when not a terminal)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="colour lines (auto: on a terminal, unless NO_COLOR)")
    add_filter_arguments(parser, since_default=None)


def _width(args: argparse.Namespace) -> int | None:
    if args.width is not None:
        return max(20, int(args.width))
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def run(args: argparse.Namespace) -> int:
    from tokenpak_mitm.cli.report import filters_from_args
    from tokenpak_mitm.store.dburl import display, is_postgres, scrub
    from tokenpak_mitm.store.postgres import MissingExtra
    from tokenpak_mitm.store.sqlite import default_db_path, reader_errors

    db: Path | str = args.db if args.db and is_postgres(args.db) else (Path(args.db).expanduser() if args.db else default_db_path())
    shown = display(str(db))
    try:
        filters = filters_from_args(args)
    except ValueError as e:
        print(f"tokenpak tail: {e}", file=sys.stderr)
        return 2
    if args.once and isinstance(db, Path) and not db.is_file():
        print(f"tokenpak tail: no database at {db}", file=sys.stderr)
        return 1
    from tokenpak_mitm.cli.report import unknown_filter_value
    from tokenpak_mitm.store.sqlite import connect_reader, has_requests

    unreadable: tuple[type[BaseException], ...] = (MissingExtra, *reader_errors())
    try:
        conn = connect_reader(str(db)) if isinstance(db, str) or db.is_file() else None
        if conn is not None and not has_requests(conn):
            conn.close()  # a PostgreSQL database no proxy has written to yet: said below
            conn = None
    except unreadable:
        conn = None  # said below, when following
    try:
        # provider, route and state have fixed vocabularies: a misspelt one is an error; a model not
        # seen yet may still come (tail follows), so with --once it is an error and live a warning
        bad = unknown_filter_value(conn, filters, ("provider", "route", "state"))
        if bad is None:
            model = unknown_filter_value(conn, filters, ("model",))
            if model and args.once:
                bad = model
            elif model:
                print(f"tokenpak tail: {model}; following anyway", file=sys.stderr)
    finally:
        if conn is not None:
            conn.close()
    if bad:
        print(f"tokenpak tail: {bad}", file=sys.stderr)
        return 2
    if not args.once:
        extra = filters.describe()
        print(f"tokenpak tail: following {shown}{' (' + extra + ')' if extra else ''} (Ctrl-C to stop)", file=sys.stderr)
    backlog = args.last if args.last is not None else (None if args.once else LIVE_BACKLOG)
    colour = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    try:
        for line in follow(db, once=args.once, interval=max(0.05, args.interval), backlog=backlog, filters=filters,
                           width=_width(args), colour=colour):
            print(line, flush=True)
    except MissingExtra as e:
        print(f"tokenpak tail: {e}", file=sys.stderr)
        return 1
    except NoTable:
        print(f"tokenpak tail: no telemetry in {shown} yet", file=sys.stderr)
        return 1
    except reader_errors() as e:
        print(f"tokenpak tail: cannot read {shown}: {scrub(' '.join(str(e).split()), str(db))}", file=sys.stderr)
        return 1
    return 0
