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

from tokenpak_mitm.cli import main
from tokenpak_mitm.store import COLUMN_NAMES, TelemetryStore, connect_readonly
from tokenpak_mitm.tail import follow, format_line


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
    assert "mystery" in lines[3] and "$?" in lines[3] and re.search(r"ttft +- ", lines[3])
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
