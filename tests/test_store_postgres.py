"""The PostgreSQL store against a real PostgreSQL 15 (the session's ``postgres`` fixture).

What is counted here is what users are promised: one row per request, never doubled, never lost
(the server down at start, stopped and restarted under load, three proxies writing one database),
no password in any output, and reports that give on PostgreSQL the figures they give on SQLite.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tokenpak_mitm.cli import doctor, report, tail
from tokenpak_mitm.sim.client import build_request, request
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.replies import Reply, error_json, render_frames, render_json
from tokenpak_mitm.sim.upstream import FakeUpstream, Received, Script, sse_script
from tokenpak_mitm.store.dburl import display, local_base, scrub
from tokenpak_mitm.store.dialect import POSTGRESQL, glob_regex
from tokenpak_mitm.store.postgres import schema_version
from tokenpak_mitm.store.schema import migrations
from tokenpak_mitm.store.sqlite import COLUMN_NAMES, TelemetryStore, spill_paths, store_local_base

NOW = time.time()


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENPAK_HOME", str(tmp_path / "home"))  # spill files of a URL live here


def count(url: str, sql: str = "SELECT count(*), count(DISTINCT request_key) FROM requests") -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        return tuple(conn.execute(sql).fetchone())


def row(i: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        request_key=f"k{i}", started_at=NOW - i * 977.0, provider=("anthropic", "openai")[i % 2], model=f"model-{i % 3}",
        route_class=("sdk", "claude-code", None)[i % 3], stream=i % 2, input_tokens=10 + i, cache_read_tokens=i * 3,
        cache_write_tokens=i % 7, cache_write_1h_tokens=i % 3, output_tokens=5 + i % 11, cost_usd=0.001 * i if i % 5 else None,
        savings_usd=0.0001 * i, cache_origin=("proxy", "client", None)[i % 3], ttft_ms=i * 1.7, duration_ms=i * 13.1,
        proxy_request_ms=i * 0.013, terminal_state=("error_response" if i % 4 == 0 else "completed"),
        usage_source=("absent" if i % 6 == 0 else "final"), status_code=(429 if i % 4 == 0 else 200),
        error=("rate_limit_error" if i % 4 == 0 else None), markers_inserted=i % 2, unpriced_reason=None if i % 5 else "unknown_model",
        session_id=f"s{i % 9}", turn=i % 4, cache_miss_reason=("cold", "ttl_expired", None)[i % 3], miss_cost_usd=0.0002 * i,
    )
    base.update(kw)
    return base


def write(db: str, rows: list[dict[str, Any]]) -> TelemetryStore:
    store = TelemetryStore(db)
    store.start()
    for r in rows:
        store.submit(r)
    store.close()
    return store


# -- the writer ------------------------------------------------------------------------------------
def test_exactly_once_by_request_key(postgres: Any) -> None:
    url = postgres.database()
    rows = [row(i) for i in range(300)]
    write(url, rows + rows[:100])  # the same flow ids again, in a later batch
    assert count(url) == (300, 300)
    # a spill file holding rows already stored (a commit whose answer was lost) is imported without doubling
    spill = spill_paths(store_local_base(url))[0]
    spill.parent.mkdir(parents=True, exist_ok=True)
    spill.write_text("".join(json.dumps(r) + "\n" for r in rows[250:] + [row(i) for i in range(300, 320)]))
    write(url, [])
    assert count(url) == (320, 320)
    assert not spill.exists()
    # the daily summaries counted each row once
    assert count(url, "SELECT sum(requests) FROM report_daily") == (320,)


def test_odd_values_do_not_fail_a_batch(postgres: Any) -> None:
    url = postgres.database()
    store = write(url, [row(0, path="/v1/\x00x", input_tokens=2**70), row(1, stream=True, cost_usd=3), row(2)])
    assert store.dropped == 0 and count(url) == (3, 3)
    assert count(url, "SELECT path, input_tokens FROM requests WHERE request_key = 'k0'") == ("/v1/\ufffdx", None)


def test_migrates_an_older_schema_in_place(postgres: Any) -> None:
    url = postgres.database()
    with psycopg.connect(url, autocommit=True) as conn:  # what the first release created: schema v1
        conn.execute(migrations(POSTGRESQL)[0])
        conn.execute("CREATE TABLE tokenpak_schema (version INTEGER NOT NULL); INSERT INTO tokenpak_schema VALUES (1)")
        conn.execute("INSERT INTO requests (request_key, started_at, provider, model, input_tokens, usage_source, terminal_state) "
                     "VALUES ('old', %s, 'anthropic', 'claude-x', 7, 'final', 'completed')", (NOW - 86400 * 3,))
    write(url, [row(1)])
    with psycopg.connect(url) as conn:
        assert schema_version(conn) == len(migrations(POSTGRESQL))
        cols = [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'requests' ORDER BY ordinal_position")]
        assert cols == ["id", *COLUMN_NAMES]  # the shared definition, in order
        assert conn.execute("SELECT input_tokens FROM requests WHERE request_key = 'old'").fetchone() == (7,)
        assert conn.execute("SELECT sum(requests), sum(t_in) FROM report_daily").fetchone() == (2, 7 + 11)


def test_down_at_start_spills_then_imports_when_back(postgres: Any, caplog: pytest.LogCaptureFixture) -> None:
    url = postgres.database()
    postgres.stop()
    store = TelemetryStore(url)
    try:
        with caplog.at_level(logging.WARNING):
            store.start()
            for i in range(50):
                store.submit(row(i))
            deadline = time.monotonic() + 30
            while store.spilled < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert store.spilled == 50 and store.written == 0
            assert spill_paths(store_local_base(url))[0].exists()
    finally:
        postgres.start()
    for i in range(50, 60):
        store.submit(row(i))
    store.close()
    assert count(url) == (60, 60)
    assert store.dropped == 0
    assert not spill_paths(store_local_base(url))[0].exists()
    warned = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and postgres.password not in warned[0]


@pytest.mark.parametrize("fault", ["password", "database"])
def test_wrong_password_or_unknown_database_one_clear_line(postgres: Any, fault: str, caplog: pytest.LogCaptureFixture) -> None:
    secret = "hunter2-" + fault
    url = postgres.url("nosuchdb", password=postgres.password) if fault == "database" else postgres.url("postgres", password=secret)
    secret = postgres.password if fault == "database" else secret
    with caplog.at_level(logging.INFO):
        store = write(url, [row(i) for i in range(5)])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in text and secret not in (store.last_error or "")
    want = 'database "nosuchdb" does not exist' if fault == "database" else "password authentication failed"
    lines = [r.getMessage() for r in caplog.records if want in r.getMessage()]
    assert len(lines) == 1, text
    assert store.spilled == 5 and store.dropped == 0  # kept for when the URL is fixed


def test_urls_are_shown_without_password() -> None:
    url = "postgresql://alice:s3cr%40t@db.example:5432/tokens?sslmode=require"
    assert display(url) == "postgresql://alice:***@db.example:5432/tokens?sslmode=require"
    assert "s3cr" not in scrub(f"failed for {url}; password=s3cr@t and s3cr%40t", url)
    assert display("/tmp/x.db") == "/tmp/x.db"
    home = Path("/h")
    assert local_base(url, home) == local_base(url.replace("s3cr%40t", "other"), home)  # a new password keeps the spill file
    assert local_base(url, home) != local_base(url.replace("tokens", "other"), home)
    assert glob_regex("claude-*-4.?") == r"^claude\-.*\-4\..$"


# -- reports: the same figures as SQLite ------------------------------------------------------------
def _same(a: Any, b: Any, where: str = "") -> list[str]:
    """Differences figure by figure (float sums may differ in the last bits: summation order)."""
    if isinstance(a, float) or isinstance(b, float):
        ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        return [] if ok else [f"{where}: {a!r} != {b!r}"]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(set(a) ^ set(b))}"]
        return [d for k in a for d in _same(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} != {len(b)} items"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _same(x, y, f"{where}[{i}]")]
    return [] if a == b and type(a) is type(b) else [f"{where}: {a!r} != {b!r}"]


@pytest.fixture(scope="module")
def twin(postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The same 1,500 rows (over ~17 days) in SQLite and in PostgreSQL."""
    url = postgres.database()
    path = str(tmp_path_factory.mktemp("twin") / "tokenpak.db")
    rows = [row(i) for i in range(1500)]
    for db in (path, url):
        write(db, rows)
    return path, url


def _cli(module: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    code = module.run(parser.parse_args(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


REPORT_ARGS = [
    [], ["--by", "model"], ["--by", "route"], ["--by", "provider"], ["--by", "week"], ["--by", "month", "--since", "30d"], ["--by", "session"], ["--by", "project"], ["--misses"],
    ["--since", "7d"], ["--since", "1d", "--by", "model"], ["--since", "30d", "--until", "3d"], ["--model", "model-*"],
    ["--model", "model-[12]", "--by", "provider"], ["--provider", "openai", "--state", "completed"], ["--errors"],
    ["--route", "sdk", "--by", "model"],
]


@pytest.mark.parametrize("args", REPORT_ARGS, ids=lambda a: " ".join(a) or "default")
def test_report_json_equals_sqlite(twin: tuple[str, str], args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    path, url = twin
    outs = []
    for db in (path, url):
        code, out, err = _cli(report, [*args, "--json", "--db", db], capsys)
        assert code == 0, err
        data = json.loads(out)
        assert data.pop("db") == display(db)
        for relative in ("since_ts", "until_ts"):  # "now" moved between the two runs
            data.pop(relative)
        outs.append(data)
    assert outs[0]["totals"]["requests"] > 0
    assert _same(*outs) == []


def test_report_text_html_tail_doctor_on_postgres(twin: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, url = twin
    texts = []
    for db in (path, url):
        code, out, err = _cli(report, ["--db", db, "--by", "model", "--html", str(tmp_path / "r.html")], capsys)
        assert code == 0, err
        texts.append(out.replace(display(db), "DB"))
        html = (tmp_path / "r.html").read_text()
        assert postgres_password(url) not in html
    assert texts[0] == texts[1]
    tails = []
    for db in (path, url):
        code, out, err = _cli(tail, ["--db", db, "--once", "--last", "40", "--model", "model-1", "--color", "never"], capsys)
        assert code == 0, err
        tails.append(out)
    assert tails[0] == tails[1] and tails[0].count("\n") == 40
    checks = doctor.check_database(url)
    assert checks[0].status == "ok", checks[0]
    assert "1500 rows" in checks[0].detail and postgres_password(url) not in checks[0].detail
    bad = doctor.check_database(url.replace(postgres_password(url), "wrong-pw"))
    assert bad[0].status == "fail" and "password authentication failed" in bad[0].detail and "wrong-pw" not in bad[0].detail


def postgres_password(url: str) -> str:
    return url.split(":")[2].split("@")[0]


def test_report_errors_show_no_password(postgres: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url = postgres.url("postgres", password="not-the-password-123")
    for module in (report, tail):
        code, out, err = _cli(module, ["--db", url, *(["--once"] if module is tail else [])], capsys)
        assert code == 1 and "password authentication failed" in err and "not-the-password-123" not in out + err
        assert err.count("\n") == 1


# -- real proxies ---------------------------------------------------------------------------------
MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5")


def traffic_handler(received: list[Received]) -> Callable[[Received], Script]:
    """A deterministic provider: the reply (streamed or not, usage, errors) follows the request's x-n."""
    lock = threading.Lock()

    def handle(req: Received) -> Script:
        with lock:
            received.append(req)
        n = int(req.header("x-n") or 0)
        body = req.json()
        if n % 17 == 5:
            return _json(429, error_json("anthropic", 429, "slow down"))
        reply = Reply(id=f"msg_{n}", model=body["model"], text=f"answer {n}", usage={
            "input_tokens": 12 + n % 40, "cache_read_input_tokens": (n * 37) % 900, "cache_creation_input_tokens": (n % 3) * 64,
            "output_tokens": 6 + n % 23})
        if body.get("stream"):
            return sse_script(render_frames("anthropic", reply), headers=[("request-id", f"req_{n}")])
        return _json(200, render_json("anthropic", reply))

    return handle


def _json(status: int, obj: dict[str, Any]) -> Script:
    from tokenpak_mitm.sim.upstream import Step

    data = json.dumps(obj).encode()
    return Script(status=status, reason="OK" if status == 200 else "Error", headers=[("content-type", "application/json")],
                  steps=[Step(data)], chunked=False)


def send(port: int, n: int) -> int:
    body = json.dumps({"model": MODELS[n % 2], "max_tokens": 64, "stream": n % 3 != 0,
                       "messages": [{"role": "user", "content": f"question {n}"}]}).encode()
    hs = [("content-type", "application/json"), ("x-n", str(n)), ("x-api-key", "sk-ant-test-0000000000000000")]
    return request(port, build_request("POST", "/v1/messages", body, hs)).status


def proxies(upstream: FakeUpstream, dbs: list[str], tmp: Path) -> Iterator[MitmdumpProcess]:
    for i, db in enumerate(dbs):
        (tmp / f"conf{i}").mkdir(parents=True, exist_ok=True)
        yield MitmdumpProcess(f"reverse:{upstream.url}", db=db, confdir=tmp / f"conf{i}").start()


def run_load(ports: list[int], total: int, during: Callable[[], None] | None = None, threads: int = 6) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()
    counter = iter(range(total))
    half = threading.Event()

    def worker() -> None:
        for n in counter:
            status = send(ports[n % len(ports)], n)
            with lock:
                statuses.append(status)
                if len(statuses) == total // 3:
                    half.set()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    if during is not None:
        half.wait(120)
        during()
    for t in pool:
        t.join(300)
    return statuses


@pytest.mark.e2e
def test_three_proxies_one_database_postgres_restarted_mid_load(postgres: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Done when: rows == requests, none doubled, and the report equals a single SQLite proxy's of the same traffic."""
    url = postgres.database()
    sqlite_db = str(tmp_path / "single.db")
    received: list[Received] = []
    total = 240
    with FakeUpstream(traffic_handler(received)) as up:
        team = list(proxies(up, [url, url, url], tmp_path))
        try:
            statuses = run_load([p.port for p in team], total, during=postgres.restart)
        finally:
            for p in team:
                p.stop()
        single = next(proxies(up, [sqlite_db], tmp_path / "single"))
        try:
            alone = run_load([single.port], total)
        finally:
            single.stop()
    output = "".join(p.output() for p in team)
    assert len(statuses) == total == len(alone)
    assert sorted(statuses) == sorted(alone) and statuses.count(200) == total - len([n for n in range(total) if n % 17 == 5])
    assert count(url) == (total, total), output[-3000:]
    assert postgres.password not in output
    assert not spill_paths(store_local_base(url))[0].exists()
    reports = []
    for db in (sqlite_db, url):
        code, out, err = _cli(report, ["--json", "--db", db, "--by", "model"], capsys)
        assert code == 0, err
        data = json.loads(out)
        data.pop("db")
        for part in (data["totals"], *data["groups"], *(data["periods"] or [])):
            for latency in ("ttft_ms", "duration_ms", "proxy_request_ms"):  # measured: never equal between two runs
                part.pop(latency)
        reports.append(data)
    assert reports[0]["totals"]["requests"] == total
    assert _same(*reports) == []


@pytest.mark.e2e
def test_proxy_keeps_forwarding_with_a_wrong_password(postgres: Any, tmp_path: Path) -> None:
    secret = "wrong-secret-7781"
    url = postgres.url("postgres", password=secret)
    received: list[Received] = []
    with FakeUpstream(traffic_handler(received)) as up:
        proxy = next(proxies(up, [url], tmp_path))
        try:
            assert [send(proxy.port, n) for n in (1, 2, 4)] == [200, 200, 200]
            deadline = time.monotonic() + 20
            while "password authentication failed" not in proxy.output() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            proxy.stop()
    out = proxy.output()
    assert secret not in out, out
    assert sum("password authentication failed" in line for line in out.splitlines()) == 1, out
    assert "postgresql://tokenpak:***@" in out  # the startup line shows the database without its password
    spill = spill_paths(store_local_base(url))[0]
    assert len(spill.read_text().splitlines()) == 3  # kept for when the password is fixed


@pytest.mark.e2e
def test_without_the_extra_startup_stops_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "psycopg.py").write_text("raise ImportError('psycopg blocked for this test')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    proxy = MitmdumpProcess("reverse:http://127.0.0.1:9", db="postgresql://u:pw-xyz@127.0.0.1:1/db", confdir=tmp_path, env=env)
    proc = subprocess.run(proxy.args, env=proxy.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "tokenpak-mitm[team]" in line]
    assert len(lines) == 1 and "pw-xyz" not in proc.stdout + proc.stderr
    assert sys.executable  # (the same interpreter the proxy ran with)


@pytest.mark.e2e
def test_a_slow_database_spills_without_stalling_the_proxy_or_the_writer(postgres: Any, tmp_path: Path) -> None:
    """A table locked for 8 s (a slow server): batches time out, rows are spilled and acknowledged,
    the proxy never takes the writer for hung, and every row is written once when the lock goes."""
    url = postgres.database()
    write(url, [row(0)])  # the schema exists, so the lock below can be taken
    received: list[Received] = []
    with FakeUpstream(traffic_handler(received)) as up:
        proxy = next(proxies(up, [url], tmp_path))
        try:
            with psycopg.connect(url) as locker:
                locker.execute("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
                t0 = time.monotonic()
                statuses = [send(proxy.port, n) for n in range(1, 21)]
                time.sleep(max(0.0, 8 - (time.monotonic() - t0)))
            assert statuses == [429 if n % 17 == 5 else 200 for n in range(1, 21)]
            deadline = time.monotonic() + 30
            while count(url) < (21, 21) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            proxy.stop()
    out = proxy.output()
    assert count(url) == (21, 21), out[-2000:]
    assert "unresponsive" not in out and postgres.password not in out, "\n".join(line for line in out.splitlines() if "tokenpak" in line)
    assert "canceling statement due to statement timeout" in out  # said once, on one line


def test_the_writer_knows_the_newest_request_of_the_shared_database(postgres: Any) -> None:
    """A writer (re)starting on a database other proxies write reads its newest request, so its
    session tracker starts blind for the cache TTL (misses it cannot explain read unknown, not cold)."""
    from tokenpak_mitm.store.sqlite import newest_request

    url = postgres.database()
    assert newest_request(url) is None  # no table yet
    write(url, [row(3), row(7)])
    assert newest_request(url) == pytest.approx(NOW - 3 * 977.0)
    assert newest_request(postgres.url("nosuchdb")) is None


def test_reports_on_a_database_no_proxy_wrote_to_yet(postgres: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url = postgres.database()
    for module, args in ((report, []), (tail, ["--once"])):
        code, out, err = _cli(module, ["--db", url, *args], capsys)
        assert code == 1 and "no telemetry in postgresql://tokenpak:***@" in err and err.count("\n") == 1, err
        assert postgres.password not in out + err
