"""``python -m bench.postgres_store``: the PostgreSQL store against the SQLite store.

Starts a local PostgreSQL cluster (``tokenpak_mitm.testing.postgres``: a temp directory, a free
loopback port, fsync and synchronous commit ON, as a real server runs), then:

* **proxy p50**: two ``mitmdump -q`` + tokenpak proxies in front of the bench upstream, one with
  ``tokenpak_db=`` a SQLite file, one with ``tokenpak_db=postgresql://…``; sequential small
  non-streamed requests, the two proxies interleaved request by request; p50 of each and the
  ratio (target <= 1.02), and rows == requests in both databases afterwards;
* **writer rows/s**: N rows queued at once into the store (``TelemetryStore``, the writer
  process's thread, with its batching and linger as shipped) and into the whole writer process
  (``StoreProcess``: pickled over the pipe, acknowledged), for PostgreSQL and SQLite; rows/s
  from the first submit to the last row durable (target >= 2,000 for PostgreSQL). The store
  thread's figure is the writer's rate; the whole process's includes the proxy spilling what
  waited over its 1 s crash window (``store/writer.py``), so with all rows queued at once it
  measures that path too.

Not a test: it asserts nothing. Run it on a quiet machine, or say the machine was shared.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.client import Conn, request_bytes
from bench.frames import message_body
from bench.procs import start_mitmdump, start_upstream
from bench.results_model import percentile
from tokenpak_mitm.store.sqlite import TelemetryStore, connect_readonly
from tokenpak_mitm.store.writer import StoreProcess
from tokenpak_mitm.testing.postgres import PostgresServer


def rows(n: int, prefix: str, seed: int = 1) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    now = time.time()
    out = []
    for i in range(n):
        stream = rnd.random() < 0.8
        out.append(dict(request_key=f"{prefix}{i}", started_at=now - rnd.random() * 86400, provider="anthropic", api="messages",
                        model=rnd.choice(("claude-sonnet-4-6", "claude-haiku-4-5")), route_class=rnd.choice(("claude-code", "sdk")),
                        stream=int(stream), billable=1, status_code=200, terminal_state="completed", usage_source="final",
                        input_tokens=rnd.randint(0, 5000), cache_read_tokens=rnd.randint(0, 80_000), cache_write_tokens=rnd.randint(0, 4000),
                        output_tokens=rnd.randint(1, 2000), ttft_ms=rnd.lognormvariate(6.5, 0.6) if stream else None,
                        duration_ms=rnd.lognormvariate(8.5, 0.8), proxy_request_ms=rnd.lognormvariate(-1, 0.5), cost_usd=rnd.random() * 0.05,
                        savings_usd=rnd.random() * 0.01, cache_origin="proxy", cache_decision="inserted", markers_inserted=1,
                        session_id=f"s{i % 50}", turn=i % 20, path="/v1/messages", host="api.anthropic.com"))
    return out


def writer_rate(db: str, n: int, whole_process: bool) -> float:
    batch = rows(n, f"w{int(whole_process)}-{time.time_ns()}-")
    store: StoreProcess | TelemetryStore = StoreProcess(db) if whole_process else TelemetryStore(db)
    store.start()
    store.submit(rows(1, f"warm{time.time_ns()}")[0])  # connection, schema and (PostgreSQL) prepared statement first
    deadline = time.monotonic() + 30
    while store.written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.perf_counter()
    for r in batch:
        store.submit(r)
    store.close(timeout=600)
    return n / (time.perf_counter() - t0)


def count(db: str) -> int:
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])
    with connect_readonly(db) as conn:
        return int(conn.execute("SELECT count(*) FROM requests").fetchone()[0])


def proxy_p50(url: str, tmp: Path, requests: int) -> dict[str, Any]:
    up = start_upstream()
    dbs = {"sqlite": str(tmp / "proxy.db"), "postgresql": url}
    proxies = {}
    try:
        for name, db in dbs.items():
            (tmp / name).mkdir()
            proxies[name] = start_mitmdump(name, up.port, tmp / name, db=Path(db) if name == "sqlite" else db)
        raw = request_bytes("/v1/messages?mode=json", message_body())
        conns = {name: Conn(p.port) for name, p in proxies.items()}
        lat: dict[str, list[int]] = {name: [] for name in proxies}
        for _ in range(30):  # warm-up
            for c in conns.values():
                c.post(raw)
        for i in range(requests):
            order = list(conns) if i % 2 else list(reversed(conns))
            for name in order:
                ns, _, _ = conns[name].post(raw)
                lat[name].append(ns)
        for c in conns.values():
            c.close()
    finally:
        for p in proxies.values():
            p.stop()
        up.stop()
    p50 = {name: (percentile(v, 50) or 0) / 1e6 for name, v in lat.items()}
    p99 = {name: (percentile(v, 99) or 0) / 1e6 for name, v in lat.items()}
    rows_ = {name: count(db) for name, db in dbs.items()}
    return {"p50_ms": p50, "p99_ms": p99, "ratio": p50["postgresql"] / p50["sqlite"], "rows": rows_, "requests": requests + 30}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.postgres_store", description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="interleaved request pairs for the p50 (default 300)")
    ap.add_argument("--rows", type=int, default=20_000, help="rows for the writer's rate (default 20000)")
    ap.add_argument("--only", choices=("proxy", "writer"))
    a = ap.parse_args(argv)
    try:
        load = open("/proc/loadavg").read().split()[0]  # noqa: SIM115
    except OSError:
        load = "?"
    print(f"load average at start: {load}")
    server = PostgresServer(durable=True)
    server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="tokenpak-pg-bench-") as tmp:
            os.environ["TOKENPAK_HOME"] = tmp  # a PostgreSQL database's spill file goes here, not in ~/.tokenpak
            if a.only in (None, "writer"):
                for whole in (False, True):
                    what = "writer process (StoreProcess)" if whole else "store thread (TelemetryStore)"
                    sq = writer_rate(str(Path(tmp) / f"w{int(whole)}.db"), a.rows, whole)
                    pg = writer_rate(server.database(), a.rows, whole)
                    print(f"{what:<32} {a.rows:,} rows: PostgreSQL {pg:,.0f} rows/s, SQLite {sq:,.0f} rows/s")
            if a.only in (None, "proxy"):
                r = proxy_p50(server.database(), Path(tmp), a.requests)
                print(f"small non-streamed request, {a.requests} interleaved pairs: p50 SQLite {r['p50_ms']['sqlite']:.3f} ms, "
                      f"PostgreSQL {r['p50_ms']['postgresql']:.3f} ms, ratio {r['ratio']:.3f} (target <= 1.02); "
                      f"p99 {r['p99_ms']['sqlite']:.3f} / {r['p99_ms']['postgresql']:.3f} ms; rows {r['rows']} of {r['requests']} requests each")
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
