"""``python -m bench.statusline``: how long ``tokenpak statusline`` takes on a million-row database.

Claude Code runs the status line command after every assistant message, so it must answer in
well under the 300 ms between updates; the target is 50 ms. The bench writes N rows (default 1M,
2,000 sessions, the last one the busiest) through the store's schema, migrations and triggers,
then times, interleaved: the status line's own work in-process (open, three index lookups,
format), the whole command as Claude Code runs it (a new process fed the session JSON on stdin),
and a bare ``python -c pass`` for the interpreter's own start-up on this machine. Not a test.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.report_scale import bulk_insert
from tokenpak_mitm.cli.statusline import status
from tokenpak_mitm.store.sqlite import _open

SESSIONS = 2000


def build(path: Path, rows: int, seed: int = 3) -> str:
    """N rows over the last 30 days; returns the busiest session's id (every 10th row is its)."""
    busy = "busy-session"
    bulk_insert(path, _rows(rows, seed, busy))
    return busy


def _rows(rows: int, seed: int, busy: str) -> Iterator[dict[str, object]]:
    rnd = random.Random(seed)
    now = time.time()
    step = 30 * 86400 / rows
    for i in range(rows):
        at = now - 30 * 86400 + i * step
        yield dict(request_key=f"r{i}", started_at=at, provider="anthropic", api="messages", model="claude-sonnet-4-6",
                   route_class="claude-code", terminal_state="completed", usage_source="final", billable=1, status_code=200,
                   session_id=busy if i % 10 == 0 else f"s{rnd.randrange(SESSIONS)}", input_tokens=rnd.randint(0, 3000),
                   cache_read_tokens=rnd.randint(0, 60_000), cache_write_tokens=rnd.randint(0, 3000), output_tokens=rnd.randint(1, 900),
                   cost_usd=rnd.random() * 0.03, savings_usd=rnd.random() * 0.02, cache_warm_until=at + 300,
                   cache_miss_reason=rnd.choice((None,) * 8 + ("ttl_expired", "prefix_changed")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.statusline", description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=None, help="database to build or reuse (default /tmp/tokenpak-statusline-bench/N.db)")
    ap.add_argument("--runs", type=int, default=15)
    a = ap.parse_args(argv)
    db = a.db or Path(f"/tmp/tokenpak-statusline-bench/{a.rows}.db")
    db.parent.mkdir(parents=True, exist_ok=True)
    if not db.exists():
        t0 = time.perf_counter()
        build(db, a.rows)
        print(f"built {db} ({a.rows:,} rows, {SESSIONS:,} sessions + a busy one with {a.rows // 10:,} rows) in {time.perf_counter() - t0:.0f} s")
    else:
        _open(db).close()  # applies any newer migration (indexes) to a kept database
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    stdin = {name: json.dumps({"session_id": sid, "model": {"display_name": "Sonnet"}})
             for name, sid in (("busy session", "busy-session"), ("typical session", "s7"), ("unknown session", "nope"))}
    inproc: dict[str, list[float]] = {k: [] for k in stdin}
    whole: dict[str, list[float]] = {k: [] for k in stdin}
    bare: list[float] = []
    command = [str(Path(sys.executable).with_name("tokenpak")), "statusline", "--db", str(db)]
    for _ in range(a.runs):
        for name, text in stdin.items():
            t0 = time.perf_counter()
            status(text, db)
            inproc[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            subprocess.run(command, input=text, capture_output=True, text=True, check=True)
            whole[name].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t0)
    print(f"load average at start: {load}; {a.runs} interleaved runs, median (min) in ms")
    print(f"{'python -c pass':<18} whole process {statistics.median(bare) * 1e3:7.1f} ({min(bare) * 1e3:.1f})")
    for name in stdin:
        print(f"{name:<18} in-process {statistics.median(inproc[name]) * 1e3:6.2f} ({min(inproc[name]) * 1e3:.2f})   "
              f"whole command {statistics.median(whole[name]) * 1e3:7.1f} ({min(whole[name]) * 1e3:.1f})")
    print("line:", status(stdin["busy session"], db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
