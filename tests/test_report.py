"""`tokenpak report`: figures equal sums computed independently from a real SQLite file.

The database is written by the real `TelemetryStore`; the expected figures are recomputed here from
the raw rows (and with SQL), including unpriced rows (NULL cost must stay unknown, never 0) and
rows without usage (requests, not tokens).
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tokenpak_mitm.cli.main import main
from tokenpak_mitm.cli.report import empty_report, parse_since, split_cost
from tokenpak_mitm.cli.report_html import render_html
from tokenpak_mitm.store.query import latency_bucket
from tokenpak_mitm.store.sqlite import COLUMN_NAMES, TelemetryStore

MODEL = "claude-sonnet-4-5"



def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """``rows`` stored in ``path`` by the real store (its writer thread, its migrations); how many it wrote."""
    store = TelemetryStore(path)
    store.start()
    for r in rows:
        store.submit(r)
    store.close()
    return store.written

def ts(day: int, hour: int = 12) -> float:
    return datetime(2026, 5, day, hour, 0).timestamp()  # local time, as the report groups days


def row(key: str, day: int, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    base.update(request_key=key, started_at=ts(day), provider="anthropic", api="messages", route_class="claude-code",
                host="api.anthropic.com", path="/v1/messages", model=MODEL, stream=1, billable=1, status_code=200,
                terminal_state="completed", usage_source="final", input_tokens=0, cache_read_tokens=0, cache_write_tokens=0,
                output_tokens=0, cache_origin="none", markers_inserted=0, client_markers=0)
    base.update(values)
    return base


ROWS = [
    row("a", 1, input_tokens=100, cache_read_tokens=1000, output_tokens=50, cost_usd=0.01, savings_usd=0.002, cache_origin="proxy", markers_inserted=2,
        cache_decision="inserted", proxy_request_ms=0.4, ttft_ms=412.4, duration_ms=2300.0),
    row("b", 1, input_tokens=40, cache_write_tokens=2000, cache_write_5m_tokens=2000, output_tokens=10, cost_usd=0.02, savings_usd=-0.001,
        cache_origin="proxy", markers_inserted=1, cache_decision="inserted", proxy_request_ms=1.5, ttft_ms=1234.5678, duration_ms=15_432.1),
    row("c", 1, input_tokens=5, cache_read_tokens=500, output_tokens=20, cost_usd=0.005, savings_usd=0.001, cache_origin="client", client_markers=1,
        route_class="sdk", cache_decision="stood_down", proxy_request_ms=0.1, ttft_ms=95.25, duration_ms=700.0),
    row("d", 2, model="mystery-model", input_tokens=300, output_tokens=30, cache_decision="below_minimum", stream=0, duration_ms=880.0),  # unknown model: unpriced
    row("e", 2, status_code=529, terminal_state="error_response", usage_source="absent", input_tokens=None, cache_read_tokens=None,
        cache_write_tokens=None, output_tokens=None, error="overloaded_error", duration_ms=120.0),  # 5xx, no usage: unpriced
    row("f", 2, api="messages.count_tokens", billable=0, input_tokens=20, stream=0),  # free endpoint: not "unpriced"
    row("g", 4, provider="openai", api="chat.completions", model="gpt-4o-mini", route_class="sdk", host="api.openai.com", input_tokens=60,
        cache_read_tokens=300, output_tokens=9, cost_usd=0.003, savings_usd=0.0005, cache_origin="unknown", terminal_state="stream_error",
        usage_source="partial", ttft_ms=300.0, duration_ms=5000.0),
    row("h", 4, input_tokens=10, output_tokens=1, cost_usd=0.0001, savings_usd=0.0, terminal_state="client_disconnected", usage_source="partial",
        ttft_ms=0.9996),
    row("i", 4, status_code=429, terminal_state="error_response", usage_source="absent", input_tokens=None, cache_read_tokens=None,
        cache_write_tokens=None, output_tokens=None, error="rate_limit_error", duration_ms=80.0),  # rejected: not billed, $0, not unpriced
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "tokenpak.db"
    assert write_rows(path, ROWS) == len(ROWS)
    return path


def raw_rows(path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests")]
    finally:
        conn.close()


def expected(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's figures, recomputed the long way from raw rows."""
    with_usage = [r for r in rows if r["usage_source"] != "absent"]
    tokens = {b: sum(r[f"{b}_tokens"] or 0 for r in with_usage) for b in ("input", "cache_read", "cache_write", "output")}
    prompt = tokens["input"] + tokens["cache_read"] + tokens["cache_write"]
    unbilled = [r for r in rows if r["cost_usd"] is None and 400 <= (r["status_code"] or 0) < 500 and r["usage_source"] == "absent"]
    priced = [r["cost_usd"] for r in rows if r["cost_usd"] is not None] + [0.0 for _ in unbilled]
    savings = {o: sum(r["savings_usd"] for r in rows if r["cache_origin"] == o and r["savings_usd"] is not None)
               for o in ("proxy", "client", "unknown", "none")}
    states: dict[str, int] = {}
    decisions: dict[str, int] = {}
    for r in rows:
        states[r["terminal_state"]] = states.get(r["terminal_state"], 0) + 1
        if r.get("cache_decision"):
            decisions[r["cache_decision"]] = decisions.get(r["cache_decision"], 0) + 1
    return {
        "cache_decisions": decisions,
        "markers_inserted": sum(r["markers_inserted"] or 0 for r in rows),
        "requests": len(rows),
        "requests_with_usage": len(with_usage),
        "tokens": tokens,
        "cache_hit_ratio": tokens["cache_read"] / prompt if prompt else None,
        "cost_usd": sum(priced) if priced else None,
        "unpriced_requests": sum(1 for r in rows if r["cost_usd"] is None and r["billable"] and r not in unbilled),
        "savings": savings,
        "terminal_states": states,
    }


def check(summary: dict[str, Any], rows: list[dict[str, Any]], totals: bool = True) -> None:
    want = expected(rows)
    assert summary["requests"] == want["requests"]
    assert summary["requests_with_usage"] == want["requests_with_usage"]
    assert {k: summary["tokens"][k] for k in want["tokens"]} == want["tokens"]
    assert summary["cache_hit_ratio"] == pytest.approx(want["cache_hit_ratio"])
    assert summary["cost_usd"] == pytest.approx(want["cost_usd"])
    assert summary["unpriced_requests"] == want["unpriced_requests"]
    for origin, value in want["savings"].items():
        assert summary["savings_usd"][origin] == pytest.approx(value)
    assert summary["terminal_states"] == want["terminal_states"]
    assert summary["cache_decisions"] == want["cache_decisions"]
    assert summary["markers_inserted"] == want["markers_inserted"]
    times = sorted(r["proxy_request_ms"] for r in rows if r.get("proxy_request_ms") is not None)
    if not totals:
        assert summary["proxy_request_ms"] is None  # the proxy's own time is a whole-window figure
    elif times:
        assert summary["proxy_request_ms"]["max"] == times[-1]
        assert summary["proxy_request_ms"]["p50"] == latency_bucket(times[min(len(times) - 1, len(times) // 2)])
    else:
        assert summary["proxy_request_ms"] is None
    for column in ("ttft_ms", "duration_ms"):
        values = sorted(r[column] for r in rows if r[column] is not None)
        if not values:
            assert summary[column] is None
            continue
        want_p = {q: latency_bucket(values[min(len(values) - 1, int(f * len(values)))]) for q, f in (("p50", .5), ("p95", .95), ("p99", .99))}
        assert summary[column] == {**want_p, "n": len(values)}, column


def report_json(db: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", "--json", "--db", str(db), *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_totals_equal_independent_sums(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report_json(db, capsys, "--since", "all")
    rows = raw_rows(db)
    check(data["totals"], rows)
    conn = sqlite3.connect(db)  # and once more with SQL, whose SUM skips NULLs like we must
    sql_cost, sql_read = conn.execute(
        "SELECT SUM(cost_usd), (SELECT SUM(cache_read_tokens) FROM requests WHERE usage_source != 'absent') FROM requests").fetchone()
    conn.close()
    assert data["totals"]["cost_usd"] == pytest.approx(sql_cost)
    assert data["totals"]["tokens"]["cache_read"] == sql_read
    # The fixed figures, so a wrong "independent" computation cannot hide a wrong report.
    assert data["totals"]["unpriced_requests"] == 2  # d (unknown model) and e (no usage); f is free, i rejected (not billed)
    assert data["totals"]["requests"] == 9 and data["totals"]["requests_without_usage"] == 2 and data["totals"]["errors"] == 4
    assert data["totals"]["ttft_ms"] == {"p50": 300.0, "p95": 1230.0, "p99": 1230.0, "n": 5}  # 1.00, 95.3, 300, 412, 1230
    assert data["totals"]["duration_ms"]["p50"] == 880.0 and data["totals"]["duration_ms"]["p99"] == 15_400.0
    assert data["totals"]["cache_hit_ratio"] == pytest.approx(1800 / (535 + 1800 + 2000))
    assert data["definitions"]["cache_hit_ratio"].startswith("cache_read / (input + cache_read + cache_write)")


@pytest.mark.parametrize("by, column", [("model", "model"), ("route", "route_class"), ("provider", "provider")])
def test_groups_equal_independent_sums(db: Path, capsys: pytest.CaptureFixture[str], by: str, column: str) -> None:
    data = report_json(db, capsys, "--since", "all", "--by", by)
    rows = raw_rows(db)
    keys = {r[column] for r in rows}
    assert {g["key"] for g in data["groups"]} == keys
    for group in data["groups"]:
        check(group, [r for r in rows if r[column] == group["key"]], totals=False)


def test_days_and_since(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report_json(db, capsys, "--since", "2026-05-02", "--by", "day")
    rows = [r for r in raw_rows(db) if r["started_at"] >= ts(2, 0)]
    check(data["totals"], rows)
    days = {g["key"]: g for g in data["groups"]}
    assert list(days) == ["2026-05-02", "2026-05-03", "2026-05-04"]  # the empty day is shown, as zero requests
    assert days["2026-05-03"]["requests"] == 0 and days["2026-05-03"]["cost_usd"] is None
    for key, day in (("2026-05-02", 2), ("2026-05-04", 4)):
        check(days[key], [r for r in rows if datetime.fromtimestamp(r["started_at"]).day == day], totals=False)
        assert math.fsum(days[key]["cost_by_bucket_usd"].values()) == pytest.approx(days[key]["cost_usd"] or 0.0)


def test_unpriced_only_group_reports_unknown_cost_not_zero(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report_json(db, capsys, "--since", "all", "--by", "model")
    mystery = next(g for g in data["groups"] if g["key"] == "mystery-model")
    assert mystery["cost_usd"] is None and mystery["unpriced_requests"] == 1


def test_cost_split_by_bucket_sums_to_recorded_cost() -> None:
    units = {"input": 3e-6, "cache_read": 0.3e-6, "cache_write": 3.75e-6, "cache_write_1h": 6e-6, "output": 15e-6}
    r = row("s", 1, input_tokens=1000, cache_read_tokens=10000, cache_write_tokens=2000, cache_write_1h_tokens=500, output_tokens=100)
    parts = split_cost(r, 0.05, lambda p, m: units)
    assert math.fsum(parts.values()) == pytest.approx(0.05)
    weights = {"input": 1000 * 3e-6, "cache_read": 10000 * 0.3e-6, "cache_write": 1500 * 3.75e-6 + 500 * 6e-6, "output": 100 * 15e-6}
    assert parts == pytest.approx({b: 0.05 * w / sum(weights.values()) for b, w in weights.items()})
    assert split_cost(r, 0.05, lambda p, m: None) == {"other": 0.05}


def test_console_tables(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", str(db), "--since", "all", "--by", "model"]) == 0
    out = capsys.readouterr().out
    assert "2 unpriced requests" in out and "2 requests reported no usage" in out
    assert MODEL in out and "mystery-model" in out and "cache hit" in out


def test_html_is_self_contained_with_charts(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "out" / "report.html"
    assert main(["report", "--db", str(db), "--since", "all", "--html", str(page)]) == 0
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<svg") == 5 and html.count("</svg>") == 5
    assert "<rect" in html and "<polyline" in html
    for needle in ("Cost per day (USD, priced requests) by model", "by token bucket", "Cache hit ratio per day", "Latency per day",
                   "Savings per day", "planner decision", "Proxy's own request-side time", MODEL, "gpt-4o-mini"):
        assert needle in html, needle
    assert "no marker (provider)" in html  # g was cached by the provider: that series and card show
    lowered = html.lower()
    for forbidden in ("http://", "https://", "//cdn", "<script", "xmlns", "src=", "href=", "url(", "@import"):
        assert forbidden not in lowered, forbidden
    assert not re.search(r"//[a-z0-9.-]+\.[a-z]{2,}", lowered)  # no scheme-relative URL either


def test_html_with_no_rows() -> None:
    html = render_html(empty_report(since="7d"))
    assert "No requests in this window." in html and "<svg" not in html


def test_parse_since() -> None:
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("30m", now=100_000.0) == 100_000.0 - 1800
    assert parse_since("all") is None
    assert parse_since("2026-05-02") == ts(2, 0)
    with pytest.raises(ValueError):
        parse_since("last tuesday")


def test_missing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", str(tmp_path / "none.db")]) == 1
    assert "no database" in capsys.readouterr().err


def test_unpriced_models_are_listed_with_counts_and_how_to_update(db: Path, capsys: pytest.CaptureFixture[str]):
    from tokenpak_mitm.cli.report import unpriced_models

    extra = [row("i", 3, model="claude-mythos-5", input_tokens=5, output_tokens=1, unpriced_reason="unknown_model"),
             row("j", 3, model="claude-mythos-5", input_tokens=7, output_tokens=1, unpriced_reason="unknown_model")]
    got = unpriced_models(ROWS + extra)
    assert got == [
        {"provider": "anthropic", "model": "claude-mythos-5", "reason": "unknown_model", "requests": 2},
        {"provider": "anthropic", "model": MODEL, "reason": "no_usage", "requests": 1},  # e: no usage (pre-v3 row)
        {"provider": "anthropic", "model": "mystery-model", "reason": "unknown", "requests": 1},  # d: pre-v3 row
    ]
    assert main(["report", "--db", str(db), "--since", "all"]) == 0
    out = capsys.readouterr().out
    assert "Unpriced requests by model" in out and "mystery-model" in out
    assert "make lock" in out and "genai-prices" in out
    assert main(["report", "--db", str(db), "--since", "all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"provider": "anthropic", "model": "mystery-model", "reason": "unknown", "requests": 1} in data["unpriced_models"]
    assert "make lock" in data["price_table"]["update"]


def test_models_without_cache_facts_are_listed_like_unpriced_ones(db: Path, capsys: pytest.CaptureFixture[str]):
    """A model the cache-facts table does not name was planned with the fallback: the report says which."""
    expected = sum(1 for r in ROWS if r["model"] == "mystery-model")
    assert expected
    assert main(["report", "--db", str(db), "--since", "all", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models_without_cache_facts"] == [
        {"provider": "anthropic", "model": "mystery-model", "requests": expected, "assumed": "claude (unknown)"}]
    assert main(["report", "--db", str(db), "--since", "all"]) == 0
    out = capsys.readouterr().out
    assert "Models without cache facts" in out and "mystery-model" in out


def test_the_cost_split_weights_come_from_the_price_table():
    from tokenpak_mitm.cli.report import _table_unit_prices

    units = _table_unit_prices("anthropic", "claude-sonnet-4-6")
    assert units is not None
    assert {k: round(v * 1e6, 6) for k, v in units.items()} == {
        "input": 3.0, "cache_read": 0.3, "cache_write": 3.75, "cache_write_1h": 6.0, "output": 15.0}
    gpt = _table_unit_prices("openai", "gpt-4o")  # no cache-write price: the split still works
    assert gpt is not None and round(gpt["cache_read"] * 1e6, 6) == 1.25


@pytest.mark.parametrize("args, keep", [
    (("--model", MODEL), lambda r: r["model"] == MODEL),
    (("--model", "claude-*"), lambda r: r["model"].startswith("claude-")),
    (("--model", "gpt-4o-mini", "--model", "mystery-model"), lambda r: r["model"] in ("gpt-4o-mini", "mystery-model")),
    (("--provider", "openai"), lambda r: r["provider"] == "openai"),
    (("--route", "sdk"), lambda r: r["route_class"] == "sdk"),
    (("--state", "error_response"), lambda r: r["terminal_state"] == "error_response"),
    (("--errors",), lambda r: r["terminal_state"] != "completed"),
    (("--since", "2026-05-02", "--until", "2026-05-04"), lambda r: ts(2, 0) <= r["started_at"] < ts(4, 0)),
    (("--errors", "--provider", "anthropic"), lambda r: r["terminal_state"] != "completed" and r["provider"] == "anthropic"),
])
def test_each_filter_narrows_the_rows_as_documented(db: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], keep: Any) -> None:
    argv = ["--since", "all", *args] if "--since" not in args else list(args)
    data = report_json(db, capsys, *argv)
    rows = [r for r in raw_rows(db) if keep(r)]
    assert rows and len(rows) < len(ROWS)  # the filter keeps some rows and drops others
    check(data["totals"], rows)
    assert data["filters"]["errors"] == ("--errors" in args)


def test_a_filter_that_matches_nothing_says_so(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", str(db), "--since", "2026-05-03", "--model", "mystery-model"]) == 0
    assert "No LLM requests recorded in this window" in capsys.readouterr().out
    data = report_json(db, capsys, "--since", "2026-05-03", "--model", "mystery-model")
    assert data["totals"]["requests"] == 0 and data["totals"]["cost_usd"] is None


def test_bad_until_is_one_line(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--db", str(db), "--since", "2026-05-03", "--until", "2026-05-02"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--until must be later than --since" in err


def test_the_sql_cost_split_equals_the_per_row_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenpak_mitm.cli.report import _table_unit_prices

    rows = [row(f"s{i}", 1, model="claude-sonnet-4-6", input_tokens=100 * i, cache_read_tokens=1000 + i, cache_write_tokens=50 * i,
                cache_write_1h_tokens=10 * i, output_tokens=7 * i) for i in range(1, 6)]
    units = _table_unit_prices("anthropic", "claude-sonnet-4-6")
    assert units is not None
    for r in rows:  # each row's cost is what the price table says, as the proxy records it
        w1h = r["cache_write_1h_tokens"]
        r["cost_usd"] = (r["input_tokens"] * units["input"] + r["cache_read_tokens"] * units["cache_read"]
                         + (r["cache_write_tokens"] - w1h) * units["cache_write"] + w1h * units["cache_write_1h"] + r["output_tokens"] * units["output"])
    path = tmp_path / "split.db"
    write_rows(path, rows)
    data = report_json(path, capsys, "--since", "all")
    want: dict[str, float] = {}
    for r in rows:
        for bucket, part in split_cost(r, r["cost_usd"]).items():
            want[bucket] = want.get(bucket, 0.0) + part
    assert data["totals"]["cost_by_bucket_usd"] == pytest.approx(want)


def test_local_days_follow_daylight_saving_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import time as time_mod

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time_mod.tzset()
    try:
        # 2026-03-29: clocks go from 02:00 to 03:00 local; rows every 40 minutes across two days.
        start = datetime(2026, 3, 28, 20, 0).timestamp()
        rows = [row(f"d{i}", 1, started_at=start + i * 2400, cost_usd=0.001) for i in range(60)]
        path = tmp_path / "dst.db"
        write_rows(path, rows)
        data = report_json(path, capsys, "--since", "all", "--by", "day")
        got = {g["key"]: g["requests"] for g in data["groups"] if g["requests"]}
        want: dict[str, int] = {}
        for r in rows:
            k = datetime.fromtimestamp(r["started_at"]).date().isoformat()
            want[k] = want.get(k, 0) + 1
        assert got == want and len(want) >= 2
        hourly = report_json(path, capsys, "--since", "all", "--by", "model")
        hours = {p["key"]: p["requests"] for p in hourly["periods"] if p["requests"]}
        want_h: dict[str, int] = {}
        for r in rows:
            k = datetime.fromtimestamp(r["started_at"]).strftime("%Y-%m-%d %H:00")
            want_h[k] = want_h.get(k, 0) + 1
        assert hourly["period"] == "hour" and hours == want_h
        assert "2026-03-29 02:00" not in hours  # that local hour does not exist
    finally:
        monkeypatch.delenv("TZ")
        time_mod.tzset()


def test_errors_are_listed_with_their_status_and_type(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report_json(db, capsys, "--since", "all")
    want: dict[tuple[Any, ...], int] = {}
    for r in raw_rows(db):
        if r["terminal_state"] != "completed":
            k = (r["terminal_state"], r["status_code"], r["error"])
            want[k] = want.get(k, 0) + 1
    got = {(e["terminal_state"], e["status_code"], e["error"]): e["requests"] for e in data["errors"]}
    assert got == want and ("error_response", 429, "rate_limit_error") in got
    assert main(["report", "--db", str(db), "--since", "all"]) == 0
    out = capsys.readouterr().out
    assert "by status and error type" in out and "rate_limit_error" in out and "overloaded_error" in out


def test_html_report_file_is_owner_only(db: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text("old")
    page.chmod(0o644)  # an existing looser file is replaced, not reused
    assert main(["report", "--db", str(db), "--since", "all", "--html", str(page)]) == 0
    assert page.stat().st_mode & 0o777 == 0o600 and page.read_text().startswith("<!DOCTYPE html>")


WIDE_ROWS = [
    *ROWS,
    row("s1", 4, model="claude-sonnet-4-5-20250929", session_id="sess-7f3a9c2e1b4d", project="checkout-service", turn=3,
        input_tokens=123_456, cache_read_tokens=9_876_543, cache_write_tokens=45_678, output_tokens=12_345, cost_usd=0.0739,
        savings_usd=1.2345, cache_origin="proxy", cache_miss_reason="prefix_changed", miss_section="system", miss_block=0,
        miss_change="system", miss_cost_usd=0.0123, cache_warm_until=ts(4) + 300, ttft_ms=1234.5, duration_ms=98_765.0),
    row("s2", 4, model="claude-haiku-4-5", session_id="sess-0b1c2d3e4f5a", project="data-pipeline-nightly", turn=9,
        input_tokens=9, cache_read_tokens=0, cache_write_tokens=0, output_tokens=9, cost_usd=0.000045, cache_miss_reason="ttl_expired",
        miss_cost_usd=0.0009, ttft_ms=88.0, duration_ms=900.0),
]


def _words(text: str) -> set[str]:
    """Every whitespace-separated word inside the table cells (and the other lines) of ``text``."""
    out = set()
    for line in text.splitlines():
        for cell in re.split(r"[│┃]", line):
            out.update(w for w in cell.split() if not all(0x2500 <= ord(c) <= 0x257F for c in w) and "pytest-of" not in w)
    return out


@pytest.mark.parametrize("args", [(), ("--by", "model"), ("--by", "session"), ("--by", "project"), ("--misses",)])
def test_tables_never_split_a_number_or_a_model_name(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                     args: tuple[str, ...]) -> None:
    """Issue 26 item 3: at every width from 60 to 200 (COLUMNS, as a terminal sets it) and when
    piped (no COLUMNS: whole lines), each word of every cell is printed whole on one line, and no
    line is wider than the width."""
    path = tmp_path / "t.db"
    write_rows(path, WIDE_ROWS)
    cmd = ["report", "--db", str(path), "--since", "2026-04-30", *args]
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(cmd) == 0
    piped = capsys.readouterr().out
    words = _words(piped)
    musts = {(): ("$0.0770",), ("--by", "model"): ("$0.0739", "claude-sonnet-4-5-20250929"), ("--by", "session"): ("$0.0739", "sess-7f3a9c2e1b4d"),
             ("--by", "project"): ("$0.0739", "data-pipeline-nightly"), ("--misses",): ("claude-sonnet-4-5-20250929", "sess-7f3a9c2e1b4d")}[args]
    for must in musts:
        assert must in words, (must, piped)
    for width in range(60, 201):
        monkeypatch.setenv("COLUMNS", str(width))
        assert main(cmd) == 0
        out = capsys.readouterr().out
        assert max(len(line) for line in out.splitlines()) <= width, (width, out)
        missing = words - _words(out)
        assert not missing, (width, sorted(missing), out)


@pytest.mark.parametrize("args, hint", [
    (("--provider", "antropic"), "--provider 'antropic' matches nothing (did you mean anthropic?); known: anthropic, openai, gemini"),
    (("--state", "complete"), "(did you mean completed?); known: completed, error_response,"),
    (("--route", "claudecode"), "(did you mean claude-code?); known: claude-code, sdk, other"),
    (("--model", "claude-sonet-4-5"), "matches nothing in this database (did you mean claude-sonnet-4-5?); known: "),
    (("--model", "gpt-5*"), "--model 'gpt-5*' matches nothing in this database; known: "),
])
def test_an_unknown_filter_value_names_the_known_ones(db: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], hint: str) -> None:
    """Issue 26 item 7: a misspelt filter value used to give 0 rows silently."""
    for cmd in (["report", "--db", str(db), "--since", "all", *args], ["tail", "--once", "--db", str(db), *args]):
        assert main(cmd) == 2
        captured = capsys.readouterr()
        assert hint in captured.err and captured.err.count("\n") == 1 and captured.out == "", (cmd, captured)
    assert main(["report", "--db", str(db), "--since", "all", "--provider", "gemini"]) == 0  # known, just no rows: not an error
    assert "0 requests" in capsys.readouterr().out


def test_html_writes_the_page_without_the_terminal_report(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "r.html"
    assert main(["report", "--db", str(db), "--since", "all", "--html", str(page)]) == 0
    captured = capsys.readouterr()
    assert page.is_file() and captured.out == "" and captured.err.strip() == f"tokenpak report: wrote {page}"


@pytest.mark.parametrize("args, tries", [
    (("--since", "all", "--provider", "gemini"), "(try fewer filters or `tokenpak doctor`)"),
    (("--since", "2026-06-01"), "(try --since all or `tokenpak doctor`)"),
    (("--since", "all", "--until", "2026-04-01"), "(try no --until or `tokenpak doctor`)"),
])
def test_the_empty_window_hint_never_repeats_what_was_passed(db: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], tries: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # prose wraps at the terminal's width (80 under a captured pytest worker)
    assert main(["report", "--db", str(db), *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"No LLM requests recorded in this window {tries}." in lines


def test_one_is_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tokenpak_mitm.cli.tables import plural

    path = tmp_path / "one.db"
    store = TelemetryStore(path)
    store.start()
    store.submit(ROWS[4])  # one 529 without usage: unpriced, no usage
    store.close()
    assert main(["report", "--db", str(path), "--since", "all"]) == 0
    out = capsys.readouterr().out
    assert "· 1 request ·" in out and "1 unpriced request: its cost is unknown" in out
    assert "1 request reported no usage: counted as a request, not as tokens." in out
    assert "1 requests" not in out
    assert [plural(0, "warning"), plural(1, "warning"), plural(2, "failure")] == ["0 warnings", "1 warning", "2 failures"]


@pytest.fixture
def utc_writer(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The proxy wrote in UTC; --timezone changes this process's zone, restored after the test."""
    import time as _time

    monkeypatch.setenv("TZ", "UTC")
    _time.tzset()
    yield
    monkeypatch.undo()
    _time.tzset()


def _at(text: str) -> float:

    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


SPREAD = [  # UTC times; in Europe/Berlin (UTC+2 in summer) the late ones fall on the next day
    row("w1", 1, started_at=_at("2026-04-27T08:00"), input_tokens=10, cost_usd=0.001),  # Monday, ISO week 18
    row("w2", 1, started_at=_at("2026-04-30T23:30"), input_tokens=20, cost_usd=0.002, model="claude-haiku-4-5"),  # Berlin: May 1
    row("w3", 1, started_at=_at("2026-05-03T21:59"), input_tokens=30, cost_usd=0.004),  # Sunday 23:59 Berlin: still week 18
    row("w4", 1, started_at=_at("2026-05-03T22:01"), input_tokens=40, cost_usd=0.008, model="claude-haiku-4-5"),  # Berlin: Monday, W19
    row("w5", 1, started_at=_at("2026-05-31T23:00"), input_tokens=50, cost_usd=0.016),  # Berlin: June 1
    row("w6", 1, started_at=_at("2026-06-02T12:00"), input_tokens=60, cost_usd=0.032, model="gpt-4o-mini", provider="openai"),
]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata"])
@pytest.mark.parametrize("by", ["day", "week", "month"])
def test_weeks_months_and_time_zones_equal_independent_sums(tmp_path: Path, capsys: pytest.CaptureFixture[str], utc_writer: None,
                                                             zone: str, by: str) -> None:
    """Issue 26 item 13: --by week (ISO, from Monday) / month and --timezone, as ccusage has:
    each group holds exactly the rows whose local time in that zone falls in it."""
    from zoneinfo import ZoneInfo

    path = tmp_path / "t.db"
    write_rows(path, SPREAD)
    data = report_json(path, capsys, "--since", "2026-04-01", "--by", by, "--timezone", zone)
    assert data["timezone"] == zone

    def key(r: dict[str, Any]) -> str:
        local = datetime.fromtimestamp(r["started_at"], ZoneInfo(zone))
        year, week, _ = local.isocalendar()
        return {"day": local.date().isoformat(), "week": f"{year}-W{week:02d}", "month": local.strftime("%Y-%m")}[by]

    rows = raw_rows(path)
    want: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        want.setdefault(key(r), []).append(r)
    got = {g["key"]: g for g in data["groups"] if g["requests"]}
    assert sorted(got) == sorted(want)
    for k, group in got.items():
        check(group, want[k], totals=False)
    check(data["totals"], rows)


def test_since_is_midnight_in_the_chosen_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str], utc_writer: None) -> None:
    path = tmp_path / "t.db"
    write_rows(path, SPREAD)
    utc = report_json(path, capsys, "--since", "2026-05-01", "--timezone", "UTC")
    berlin = report_json(path, capsys, "--since", "2026-05-01", "--timezone", "Europe/Berlin")
    assert utc["totals"]["requests"] == 4 and berlin["totals"]["requests"] == 5  # 23:30 UTC on Apr 30 is May 1 in Berlin


def test_an_unknown_time_zone_is_one_line_naming_the_closest(db: Path, capsys: pytest.CaptureFixture[str], utc_writer: None) -> None:
    assert main(["report", "--db", str(db), "--timezone", "Europe/Berln"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown time zone 'Europe/Berln' (did you mean Europe/Berlin?)" in err


@pytest.mark.parametrize("by", ["day", "week", "month", "provider", "route"])
def test_breakdown_gives_each_groups_models(tmp_path: Path, capsys: pytest.CaptureFixture[str], utc_writer: None, by: str) -> None:

    path = tmp_path / "t.db"
    write_rows(path, [*ROWS, *SPREAD])
    data = report_json(path, capsys, "--since", "all", "--by", by, "--breakdown", "--timezone", "UTC")
    plain = report_json(path, capsys, "--since", "all", "--by", by, "--timezone", "UTC")
    rows = raw_rows(path)
    column = {"provider": "provider", "route": "route_class"}.get(by)
    for group, same in zip(data["groups"], plain["groups"], strict=True):
        assert {k: v for k, v in group.items() if k != "models"} == same
        mine = [r for r in rows if (str(r[column]) if column else
                                    {"day": lambda d: d.date().isoformat(), "week": lambda d: f"{d.isocalendar()[0]}-W{d.isocalendar()[1]:02d}",
                                     "month": lambda d: d.strftime("%Y-%m")}[by](datetime.fromtimestamp(r["started_at"], UTC))) == group["key"]]
        models = {m["key"]: m for m in group["models"]}
        assert sorted(models) == sorted({r["model"] for r in mine})
        for model, summary in models.items():  # sums per model (latency is per group only)
            want = expected([r for r in mine if r["model"] == model])
            assert (summary["requests"], summary["tokens"]["input"], summary["unpriced_requests"], summary["terminal_states"]) == (
                want["requests"], want["tokens"]["input"], want["unpriced_requests"], want["terminal_states"])
            assert summary["cost_usd"] == pytest.approx(want["cost_usd"])
    assert "models" not in plain["groups"][0]
    assert main(["report", "--db", str(path), "--since", "all", "--by", by, "--breakdown", "--timezone", "UTC"]) == 0
    out = capsys.readouterr().out
    assert "│   claude-haiku-4-5 " in out  # the models under their group, indented
