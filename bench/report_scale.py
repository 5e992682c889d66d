"""``python -m bench.report_scale``: how long ``tokenpak report`` takes on a big database, and its memory.

It writes a database of N synthetic rows (five models, three routes, a mix of states, NULL
latencies and unpriced rows, spread over 30 days) through the store's own schema and migrations,
then runs the report (``--by day`` and ``--by model``, a 7-day window, a model filter) in a fresh
child process per case, timing the report alone and reading the child's peak RSS. Comparing N =
100k and 1M shows whether memory grows with the row count. A second database puts the same N rows
in one day (today, from midnight to now: a busy day) and runs ``--since 30d``. ``--postgres``
runs the same cases on PostgreSQL too: a throw-away local cluster (``testing.postgres``) gets the
same rows (copied from the SQLite database in one COPY, so its daily summaries are built by the
store's own statement trigger; then ANALYZE, as autovacuum would) and the child reports with ``--db postgresql://…``. Not a test:
it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenpak_mitm.store.sqlite import COLUMN_NAMES, _open

MODELS = (("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-haiku-4-5"), ("openai", "gpt-4o-mini"),
          ("gemini", "gemini-2.5-flash"), ("anthropic", "mystery-model"))
DAY = 86400.0
CASES = {
    "by day, all": ["--since", "all", "--by", "day"],
    "by model, all": ["--since", "all", "--by", "model"],
    "by day, last 7d": ["--since", "7d", "--by", "day"],
    "by model, one model": ["--since", "all", "--by", "model", "--model", "claude-sonnet-4-5"],
}


ONE_DAY_CASES = {
    "one day, --since 30d by day": ["--since", "30d", "--by", "day"],
    "one day, --since 30d by model": ["--since", "30d", "--by", "model"],
}


def _today_start() -> float:
    return datetime.now().replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def bulk_insert(path: Path, rows: Iterable[dict[str, object]]) -> None:
    """A new SQLite database at ``path`` (the store's schema) holding ``rows``, inserted in batches of
    20,000 in one transaction (the store's own writer would take minutes for a million)."""
    if path.exists():
        path.unlink()
    conn = _open(path)
    sql = f"INSERT INTO requests ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join('?' * len(COLUMN_NAMES))})"
    batch = []
    conn.execute("BEGIN")
    for r in rows:
        batch.append(tuple(r.get(c) for c in COLUMN_NAMES))
        if len(batch) == 20_000:
            conn.executemany(sql, batch)
            batch = []
    conn.executemany(sql, batch)
    conn.execute("COMMIT")
    conn.close()


def build(path: Path, rows: int, seed: int = 1, one_day: bool = False) -> None:
    """``one_day``: every row from today (midnight to now) instead of the last 30 days."""
    bulk_insert(path, _rows(rows, seed, one_day))


def _rows(rows: int, seed: int, one_day: bool) -> Iterator[dict[str, object]]:
    rnd = random.Random(seed)
    start = _today_start() if one_day else time.time() - 30 * DAY
    step = (time.time() - 1 - start if one_day else 30 * DAY) / rows
    for i in range(rows):
        provider, model = rnd.choice(MODELS)
        state = rnd.choices(("completed", "error_response", "client_disconnected"), (95, 4, 1))[0]
        stream = rnd.random() < 0.8
        r = dict(request_key=f"r{i}", started_at=start + i * step, provider=provider, api="messages", model=model,
                 route_class=rnd.choice(("claude-code", "sdk", "other")), stream=int(stream), billable=1,
                 status_code=200 if state != "error_response" else rnd.choice((429, 529)), terminal_state=state,
                 usage_source="final" if state == "completed" else "absent",
                 input_tokens=rnd.randint(0, 5000), cache_read_tokens=rnd.randint(0, 80_000), cache_write_tokens=rnd.randint(0, 4000),
                 output_tokens=rnd.randint(1, 2000), ttft_ms=rnd.lognormvariate(6.5, 0.6) if stream else None,
                 duration_ms=rnd.lognormvariate(8.5, 0.8), proxy_request_ms=rnd.lognormvariate(-1, 0.5),
                 cost_usd=None if model == "mystery-model" or state != "completed" else rnd.random() * 0.05,
                 savings_usd=rnd.random() * 0.01, cache_origin=rnd.choice(("proxy", "client", "unknown", "none")),
                 cache_decision=rnd.choice(("inserted", "stood_down", "below_minimum")), markers_inserted=rnd.randint(0, 2))
        yield r


def _child(db: str, args: list[str]) -> None:
    """Runs in the child: one report, prints seconds and peak RSS (MiB) as JSON."""
    import contextlib
    import io

    from tokenpak_mitm.cli.main import main

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["report", "--json", "--db", db, *args])
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rc": rc, "seconds": elapsed, "peak_rss_mib": peak}))


def to_postgres(sqlite_db: Path, url: str) -> None:
    """The rows of ``sqlite_db`` into the (new) PostgreSQL database at ``url``, schema by the store's migrations."""
    import psycopg

    from tokenpak_mitm.store.postgres import PostgresBackend
    from tokenpak_mitm.store.sqlite import store_local_base

    backend = PostgresBackend(url, store_local_base(url))
    backend.connect()  # creates the schema, the summaries and their trigger
    backend.close()
    cols = ", ".join(COLUMN_NAMES)
    src = _open(sqlite_db)
    with psycopg.connect(url) as conn, conn.cursor().copy(f"COPY requests ({cols}) FROM STDIN") as copy:
        for row in src.execute(f"SELECT {cols} FROM requests ORDER BY id"):
            copy.write_row(row)
    src.close()
    # The statistics autovacuum would gather within a minute of such a load: without them the
    # planner guesses a handful of rows per summary query and sorts 160,000 on disk.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def measure(db: Path | str, args: list[str], repeat: int) -> dict[str, float]:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-m", "bench.report_scale", "--child", str(db), *args],
                             capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out))
    best = min(runs, key=lambda r: r["seconds"])
    return {"seconds_best": best["seconds"], "seconds_median": sorted(r["seconds"] for r in runs)[len(runs) // 2],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--child":
        _child(argv[1], argv[2:])
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.report_scale", description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, action="append", help="database sizes (repeatable; default 100000 and 1000000)")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/tokenpak-report-bench"), help="where the databases are kept (reused)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=("spread", "one-day"), help="run only the 30-day or only the one-day database")
    ap.add_argument("--postgres", action="store_true", help="also on PostgreSQL (a local throw-away cluster; needs the team extra and initdb)")
    a = ap.parse_args(argv)
    server = None
    if a.postgres:
        from tokenpak_mitm.testing.postgres import PostgresServer

        server = PostgresServer()
        server.start()
    try:
        return _run(a, server)
    finally:
        if server is not None:
            server.close()


def _run(a: argparse.Namespace, server: Any) -> int:
    a.dir.mkdir(parents=True, exist_ok=True)
    try:
        load = open("/proc/loadavg").read().split()[0]  # noqa: SIM115
    except OSError:
        load = "?"
    print(f"load average at start: {load}")
    for n in a.rows or [100_000, 1_000_000]:
        for one_day, cases in ((False, CASES), (True, ONE_DAY_CASES)):
            if a.only and a.only != ("one-day" if one_day else "spread"):
                continue
            db = a.dir / (f"report-1day-{n}.db" if one_day else f"report-{n}.db")
            # a one-day database is rebuilt once its day is over (its rows must be today's)
            stale = one_day and db.exists() and db.stat().st_mtime < _today_start()
            if not db.exists() or stale:
                t0 = time.perf_counter()
                build(db, n, one_day=one_day)
                print(f"built {db} ({n:,} rows) in {time.perf_counter() - t0:.1f} s")
            else:
                conn = _open(db)  # applies any newer migration (indexes) to a kept database
                conn.close()
            targets: list[tuple[str, Path | str]] = [("SQLite", db)]
            if server is not None:
                t0 = time.perf_counter()
                url = server.database()
                to_postgres(db, url)
                print(f"copied {n:,} rows into PostgreSQL in {time.perf_counter() - t0:.1f} s")
                targets.append(("PostgreSQL", url))
            for engine, target in targets:
                for name, args in cases.items():
                    r = measure(target, args, a.repeat)
                    print(f"{n:>9,} rows  {engine:<10} {name:<30} best {r['seconds_best']:.3f} s  median {r['seconds_median']:.3f} s  "
                          f"peak RSS {r['peak_rss_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
