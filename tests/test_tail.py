"""`tokenpak tail`: one line per request, read while the store keeps writing."""

from __future__ import annotations

import queue
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tokenpak_mitm.cli.main import main
from tokenpak_mitm.cli.tail import COMPACT_BELOW, follow, format_compact, format_line, render
from tokenpak_mitm.store.sqlite import COLUMN_NAMES, TelemetryStore, connect_readonly


def row(key: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    base.update(request_key=key, started_at=time.time(), provider="anthropic", api="messages", route_class="claude-code",
                model="claude-sonnet-4-5", terminal_state="completed", usage_source="final", input_tokens=12,
                cache_read_tokens=0, cache_write_tokens=0, output_tokens=5, cost_usd=0.000123, ttft_ms=250.0)
    base.update(values)
    return base


ROWS = [
    row("hit", cache_read_tokens=4000, markers_inserted=1),
    row("write", cache_write_tokens=3000, markers_inserted=1),
    row("miss", client_markers=1),
    row("none", model="mystery", cost_usd=None, ttft_ms=None),
    row("absent", usage_source="absent", input_tokens=None, cache_read_tokens=None, cache_write_tokens=None, output_tokens=None,
        terminal_state="upstream_disconnected", cost_usd=None, route_class="sdk"),
]


def write(path: Path, rows: list[dict[str, Any]]) -> None:
    store = TelemetryStore(path)
    store.start()
    for r in rows:
        store.submit(r)
    store.close()


def test_once_prints_every_existing_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "t.db"
    write(db, ROWS)
    assert main(["tail", "--once", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(ROWS)
    assert [f" {v} " in line for v, line in zip(["hit", "write", "miss", "none", "none"], lines, strict=True)] == [True] * 5
    assert "in 12 read 4,000 write 0 out 5" in lines[0] and "$0.000123" in lines[0] and re.search(r"ttft +250ms", lines[0])
    assert "mystery" in lines[3] and "unknown" in lines[3] and re.search(r"ttft +- ", lines[3])
    assert "usage not reported" in lines[4] and lines[4].endswith("upstream_disconnected") and " sdk " in lines[4]


def test_format_line_fields() -> None:
    line = format_line(row("x", cache_read_tokens=10, route_class="claude-code", terminal_state="stream_error"))
    assert "claude-code" in line and "claude-sonnet-4-5" in line and " hit " in line and line.endswith("stream_error")


def test_once_without_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "--once", "--db", str(tmp_path / "missing.db")]) == 1
    assert "no database" in capsys.readouterr().err


def test_follow_sees_rows_written_while_it_reads(tmp_path: Path) -> None:
    """The live view polls id > last_id over a read-only connection while the store writes."""
    db = tmp_path / "t.db"
    write(db, ROWS[:2])
    lines: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    def reader() -> None:
        for line in follow(db, once=False, interval=0.05, backlog=1):
            lines.put(line)
            if stop.is_set():
                return

    threading.Thread(target=reader, daemon=True).start()
    assert "write" in lines.get(timeout=30)  # backlog=1: only the newest existing row
    store = TelemetryStore(db)
    store.start()
    try:
        for r in ROWS[2:]:
            store.submit(r)
        got = [lines.get(timeout=30) for _ in ROWS[2:]]
    finally:
        stop.set()
        store.close()
    assert store.written == len(ROWS) - 2 and store.last_error is None  # the writer was never blocked
    assert [" miss " in got[0], "mystery" in got[1], "usage not reported" in got[2]] == [True, True, True]
    assert lines.empty()  # nothing printed twice


def test_reader_connection_cannot_write(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    write(db, ROWS[:1])
    conn = connect_readonly(db)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM requests")
    conn.close()


MIXED = [
    row("ok", model="claude-sonnet-4-6", cache_read_tokens=123_456, input_tokens=20, output_tokens=1500, cost_usd=0.0421, ttft_ms=412.0),
    row("err", model="claude-sonnet-4-6", terminal_state="error_response", status_code=429, error="rate_limit_error", usage_source="absent",
        input_tokens=None, cache_read_tokens=None, cache_write_tokens=None, output_tokens=None, cost_usd=0.0, ttft_ms=None, duration_ms=95.0),
    row("json", provider="openai", model="gpt-4o-mini-2024-07-18", route_class="sdk", stream=0, ttft_ms=None, duration_ms=12_345.0),
    row("gem", provider="gemini", model="gemini-2.5-flash", route_class="other", terminal_state="client_disconnected",
        error="Client disconnected.", ttft_ms=900.0),
]


@pytest.mark.parametrize("width", [60, 80, 99])
def test_compact_layout_fits_narrow_panes(width: int) -> None:
    for r in MIXED + ROWS:
        line = render(r, width, colour=False)
        assert len(line) <= width, line
        assert line == format_compact(r) or len(format_compact(r)) > width
    line80 = render(MIXED[0], 80, colour=False)
    assert "sonnet-4-6" in line80 and "20/123k/0/1.5k" in line80 and "$0.0421" in line80 and "412ms" in line80 and line80.endswith(" ok")
    assert render(MIXED[1], 80, colour=False).endswith("429 rate_limit")  # status and error type, not just "error_response"
    assert render(MIXED[3], 80, colour=False).endswith(" client closed")
    assert all(len(format_compact(r)) <= 80 for r in MIXED + ROWS)  # an 80-column pane never cuts a line
    assert "d12.3s" in render(MIXED[2], 80, colour=False)  # a non-streamed row shows its duration


WARM = time.time() + 240
EDGE = [
    *MIXED,
    row("tiny", cost_usd=0.000045, cache_read_tokens=3000, cache_miss_reason="below_minimum", miss_cost_usd=0.0000123, cache_warm_until=WARM),
    row("long", model="claude-sonnet-4-5-20250929-very-long-deployment-name", route_class="claude-code", cache_write_tokens=123_456_789,
        input_tokens=1_234_567, output_tokens=99_999, cost_usd=12.3456789, cache_miss_reason="prefix_changed", miss_cost_usd=1.25,
        cache_warm_until=WARM),
    row("529", terminal_state="error_response", status_code=529, error="overloaded_error", usage_source="absent", input_tokens=None,
        cache_read_tokens=None, cache_write_tokens=None, output_tokens=None, cost_usd=None, ttft_ms=None, duration_ms=30_000.0),
    row("stream", terminal_state="stream_error", error="overloaded_error", cost_usd=0.0123, cache_miss_reason="ttl_expired",
        miss_cost_usd=0.004, cache_warm_until=WARM),
    row("proxy", terminal_state="proxy_error", error="ValueError: a long message from somewhere deep inside", cost_usd=None),
]


def _outcomes(r: dict[str, Any]) -> tuple[str, str]:
    from tokenpak_mitm.cli.tail import _state

    return _state(r, False), _state(r, True)


def test_every_width_keeps_the_outcome_and_the_whole_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 26 item 2: at every width from 60 to 200, `tail --once --width W` on a real database
    prints lines that fit, each with its whole outcome (state, status, error) and its whole cost."""
    from tokenpak_mitm.cli.tail import money

    db = tmp_path / "t.db"
    write(db, EDGE)
    for width in range(60, 201):
        assert main(["tail", "--once", "--db", str(db), "--width", str(width)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == len(EDGE)
        for line, r in zip(lines, EDGE, strict=True):
            assert len(line) <= width, (width, line)
            wide, short = _outcomes(r)
            if r["request_key"] == "proxy" and width < 70:
                assert " proxy error" in line  # the state word stays whole; only an over-long error text may be cut
            else:
                assert wide in line or line.endswith(short) or f" {short} miss:" in line, (width, line)
            cost = r["cost_usd"]
            shown = [money(cost, 6), money(cost, 4)]
            assert any(f" {c}" in line for c in shown), (width, line, shown)
            if width >= 140:
                assert line == format_line(r) or len(format_line(r)) > width
        if width >= 110:  # the wide facts while they fit: the full state word, not the compact one
            assert "error_response 429 rate_limit_error" in lines[1], (width, lines[1])


def test_small_costs_are_not_shown_as_zero() -> None:
    from tokenpak_mitm.cli.tail import money

    assert money(0.000045) == "$0.000045" and money(0.000045, 6) == "$0.000045"
    assert money(0.0016) == "$0.0016" and money(0.00000012, 6) == "$0.00000012" and money(0.0) == "$0" and money(None) == "unknown"
    tiny = render(EDGE[4], 80, colour=False)
    assert "$0.000045" in tiny and "$0.0000 " not in tiny


def test_help_explains_the_compact_abbreviations(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["tail", "--help"])
    out = capsys.readouterr().out
    assert "d8ms" in out and "short = below_minimum" in out and "in/read/write/out" in out


def test_wide_layout_names_state_error_and_duration() -> None:
    assert len(render(MIXED[0], COMPACT_BELOW, colour=False)) <= 140
    assert render(MIXED[1], None, colour=False).endswith("error_response 429 rate_limit_error")
    assert re.search(r"dur +12\.3s", render(MIXED[2], None, colour=False))
    assert render(MIXED[3], None, colour=False).endswith("client_disconnected Client disconnected.")


def test_colour_only_when_asked() -> None:
    assert "\x1b[" not in render(MIXED[0], 80, colour=False)
    assert render(MIXED[0], 80, colour=True).startswith("\x1b[32m")  # a hit is green
    assert render(MIXED[1], 80, colour=True).startswith("\x1b[31m")  # an error is red


def test_filters_narrow_tail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "t.db"
    write(db, MIXED)
    cases = {
        ("--errors",): {"err", "gem"},
        ("--provider", "openai"): {"json"},
        ("--model", "gemini-*"): {"gem"},
        ("--model", "claude-sonnet-4-6", "--state", "completed"): {"ok"},
        ("--route", "sdk", "--route", "other"): {"json", "gem"},
    }
    for args, want in cases.items():
        assert main(["tail", "--once", "--db", str(db), "--width", "200", *args]) == 0
        lines = capsys.readouterr().out.splitlines()
        got = {k for k, r in zip(["ok", "err", "json", "gem"], MIXED, strict=True) if any(_same(line, r) for line in lines)}
        assert got == want and len(lines) == len(want), (args, lines)


def _same(line: str, r: dict[str, Any]) -> bool:
    return line == format_line(r)


def test_follow_with_a_filter_shows_only_matching_new_rows(tmp_path: Path) -> None:
    from tokenpak_mitm.store.query import Filters

    db = tmp_path / "t.db"
    write(db, MIXED)
    lines = list(follow(db, once=True, interval=0.05, backlog=1, filters=Filters.of(errors=True), width=None))
    assert lines == [format_line(MIXED[3])]  # the last matching row only


def test_the_line_names_the_miss_its_cost_and_until_when_the_cache_is_warm():
    warm = time.time() + 300
    line = format_line(row("m", cache_write_tokens=3000, cache_miss_reason="ttl_expired", miss_cost_usd=0.011388, cache_warm_until=warm))
    assert line.endswith(f"miss ttl_expired +$0.011388  warm until {time.strftime('%H:%M:%S', time.localtime(warm))}")
    assert "miss" not in format_line(row("ok", cache_read_tokens=4000)).split("completed")[1]


def test_the_compact_line_names_the_miss_in_a_word():
    line = format_compact(row("m", model="claude-sonnet-4-6", cache_write_tokens=3000, cache_miss_reason="prefix_changed", miss_cost_usd=0.011))
    assert line.endswith(" miss:changed") and len(line) <= 80
