"""The store in its own process: the writer can die (SIGBUS from a truncated -shm, OOM, a kill)
and the proxy side loses no row; spills fall back to an owner-only temp dir; a row that cannot be
kept anywhere is counted, logged and shown by doctor. Real writer processes, real SQLite."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_store_faults import exactly_once, keys_in, row, wait_until

from tokenpak_mitm.cli.doctor import check_losses
from tokenpak_mitm.core.account.accounting import Finished, SessionFacts
from tokenpak_mitm.core.account.telemetry import RequestRecord, outcome
from tokenpak_mitm.core.observe.tracker import Extract
from tokenpak_mitm.core.observe.usage import Usage
from tokenpak_mitm.core.routes import classify
from tokenpak_mitm.store import sqlite as store_mod
from tokenpak_mitm.store.sqlite import TelemetryStore, fallback_spill_path, losses, spill_paths
from tokenpak_mitm.store.writer import StoreProcess


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own system temp dir (the fallback spill location), in the child too."""
    tmp = tmp_path / "systmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp



def stopped_writer(db: Path) -> tuple[StoreProcess, int]:
    """A started store whose writer process is then stopped (SIGSTOP): alive, acknowledging nothing."""
    s = StoreProcess(db)
    s.start()
    assert wait_until(lambda: s.pid is not None)
    pid = s.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    return s, pid

def test_rows_reach_the_database_through_the_writer_process(tmp_path: Path):
    db = tmp_path / "t.db"
    s = StoreProcess(db)
    s.start()
    keys = [f"k{i}" for i in range(200)]
    for k in keys:
        s.submit(row(k))
    assert wait_until(lambda: len(keys_in(db)) == 200)
    s.close()
    exactly_once(db, keys)
    assert s.acked == 200 and s.lost == 0


def test_a_killed_writer_costs_no_row_and_is_restarted(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    db = tmp_path / "t.db"
    s = StoreProcess(db)
    s.start()
    first = [f"a{i}" for i in range(50)]
    for k in first:
        s.submit(row(k))
    assert wait_until(lambda: len(keys_in(db)) == 50)
    assert wait_until(lambda: s.pid is not None)
    pid = s.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # frozen: rows sent now stay unacknowledged...
    second = [f"b{i}" for i in range(50)]
    for k in second:
        s.submit(row(k))
    time.sleep(0.6)  # (the feeder sends them to the stopped writer)
    with caplog.at_level(logging.WARNING, logger="tokenpak.store"):
        os.kill(pid, signal.SIGBUS)  # ...and it dies the way a truncated -shm kills SQLite's process
        os.kill(pid, signal.SIGCONT)
        assert wait_until(lambda: s.restarts >= 1 and s.pid not in (None, pid))
    assert "killed by SIGBUS" in caplog.text
    third = [f"c{i}" for i in range(50)]
    for k in third:
        s.submit(row(k))
    s.close()
    exactly_once(db, first + second + third)  # the new writer imported what the proxy spilled
    assert s.lost == 0


def test_an_unwritable_database_directory_spills_to_the_owner_only_fallback(tmp_path: Path, private_tmp: Path):
    db = tmp_path / "missing-parent" / "file-not-dir"
    db.parent.write_text("a file where the directory should be")  # nothing can be created beside the db
    s = TelemetryStore(db)
    s.start()
    for k in ("x1", "x2"):
        s.submit(row(k))
    s.close()
    spilled = fallback_spill_path(db)
    assert spilled.parent.parent == private_tmp
    assert [json.loads(line)["request_key"] for line in spilled.read_text().splitlines()] == ["x1", "x2"]
    assert stat.S_IMODE(spilled.parent.stat().st_mode) == 0o700 and stat.S_IMODE(spilled.stat().st_mode) == 0o600
    assert s.dropped == 0
    db.parent.unlink()  # the directory can be created now: the next start imports the fallback
    db.parent.mkdir()
    s = TelemetryStore(db)
    s.start()
    s.close()
    exactly_once(db, ["x1", "x2"])
    assert not spilled.exists()


def test_a_fallback_dir_not_ours_is_refused(tmp_path: Path, private_tmp: Path):
    other = private_tmp / f"tokenpak-{os.getuid()}"
    other.mkdir(mode=0o755)
    other.chmod(0o755)  # group/world-readable: someone else could read the spilled rows
    with pytest.raises(PermissionError):
        store_mod.append_jsonl(fallback_spill_path(tmp_path / "t.db"), [row("k")])


class NowhereToWrite(TelemetryStore):
    """The database and both spill locations fail (a full disk)."""

    def _insert(self, rows):  # type: ignore[override]
        raise OSError(28, "No space left on device")


def test_rows_that_cannot_be_kept_are_counted_logged_and_shown_by_doctor(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    db = tmp_path / "t.db"
    s = NowhereToWrite(db)
    s.spill_paths = (tmp_path / "no-such-dir" / "a.jsonl", tmp_path / "no-such-dir" / "b.jsonl")
    s.start()
    with caplog.at_level(logging.ERROR, logger="tokenpak_mitm.store.sqlite"):
        for i in range(7):
            s.submit(row(f"z{i}"))
        s.close()
    assert s.dropped == 7
    assert "7 telemetry rows LOST" in caplog.text  # at the time...
    assert "store closed with 7 rows LOST" in caplog.text  # ...and again at shutdown
    total, reasons = losses(db)
    assert total == 7 and "b.jsonl" in reasons[0]  # the last failure: where it could not spill
    checks = {c.name: c for c in check_losses(db)}
    assert checks["lost rows"].status == "warn" and "7 telemetry rows" in checks["lost rows"].detail


def test_spill_and_import_do_not_lose_a_concurrent_append(tmp_path: Path):
    """The proxy appends while the writer imports: the lock + inode re-check keep every row."""
    import threading

    db = tmp_path / "t.db"
    path = spill_paths(db)[0]
    taken: list[str] = []
    stop = threading.Event()

    def appender() -> None:
        i = 0
        while not stop.is_set():
            store_mod.append_jsonl(path, [row(f"r{i}")])
            i += 1
        appended.append(i)

    appended: list[int] = []
    t = threading.Thread(target=appender)
    t.start()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        store_mod.take_jsonl(path, lambda rows: taken.extend(r["request_key"] for r in rows))
    stop.set()
    t.join()
    store_mod.take_jsonl(path, lambda rows: taken.extend(r["request_key"] for r in rows))
    assert sorted(taken, key=lambda k: int(k[1:])) == [f"r{i}" for i in range(appended[0])]


def test_a_writer_that_cannot_start_leaves_every_row_spilled_for_the_next_start(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    db = tmp_path / "t.db"
    s = StoreProcess(db, python=str(tmp_path / "no-such-python"))
    with caplog.at_level(logging.WARNING, logger="tokenpak.store"):
        s.start()
        keys = [f"n{i}" for i in range(30)]
        for k in keys:
            s.submit(row(k))
        s.close()
    assert "cannot start the store writer" in caplog.text
    assert s.lost == 0 and s.spilled_here == 30
    t = TelemetryStore(db)  # the next start (writer or not) imports them
    t.start()
    t.close()
    exactly_once(db, keys)


def _finished(key: str, started: float, tokens: int = 7) -> Finished:
    route = classify("POST", "api.anthropic.com", "/v1/messages")
    assert route is not None
    rec = RequestRecord(request_key=key, route=route, started_at=started, host="api.anthropic.com", path="/v1/messages", status_code=200)
    rec.extract = Extract(model="claude-sonnet-4-6", usage=Usage(input_tokens=tokens, output_tokens=2), usage_final=True, terminal_seen=True)
    return Finished(rec, outcome(rec), started + 0.1, started + 0.2)


def _facts(started: float, session: str) -> SessionFacts:
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}).encode()
    return SessionFacts("anthropic", {"x-tokenpak-session": session}, "scope", started, body)


def test_live_requests_are_accounted_in_the_writer_process(tmp_path: Path):
    # The proxy sends what it saw; the writer's session tracker and row builder make the row.
    db = tmp_path / "t.db"
    s = StoreProcess(db)
    s.start()
    now = time.time()
    for i in range(3):
        s.begin(f"k{i}", _facts(now + i, "build-7"))
        s.finish(_finished(f"k{i}", now + i))
    s.close()
    con = sqlite3.connect(db)
    rows = con.execute("SELECT request_key, session_id, session_source, turn, cost_usd, terminal_state FROM requests ORDER BY turn").fetchall()
    con.close()
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [("k0", "build-7", "header", 1), ("k1", "build-7", "header", 2), ("k2", "build-7", "header", 3)]
    assert all(r[4] and r[4] > 0 and r[5] == "completed" for r in rows)
    assert s.acked == 3 and s.dropped == 0


def test_the_writer_prints_the_console_line_on_the_proxys_output(tmp_path: Path, capfd: pytest.CaptureFixture[str]):
    s = StoreProcess(tmp_path / "t.db")
    s.set_console(True)
    s.start()
    s.finish(_finished("c1", time.time(), tokens=11))
    s.set_console(False)
    s.finish(_finished("c2", time.time(), tokens=13))
    s.close()
    out = capfd.readouterr().out
    assert "tokenpak: anthropic/messages claude-sonnet-4-6 in=11 " in out
    assert "in=13" not in out  # switched off before the second request


def test_finished_requests_the_writer_never_acknowledged_are_spilled_as_records(tmp_path: Path):
    db = tmp_path / "t.db"
    s, pid = stopped_writer(db)
    keys = [f"f{i}" for i in range(5)]
    for k in keys:
        s.finish(_finished(k, time.time()))
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)  # dies holding them: the proxy spills their records (it builds no row)
    assert wait_until(lambda: s.spilled_here == 5, timeout=10)
    spilled = [json.loads(line) for line in spill_paths(db)[0].read_text().splitlines()]
    assert sorted(r["finished"]["record"]["request_key"] for r in spilled) == keys
    assert wait_until(lambda: len(keys_in(db)) == 5)  # the restarted writer imports and accounts them
    s.close()
    exactly_once(db, keys)
    con = sqlite3.connect(db)
    got = con.execute("SELECT output_tokens, cost_usd, terminal_state FROM requests").fetchall()
    con.close()
    assert all(out == 2 and cost > 0 and state == "completed" for out, cost, state in got)  # full rows, priced


def test_the_writer_exports_every_row_it_writes_to_the_otlp_collector(tmp_path: Path):
    # Live requests (accounted there) and rows the proxy built itself (saved, recorded flows) alike.
    from test_otel import Collector, _attrs, _spans

    collector = Collector()
    try:
        s = StoreProcess(tmp_path / "t.db")
        s.set_otlp(collector.url)
        s.start()
        now = time.time()
        s.begin("live-1", _facts(now, "team-a"))
        s.finish(_finished("live-1", now, tokens=21))
        s.submit(row("built-here", model="claude-sonnet-4-6", terminal_state="completed"))
        s.close()  # the writer flushes its exporter before it exits
        spans = _spans(collector)
    finally:
        collector.shutdown()
    assert set(spans) == {"live-1", "built-here"}
    live = _attrs(spans["live-1"].attributes)
    assert live["gen_ai.usage.output_tokens"] == 2 and live["session.id"] == "team-a"


def test_large_request_bodies_reach_the_writers_session_tracker_intact(tmp_path: Path):
    # Bodies of 4 KB and more travel out of band; the session id inside this one (Claude Code's
    # metadata.user_id) can only be read if every byte arrived.
    db = tmp_path / "t.db"
    s = StoreProcess(db)
    s.start()
    now = time.time()
    user_id = json.dumps({"device_id": "d" * 64, "account_uuid": "acct-1", "session_id": "0b9c6f3e-5d2a-4c1b-9e8f-7a6b5c4d3e2f"})
    for i, size in enumerate((4096, 70_000, 300_000)):
        body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "system": "s" * size, "metadata": {"user_id": user_id},
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        s.begin(f"big{i}", SessionFacts("anthropic", {}, "scope", now + i, body))
        s.finish(_finished(f"big{i}", now + i))
    s.close()
    con = sqlite3.connect(db)
    got = con.execute("SELECT session_id, session_source, turn FROM requests ORDER BY turn").fetchall()
    con.close()
    assert got == [("0b9c6f3e-5d2a-4c1b-9e8f-7a6b5c4d3e2f", "claude-code", t) for t in (1, 2, 3)]


def test_a_value_that_does_not_pickle_costs_nothing_but_its_own_oddity(tmp_path: Path):
    # The hand-off pickles; a value that cannot be pickled must not stop the feeder (every later
    # row would be lost): the record goes with its odd value as text.
    import threading

    db = tmp_path / "t.db"
    s = StoreProcess(db)
    s.start()
    now = time.time()
    bad = _finished("odd", now)
    bad.record.upstream_request_id = threading.Lock()  # type: ignore[assignment]
    s.finish(bad)
    for i in range(3):
        s.finish(_finished(f"after{i}", now + i))
    assert wait_until(lambda: len(keys_in(db)) == 4)
    s.close()
    exactly_once(db, ["odd", "after0", "after1", "after2"])
    con = sqlite3.connect(db)
    odd = con.execute("SELECT output_tokens, upstream_request_id FROM requests WHERE request_key = 'odd'").fetchone()
    con.close()
    assert odd[0] == 2 and "lock" in odd[1]


def test_the_writers_console_lines_look_like_mitmproxys_own():
    # Same stamp, same colours on a terminal: the line reads as it did when the proxy logged it.
    from mitmproxy.log import MitmFormatter

    from tokenpak_mitm.store.writer import stamped

    for colour in (True, False):
        record = logging.LogRecord("tokenpak", logging.INFO, __file__, 1, "tokenpak: anthropic/messages x", None, None)
        assert stamped("tokenpak: anthropic/messages x", record.created, colour) == MitmFormatter(colour).format(record)


# -- a hung writer, the caps and the crash window (issue 27) ------------------------------------------


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def test_a_hung_writer_at_shutdown_is_killed_after_a_bounded_wait_and_its_rows_spilled(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    db = tmp_path / "t.db"
    s, pid = stopped_writer(db)
    keys = [f"h{i}" for i in range(300)]
    for k in keys:
        s.submit(row(k, error="e" * 1000))  # ~300 KB: more than the pipe holds
    with caplog.at_level(logging.INFO, logger="tokenpak.store"):
        closing = threading.Thread(target=s.close, kwargs={"timeout": 2.0})
        closing.start()
        closing.join(60)  # a hang guard, not a speed check: without the bound, close would wait forever
    assert not closing.is_alive(), "close() waited on the stopped writer instead of killing it"
    assert _state(pid) in ("gone", "Z", "X")  # killed, not left stopped
    assert s.lost == 0 and s.spilled_here + s.acked == 300
    assert "none lost" in caplog.text
    t = TelemetryStore(db)
    t.start()
    t.close()
    exactly_once(db, keys)


def test_a_writer_that_does_not_acknowledge_within_the_bound_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    from tokenpak_mitm.store import writer as store_writer

    monkeypatch.setattr(store_writer, "ACK_TIMEOUT", 1.0)
    db = tmp_path / "t.db"
    s = StoreProcess(db)
    with caplog.at_level(logging.WARNING, logger="tokenpak.store"):
        s.start()
        assert wait_until(lambda: s.pid is not None)
        pid = s.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        keys = [f"u{i}" for i in range(40)]
        for k in keys:
            s.submit(row(k))
        assert wait_until(lambda: s.restarts >= 1 and s.pid not in (None, pid), timeout=10)
        assert wait_until(lambda: sorted(keys_in(db)) == sorted(keys), timeout=20)  # spilled, then imported by the new writer while it runs
    assert "is unresponsive: no acknowledgement since" in caplog.text
    assert _state(pid) in ("gone", "Z", "X")
    s.close()
    exactly_once(db, keys)
    assert s.dropped == 0


def test_past_the_hard_cap_a_row_is_counted_lost_with_its_cause_never_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tokenpak_mitm.store import writer as store_writer

    monkeypatch.setattr(store_writer, "HARD_ITEMS", 10)  # the feeder never runs here (as if stalled)
    db = tmp_path / "t.db"
    s = StoreProcess(db)
    keys = [f"c{i}" for i in range(15)]
    for k in keys:
        s.submit(row(k))
    assert s.lost == 5 and s.gauges()["queued"] == 10
    s.close()
    assert s.spilled_here == 10 and s.dropped == 5
    assert list(s.lost_by_cause.values()) == [5] and "hard cap" in next(iter(s.lost_by_cause))
    total, reasons = losses(db)
    assert total == 5 and any("hard cap" in r for r in reasons)
    detail = {c.name: c for c in check_losses(db)}["lost rows"].detail
    assert "5 telemetry rows" in detail and "by cause: 5 the store's backlog was over its hard cap" in detail


_CHILD = """
import os, sys, time
sys.path.insert(0, sys.argv[2])
from test_store_faults import row
from tokenpak_mitm.store.writer import StoreProcess
s = StoreProcess(sys.argv[1])
s.start()
while s.pid is None or s.ready_pid != s.pid:
    time.sleep(0.02)
print(s.pid, flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[3])):
    s.submit(row(f"w{i}", error="e" * 600))
print("sent", flush=True)
time.sleep(60)
"""


def test_a_proxy_killed_while_its_writer_is_hung_loses_at_most_the_crash_window(tmp_path: Path):
    """The proxy spills what waits longer than CRASH_WINDOW; what is in the pipe is drained by the
    writer, which the proxy's death continues (SIGCONT) so it is not left stopped either."""
    import subprocess
    import sys

    from tokenpak_mitm.store.writer import CRASH_WINDOW

    db = tmp_path / "t.db"
    n = 3000
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(db), str(Path(__file__).parent), str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    writer = int(child.stdout.readline())
    os.kill(writer, signal.SIGSTOP)
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "sent"
    time.sleep(CRASH_WINDOW + 3.0)  # the window, with room for a loaded machine
    child.kill()
    child.wait()
    assert wait_until(lambda: _state(writer) in ("gone", "Z", "X"), timeout=20)  # continued, drained its pipe, exited
    t = TelemetryStore(db)  # the next start imports the spill file
    t.start()
    t.close()
    exactly_once(db, [f"w{i}" for i in range(n)])


def test_a_body_too_big_for_the_queue_goes_to_the_session_tracker_without_its_body(tmp_path: Path):
    from tokenpak_mitm.store.writer import BEGIN_BODY_BYTES

    s = StoreProcess(tmp_path / "t.db")  # not started: what is queued stays to be looked at
    s.begin("k", SessionFacts("anthropic", {}, "scope", time.time(), b"x" * (BEGIN_BODY_BYTES + 1)))
    s.begin("j", SessionFacts("anthropic", {}, "scope", time.time(), b"x" * 1000))
    queued = [q.item for q in s._q]  # noqa: SLF001
    assert [b.facts.body is None for b in queued] == [True, False]
    assert s.gauges()["queued_bytes"] < 2 * 1024 + 1000
    s.close()
