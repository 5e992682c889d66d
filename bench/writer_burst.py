"""``python -m bench.writer_burst``: the store hand-off under a burst (issue 27's crash window).

Submits N finished requests to a real ``StoreProcess`` (real writer process, real SQLite file) as
fast as ``--threads`` threads can, and samples every 10 ms what a crash of the proxy would lose:
the records still only in the proxy's memory (queued, or in a frame the pipe has not taken) and
how long the oldest of them had waited. Also: how many the proxy spilled (the writer behind), how
long until every row was durable, and whether any row is missing afterwards.

    .venv/bin/python -m bench.writer_burst --requests 5000 --threads 100
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from tokenpak_mitm.core.account.accounting import Finished
from tokenpak_mitm.core.account.telemetry import RequestRecord, outcome
from tokenpak_mitm.core.observe.tracker import Extract
from tokenpak_mitm.core.observe.usage import Usage
from tokenpak_mitm.core.routes import classify
from tokenpak_mitm.store.sqlite import TelemetryStore
from tokenpak_mitm.store.writer import StoreProcess


def _finished(key: str) -> Finished:
    route = classify("POST", "api.anthropic.com", "/v1/messages")
    assert route is not None
    now = time.time()
    rec = RequestRecord(request_key=key, route=route, started_at=now, host="api.anthropic.com", path="/v1/messages", status_code=200)
    rec.extract = Extract(model="claude-sonnet-4-6", usage=Usage(input_tokens=7, output_tokens=2), usage_final=True, terminal_seen=True)
    return Finished(rec, outcome(rec), now, now)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=100)
    ap.add_argument("--rate", type=float, default=2000.0, help="requests per second in all (mitmdump on this VM does well under 1,000)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "t.db"
        s = StoreProcess(db)
        s.start()
        while s.ready_pid is None:
            time.sleep(0.02)
        done = threading.Event()
        worst = {"memory_only": 0, "oldest_s": 0.0}

        def sample() -> None:
            while not done.is_set():
                q = list(s._q)  # noqa: SLF001 - a bench reads the internals it measures
                only_here = len(q) + (len(s._out_keys) if s._out else 0)  # noqa: SLF001
                oldest = [time.monotonic() - q[0].at] if q else []
                if s._out and s._out_keys:  # noqa: SLF001
                    oldest.append(time.monotonic() - s._out_since)  # noqa: SLF001
                worst["memory_only"] = max(worst["memory_only"], only_here)
                worst["oldest_s"] = max([worst["oldest_s"], *oldest])
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        per = a.requests // a.threads
        t0 = time.monotonic()

        def submit(t: int) -> None:
            for i in range(per):
                s.account(_finished(f"b{t}-{i}"))
                time.sleep(a.threads / a.rate)

        threads = [threading.Thread(target=submit, args=(t,)) for t in range(a.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        burst = time.monotonic() - t0
        total = per * a.threads
        while s.acked + s.spilled_here + s.dropped < total and time.monotonic() - t0 < 120:
            time.sleep(0.01)
        durable = time.monotonic() - t0
        done.set()
        sampler.join()
        s.close()
        TelemetryStore(db).close()
        t = TelemetryStore(db)  # imports what was spilled
        t.start()
        t.close()
        con = sqlite3.connect(db)
        rows = con.execute("SELECT count(DISTINCT request_key) FROM requests").fetchone()[0]
        con.close()
        print(f"{total} requests from {a.threads} threads in {burst:.2f} s ({total / burst:.0f}/s); all durable after {durable:.2f} s")
        print(f"only in the proxy's memory at worst: {worst['memory_only']} records, the oldest {worst['oldest_s']:.2f} s old")
        print(f"spilled by the proxy: {s.spilled_here}; acknowledged by the writer: {s.acked}; lost: {s.dropped}; rows after restart: {rows}")


if __name__ == "__main__":
    main()
