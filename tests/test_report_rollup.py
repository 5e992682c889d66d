"""The daily summary tables give the report exactly what the raw rows give.

Each test writes rows through the real store (the triggers fill the summaries), then compares the
report read through the summaries with the report read from the raw rows only.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tokenpak_mitm.cli.report import build_report, report_json
from tokenpak_mitm.core.row import COLUMNS
from tokenpak_mitm.store import query as rq
from tokenpak_mitm.store.query import Filters
from tokenpak_mitm.store.sqlite import COLUMN_NAMES, MIGRATIONS, TelemetryStore, connect_readonly, migrate

MODELS = [("anthropic", "claude-sonnet-4-6"), ("anthropic", "claude-haiku-4-5"), ("openai", "gpt-4o-mini"), ("gemini", "gemini-2.5-flash"),
          ("anthropic", None), ("anthropic", "mystery-model")]


def rows(n: int, seed: int = 7, start: datetime = datetime(2026, 5, 1, 7, 30)) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    t0 = start.timestamp()
    out = []
    for i in range(n):
        provider, model = rnd.choice(MODELS)
        state = rnd.choice(["completed"] * 6 + ["error_response", "client_disconnected", "stream_error", None])
        usage = rnd.choice(["final", "final", "partial", "absent", None])
        r: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
        r.update(request_key=f"k{i}", started_at=t0 + i * 9 * 3600 / 7, provider=provider, model=model,
                 route_class=rnd.choice(["claude-code", "sdk", "other", None]), terminal_state=state, usage_source=usage,
                 billable=rnd.choice([1, 1, 1, 0, None]), status_code=rnd.choice([200, 200, 429, 529, None]),
                 input_tokens=rnd.choice([None, rnd.randint(0, 9000)]), cache_read_tokens=rnd.choice([None, rnd.randint(0, 90000)]),
                 cache_write_tokens=rnd.choice([None, rnd.randint(0, 5000)]), cache_write_1h_tokens=rnd.choice([None, rnd.randint(0, 500)]),
                 output_tokens=rnd.choice([None, rnd.randint(0, 3000)]), reasoning_tokens=rnd.choice([None, rnd.randint(0, 100)]),
                 cost_usd=rnd.choice([None, round(rnd.random() * 0.1, 6)]), savings_usd=rnd.choice([None, rnd.random() * 0.01 - 0.002]),
                 cache_origin=rnd.choice(["proxy", "client", "unknown", "none", None]), markers_inserted=rnd.choice([None, 0, 1, 2]),
                 cache_decision=rnd.choice(["inserted", "stood_down", None]), unpriced_reason=rnd.choice([None, "unknown_model", "no_usage"]),
                 ttft_ms=rnd.choice([None, rnd.lognormvariate(6, 0.8)]), duration_ms=rnd.choice([None, rnd.lognormvariate(8, 1)]),
                 proxy_request_ms=rnd.choice([None, rnd.random()]))
        out.append(r)
    return out


def write(path: Path, data: list[dict[str, Any]]) -> Path:
    store = TelemetryStore(path)
    store.start()
    for r in data:
        store.submit(r)
    store.close()
    assert store.written == len(data)
    return path


def both(db: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> tuple[dict[str, Any], dict[str, Any], list[rq.Source]]:
    conn = connect_readonly(db)
    try:
        period = "day"
        used = rq.sources(conn, kw.get("filters") or Filters(), period)
        summarised = report_json(build_report(conn, period=period, **kw))
        with monkeypatch.context() as m:
            m.setattr(rq, "sources", lambda c, f, p, *a, **k: [rq.raw_source(c, f)])
            raw = report_json(build_report(conn, period=period, **kw))
    finally:
        conn.close()
    return summarised, raw, used


def same(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


@pytest.mark.parametrize("by", ["day", "week", "month", "model", "provider", "route"])
def test_summaries_give_the_raw_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by: str) -> None:
    db = write(tmp_path / "t.db", rows(400))
    summarised, raw, used = both(db, monkeypatch, by=by, since="all")
    assert any(s.rollup for s in used)  # whole days came from the summary
    same(summarised, raw)
    assert summarised["totals"]["requests"] == 400


@pytest.mark.parametrize("filters", [
    Filters.of(model=["claude-*"]), Filters.of(provider=["openai", "gemini"]), Filters.of(errors=True),
    Filters.of(route=["sdk"], state=["completed"]),
    Filters.of(since_ts=datetime(2026, 5, 3, 13, 17).timestamp(), until_ts=datetime(2026, 5, 10, 2, 5).timestamp()),
])
def test_summaries_give_the_raw_figures_with_filters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filters: Filters) -> None:
    db = write(tmp_path / "t.db", rows(400))
    summarised, raw, used = both(db, monkeypatch, by="model", since="x", filters=filters)
    assert any(s.rollup for s in used)
    same(summarised, raw)


def test_a_duplicate_row_is_not_counted_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = rows(50)
    db = write(tmp_path / "t.db", data)
    write(db, data[:20])  # the same request keys again (INSERT OR IGNORE): no trigger fires
    summarised, raw, _ = both(db, monkeypatch, since="all")
    same(summarised, raw)
    assert summarised["totals"]["requests"] == 50


def test_the_migration_fills_the_summaries_from_stored_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    for n, script in enumerate(MIGRATIONS[:4], start=1):  # a v4 database, before the summaries existed
        conn.executescript("BEGIN;" + script + f"PRAGMA user_version={n};COMMIT;")
    data = rows(200)
    names = [c.name for c in COLUMNS if c.since <= 4]  # the columns a v4 database has
    conn.executemany(f"INSERT INTO requests ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                     [tuple(r[c] for c in names) for r in data])
    conn.commit()
    assert migrate(conn) == len(MIGRATIONS)
    conn.close()
    summarised, raw, used = both(db, monkeypatch, by="model", since="all")
    assert any(s.rollup for s in used)
    same(summarised, raw)


def test_days_written_in_another_time_zone_are_read_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30: the writer's days
    time.tzset()
    try:
        db = write(tmp_path / "t.db", rows(300))
        monkeypatch.setenv("TZ", "America/New_York")
        time.tzset()
        summarised, raw, used = both(db, monkeypatch, by="day", since="all")
        assert not any(s.rollup for s in used)  # no stored day matches this zone's offsets
        same(summarised, raw)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_json_round_trip_of_a_summarised_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = write(tmp_path / "t.db", rows(100))
    summarised, _, _ = both(db, monkeypatch, by="day", since="all")
    assert json.loads(json.dumps(summarised)) == summarised


def test_rows_on_the_midnight_boundaries_are_counted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = rows(1)[0]
    data = []
    for day in range(2, 9):
        midnight = datetime(2026, 5, day).timestamp()
        for i, t in enumerate((midnight - 0.001, midnight, midnight + 0.001, midnight + 43200)):
            data.append({**base, "request_key": f"b{day}-{i}", "started_at": t})
    db = write(tmp_path / "t.db", data)
    for since, until in ((None, None), (datetime(2026, 5, 3).timestamp(), datetime(2026, 5, 7).timestamp()),
                         (datetime(2026, 5, 3).timestamp() + 0.0005, datetime(2026, 5, 7).timestamp() + 0.0005)):
        summarised, raw, used = both(db, monkeypatch, by="day", since="x", filters=Filters(since_ts=since, until_ts=until))
        assert any(s.rollup for s in used)
        same(summarised, raw)
    assert summarised["totals"]["requests"] == sum(1 for r in data if since <= r["started_at"] < until)


def raw_rows_read(db: Path, used: list[rq.Source]) -> int:
    conn = connect_readonly(db)
    try:
        return sum(conn.execute(f"SELECT COUNT(*) FROM requests{s.cond}", s.params).fetchone()[0] for s in used if not s.rollup)
    finally:
        conn.close()


@pytest.mark.parametrize("since", ["30d", "all"])
def test_a_busy_today_is_read_from_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, since: str) -> None:
    """Issue 26 item 11: with every row from today and no --until, today is the window's open end:
    the summary holds all of it, so no raw row is read (10 s on 1.5M rows when today was read raw)."""
    now = time.time()
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    data = rows(300)
    for i, r in enumerate(data):
        r["started_at"] = midnight + (now - midnight) * i / len(data)
    db = write(tmp_path / "t.db", data)
    since_ts = None if since == "all" else now - 30 * 86400
    summarised, raw, used = both(db, monkeypatch, by="model", since=since, filters=Filters(since_ts=since_ts))
    same(summarised, raw)
    assert summarised["totals"]["requests"] == 300
    assert any(s.rollup for s in used)
    assert raw_rows_read(db, used) == 0
    latency = rq.sources(connect_readonly(db), Filters(since_ts=since_ts), "day", latency=True)
    assert raw_rows_read(db, latency) == 0


@pytest.mark.parametrize("since", ["24h", "all"])
def test_the_terminal_report_of_a_busy_short_window_reads_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str], since: str) -> None:
    """A window under two days is charted per hour (JSON, HTML), which the daily summaries cannot
    serve; the terminal tables show days only, so `report --since 24h` on a busy today reads none
    of today's rows."""
    from tokenpak_mitm.cli.main import main

    now = time.time()
    midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    data = rows(200)
    for i, r in enumerate(data):
        r["started_at"] = midnight + (now - midnight) * i / len(data)
    db = write(tmp_path / "t.db", data)
    used: list[rq.Source] = []
    real = rq.sources

    def spy(*a: Any, **k: Any) -> list[rq.Source]:
        got = real(*a, **k)
        used.extend(got)
        return got

    monkeypatch.setattr(rq, "sources", spy)
    assert main(["report", "--db", str(db), "--since", since]) == 0
    assert "· 200 requests ·" in capsys.readouterr().out
    assert any(s.rollup for s in used) and raw_rows_read(db, used) == 0
