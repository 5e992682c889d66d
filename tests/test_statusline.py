"""`tokenpak statusline`: the line Claude Code shows, from rows the real store wrote, run as Claude
Code runs it (a process fed the session JSON on stdin); every bad input gives a short line, exit 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tokenpak_mitm.cli.statusline import default_db, status
from tokenpak_mitm.store.sqlite import COLUMN_NAMES, TelemetryStore, default_db_path

SESSION = "5f1c9a7e-2b3d-4c8e-9f00-1234567890ab"


def row(key: str, started_at: float, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    base.update(request_key=key, started_at=started_at, provider="anthropic", api="messages", route_class="claude-code",
                model="claude-sonnet-4-6", terminal_state="completed", usage_source="final", billable=1, session_id=SESSION,
                input_tokens=100, cache_read_tokens=0, cache_write_tokens=0, output_tokens=10)
    base.update(values)
    return base


def write(path: Path | str, rows: list[dict[str, Any]]) -> Path | str:
    store = TelemetryStore(path)
    store.start()
    for r in rows:
        store.submit(r)
    store.close()
    assert store.written == len(rows)
    return path


def claude_code(db: Path | str, stdin: str | bytes, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command the way Claude Code's statusLine does: JSON on stdin, first stdout line shown."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run([sys.executable, "-m", "tokenpak_mitm.cli.main", "statusline", "--db", str(db)], input=data,
                          capture_output=True, timeout=60, env={**os.environ, **(env or {})})
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def session_json(sid: str = SESSION) -> str:
    return json.dumps({"hook_event_name": "Status", "session_id": sid, "transcript_path": "/tmp/t.jsonl", "cwd": "/work/repo",
                       "model": {"id": "claude-sonnet-4-6", "display_name": "Sonnet"}, "workspace": {"current_dir": "/work/repo"},
                       "version": "2.1.90", "cost": {"total_cost_usd": 0.5}})


def test_the_line_sums_this_session_and_counts_the_warm_cache_down(tmp_path: Path) -> None:
    now = time.time()
    db = write(tmp_path / "t.db", [
        row("a", now - 600, cache_write_tokens=3000, cost_usd=0.0150, savings_usd=-0.002, cache_miss_reason="cold", cache_warm_until=now - 300),
        row("b", now - 120, cache_read_tokens=3000, cost_usd=0.0030, savings_usd=0.0081, cache_warm_until=now + 250),
        row("c", now - 60, cache_read_tokens=2500, input_tokens=600, cost_usd=0.0042, savings_usd=0.0068, cache_miss_reason="prefix_changed",
            cache_warm_until=now + 250),
        row("other", now - 30, session_id="someone-else", cost_usd=9.0, savings_usd=9.0, cache_miss_reason="ttl_expired"),
    ])
    got = claude_code(db, session_json())
    assert got.returncode == 0 and got.stderr == ""
    line = got.stdout.splitlines()[0]
    assert line.startswith("tokenpak $0.0222 · saved $0.0129 · hit 59%")  # 5500 read / (800 + 5500 + 3000) prompt tokens
    assert "last miss prefix_changed" in line and "ttl_expired" not in line
    assert "warm 4m" in line  # 250 s left, counting down
    assert status(session_json(), db, now=now + 260).endswith("cache cold")


def test_unpriced_rows_are_not_counted_as_free(tmp_path: Path) -> None:
    now = time.time()
    db = write(tmp_path / "t.db", [row("a", now, cost_usd=0.000045, savings_usd=0.0), row("b", now, model="mystery", cost_usd=None)])
    assert status(session_json(), db).startswith("tokenpak $0.000045 (+1 unpriced) · saved $0 · hit 0%")


@pytest.mark.parametrize("case", ["no database", "empty database", "unknown session", "malformed stdin", "empty stdin",
                                  "not json object", "damaged file", "database before sessions", "binary stdin"])
def test_bad_input_prints_a_short_neutral_line_and_exits_0(tmp_path: Path, case: str) -> None:
    db = tmp_path / "t.db"
    stdin: str | bytes = session_json()
    if case == "empty database":
        write(db, [])
    elif case != "no database":
        write(db, [row("a", time.time(), cost_usd=0.01)])
    if case == "unknown session":
        stdin = session_json("a-session-claude-code-has-not-sent-yet")
    elif case == "malformed stdin":
        stdin = '{"session_id": "abc",'
    elif case == "empty stdin":
        stdin = ""
    elif case == "not json object":
        stdin = '["session_id"]'
    elif case == "binary stdin":
        stdin = b"\xff\xfe\x00garbage"
    elif case == "damaged file":
        db.write_bytes(b"this is not a database" * 100)
    elif case == "database before sessions":
        import sqlite3

        db.unlink()
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, started_at REAL, cost_usd REAL)")
        conn.commit()
        conn.close()
    got = claude_code(db, stdin)
    assert got.returncode == 0 and got.stderr == "", got
    lines = got.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenpak") and len(lines[0]) <= 70 and "Traceback" not in got.stdout, lines


def test_default_database_is_the_stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_db() == default_db_path()
    monkeypatch.setenv("TOKENPAK_HOME", str(tmp_path))
    assert default_db() == default_db_path() == tmp_path / "tokenpak.db"


def test_it_imports_neither_the_store_nor_the_price_table() -> None:
    """The time budget (50 ms on every Claude Code message): only the standard library is loaded."""
    code = ("import sys, io; sys.stdin = io.StringIO('{}'); from tokenpak_mitm.cli.main import main; main(['statusline']); "
            "print(sorted(m for m in sys.modules if m.startswith(('tokenpak_mitm.store', 'tokenpak_mitm.core', 'genai_prices', 'rich', 'mitmproxy'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines()[-1] == "[]"


def test_setup_claude_code_shows_how_to_wire_it(tmp_path: Path) -> None:
    out = subprocess.run([str(Path(sys.executable).with_name("tokenpak")), "setup", "claude-code"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    wiring = [line for line in out.splitlines() if '"statusLine"' in line]
    assert len(wiring) == 1 and wiring[0].startswith("#")  # a comment: the output is eval'd
    setting = json.loads(wiring[0].split(":", 1)[1])
    command = setting["statusLine"]["command"]
    assert setting["statusLine"]["type"] == "command" and command.endswith("tokenpak statusline")
    db = write(tmp_path / "t.db", [row("a", time.time(), cost_usd=0.01, savings_usd=0.02)])
    shown = subprocess.run([*command.split(), "--db", str(db)], input=session_json(), capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith("tokenpak $0.0100 · saved $0.0200")


def session_rows(now: float) -> list[dict[str, Any]]:
    """A session with misses, unpriced and unbilled rows, a warm cache, and a neighbour's rows."""
    return [
        row("a", now - 600, cache_write_tokens=3000, cost_usd=0.0150, savings_usd=-0.002, cache_miss_reason="cold", cache_warm_until=now - 300),
        row("b", now - 120, cache_read_tokens=3000, cost_usd=0.0030, savings_usd=0.0081, cache_warm_until=now + 250),
        row("c", now - 90, model="mystery", cost_usd=None, cache_read_tokens=1234, cache_warm_until=now + 250),
        row("d", now - 80, cost_usd=None, billable=0, usage_source="absent", input_tokens=None),
        row("e", now - 60, cache_read_tokens=2500, input_tokens=600, cost_usd=0.0042, savings_usd=0.0068, cache_miss_reason="prefix_changed",
            cache_warm_until=None),
        row("f", now - 50, cost_usd=0.00000123, savings_usd=0.0, cache_warm_until=now + 3700),
        row("g", now - 30, session_id="someone-else", cost_usd=9.0, savings_usd=9.0, cache_miss_reason="ttl_expired", cache_warm_until=now + 9),
        row("h", now - 20, session_id="a-big-spender", cost_usd=123.456, savings_usd=-7.5, cache_read_tokens=10**9),
    ]


def test_postgresql_gives_the_sqlite_line_for_the_same_rows(postgres: Any, tmp_path: Path) -> None:
    """A team's PostgreSQL store: the same figures, word for word, as a SQLite file with the same rows."""
    now = time.time()
    sqlite_db = write(tmp_path / "t.db", session_rows(now))
    url = write(postgres.database(), session_rows(now))
    lines = set()
    for sid in (SESSION, "someone-else", "a-big-spender", "a-session-claude-code-has-not-sent-yet"):
        for at in (now, now + 260, now + 4000):
            on_sqlite, on_postgres = status(session_json(sid), sqlite_db, now=at), status(session_json(sid), url, now=at)
            assert on_postgres == on_sqlite
            lines.add(on_postgres)
    # 6734 read of 10734 prompt tokens; the newest row's warm-until counts down
    assert {"tokenpak $0.0222 (+1 unpriced) · saved $0.0129 · hit 63% · last miss prefix_changed · warm 1h01m",
            "tokenpak $0.0222 (+1 unpriced) · saved $0.0129 · hit 63% · last miss prefix_changed · cache cold",
            "tokenpak $9.0000 · saved $9.0000 · hit 0% · last miss ttl_expired · warm 9s",
            "tokenpak: no requests through the proxy yet in this session"} <= lines, lines
    assert any(line.startswith("tokenpak $123.46 · saved $-7.5000 · hit 100%") for line in lines), lines
    got = claude_code(url, session_json())  # as Claude Code runs it
    assert got.returncode == 0 and got.stderr == "" and got.stdout.startswith("tokenpak $0.0222 (+1 unpriced) · saved $0.0129 · hit 63%"), got


def test_postgresql_without_the_table_yet_or_without_rows(postgres: Any) -> None:
    url = postgres.database()
    assert status(session_json(), url) == "tokenpak: no database yet"  # no proxy has written to it yet
    write(url, [])
    assert status(session_json(), url) == "tokenpak: no requests through the proxy yet in this session"


@pytest.mark.parametrize("fault", ["refused", "hung", "wrong password", "no such database"])
def test_postgresql_down_prints_a_short_line_fast_and_never_the_password(postgres: Any, fault: str) -> None:
    """A server down, hung (accepts, never answers) or refusing us: one neutral line, exit 0, within
    the connect timeout (psycopg's default would wait 130 s), and the URL's password nowhere."""
    import socket

    secret = "s3cret-" + "x" * 12
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if fault == "hung":
            listener.listen(8)  # the kernel completes the handshake; nobody reads the startup packet
        url = {"refused": f"postgresql://tokenpak:{secret}@127.0.0.1:{port}/tokenpak",
               "hung": f"postgresql://tokenpak:{secret}@127.0.0.1:{port}/tokenpak",
               "wrong password": postgres.url("postgres", password=secret),
               "no such database": postgres.url("nosuchdb_" + secret.replace("-", "_"))}[fault]
        if fault == "no such database":
            secret = postgres.password
        got = claude_code(url, session_json())  # (its 60 s subprocess timeout is the hang guard)
    assert got.returncode == 0 and got.stderr == "", got
    lines = got.stdout.splitlines()
    assert lines == ["tokenpak: database unreachable"], lines
    assert secret not in got.stdout + got.stderr


def test_the_postgresql_schemes_are_the_stores() -> None:
    from tokenpak_mitm.cli import statusline
    from tokenpak_mitm.store import dburl

    assert statusline._PG_SCHEMES == dburl.SCHEMES
    for db in ("postgresql://u@h/d", " Postgres://h/d", "/tmp/postgresql.db", "tokenpak.db"):
        assert statusline.is_postgres(db) == dburl.is_postgres(db)


def test_each_lookup_is_an_index_search_without_a_sort(tmp_path: Path) -> None:
    """The time budget on a big database: the sums read one covering index, the newest row and miss
    walk requests_session backwards (no temporary sort of the session's rows)."""
    import sqlite3

    from tokenpak_mitm.cli import statusline

    db = write(tmp_path / "t.db", [row(f"r{i}", time.time() + i, cost_usd=0.001) for i in range(50)])
    conn = sqlite3.connect(db)
    plans = {q: " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + q, (SESSION,)))
             for q in (statusline._TOTALS, statusline._LAST, statusline._LAST_MISS)}
    conn.close()
    assert "COVERING INDEX requests_session_sums (session_id=?)" in plans[statusline._TOTALS]
    for q in (statusline._LAST, statusline._LAST_MISS):
        assert "INDEX requests_session (session_id=?)" in plans[q] and "TEMP B-TREE" not in plans[q], plans[q]


def test_on_postgresql_the_newest_miss_is_an_index_walk_not_a_scan(postgres: Any) -> None:
    """A session with many rows and no miss on a database of many sessions: the newest miss is
    found in requests_session_misses (migration 9), not by walking the primary key past every row."""
    import psycopg

    from tokenpak_mitm.cli import statusline

    url = write(postgres.database(), [])
    assert isinstance(url, str)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO requests (request_key, started_at, session_id, cache_miss_reason, cost_usd) "
                     "SELECT 'r' || i, i, CASE WHEN i % 10 = 0 THEN 'busy' ELSE 's' || (i % 500) END, "
                     "CASE WHEN i % 10 = 3 THEN 'ttl_expired' END, 0.001 FROM generate_series(1, 50000) i")
        conn.execute("VACUUM ANALYZE requests")
        plans = {q: " | ".join(r[0] for r in conn.execute("EXPLAIN (ANALYZE, FORMAT TEXT) " + q, ("busy",))) for q in statusline._PG_QUERIES[1:]}
    miss_plan = plans[statusline._PG_QUERIES[2]]
    assert "requests_session_misses" in miss_plan and "Rows Removed by Filter" not in miss_plan, miss_plan
    assert status(session_json("busy"), url).startswith("tokenpak $5.0000 · saved $0 · hit -"), status(session_json("busy"), url)
