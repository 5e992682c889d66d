"""The telemetry store under database faults, in process: no row lost, none doubled.

Each test breaks the database in one way (disk full, locked, read-only, deleted, poisoned rows,
a crash) and then checks the one invariant that matters for accounting: every submitted row
ends up in the database exactly once, either directly, after recovery, or via the spill file
the next start imports.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tokenpak_mitm.store import sqlite as store_mod
from tokenpak_mitm.store.sqlite import TelemetryStore, last_request_at


def row(key: str, **extra: object) -> dict:
    return {"request_key": key, "started_at": 1.0, "provider": "anthropic", "input_tokens": 7, **extra}


def keys_in(db: Path) -> list[str]:
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT request_key FROM requests ORDER BY id")]
    except sqlite3.OperationalError:  # not created yet, or locked by the test itself
        return []
    finally:
        con.close()


def wait_until(cond, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def exactly_once(db: Path, expected: list[str]) -> None:
    got = keys_in(db)
    assert sorted(got) == sorted(expected), f"lost={set(expected) - set(got)} doubled={len(got) - len(set(got))}"


class FullDisk(TelemetryStore):
    """ENOSPC on every write while ``full`` is set: the database and the spill file alike."""

    full = True

    def _insert(self, rows):  # type: ignore[override]
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super()._insert(rows)

    def _spill(self, rows):  # type: ignore[override]
        if self.full:
            self._note_failure(OSError(28, "No space left on device"))
            return False
        return super()._spill(rows)


def test_full_disk_keeps_rows_in_memory_and_writes_them_when_space_returns(tmp_path: Path):
    db = tmp_path / "t.db"
    s = FullDisk(db)
    s.start()
    keys = [f"k{i}" for i in range(300)]
    for k in keys:
        s.submit(row(k))
    assert wait_until(lambda: s.last_error is not None and "full" in s.last_error)
    assert wait_until(lambda: len(s._pending) == len(keys))  # held, bounded by MAX_PENDING
    s.full = False
    assert wait_until(lambda: len(keys_in(db)) == len(keys))
    s.close()
    exactly_once(db, keys)
    assert s.dropped == 0


def test_memory_is_bounded_while_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(store_mod, "MAX_PENDING", 50)
    s = FullDisk(tmp_path / "t.db")
    s.start()
    for i in range(120):
        s.submit(row(f"k{i}"))
    assert wait_until(lambda: s.dropped == 70)
    assert len(s._pending) == 50
    s.close()


def test_locked_database_spills_then_writes_each_row_once(tmp_path: Path):
    db = tmp_path / "t.db"
    TelemetryStore(db).close()  # nothing started: just proves close() on a never-started store is safe
    s = TelemetryStore(db)
    s.start()
    s.submit(row("before"))
    assert wait_until(lambda: keys_in(db) == ["before"])
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    keys = [f"k{i}" for i in range(50)]
    for k in keys:
        s.submit(row(k))
    assert wait_until(lambda: s.spill_path.exists(), timeout=20)  # busy timeout (2 s) then spill
    holder.execute("COMMIT")
    holder.close()
    assert wait_until(lambda: len(keys_in(db)) == 51, timeout=20)
    s.close()
    exactly_once(db, ["before", *keys])
    assert not s.spill_path.exists()  # imported on recovery, then removed


def _make_readonly(path: Path) -> None:
    if os.geteuid() == 0:  # root ignores permission bits; the immutable flag binds root too
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("running as root without chattr: cannot make a file read-only")
    else:
        path.chmod(0o400)


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o600)


def test_readonly_database_spills_and_the_next_start_imports(tmp_path: Path):
    db = tmp_path / "t.db"
    s = TelemetryStore(db)
    s.start()
    s.submit(row("old"))
    s.close()
    _make_readonly(db)
    try:
        s = TelemetryStore(db)
        s.start()
        keys = [f"k{i}" for i in range(40)]
        for k in keys:
            s.submit(row(k))
        assert wait_until(lambda: s.spill_path.exists())
        s.close()  # clean shutdown while read-only: everything is in the spill file
        assert keys_in(db) == ["old"]
    finally:
        _make_writable(db)
    s = TelemetryStore(db)
    s.start()
    assert wait_until(lambda: not s.spill_path.exists())
    s.close()
    exactly_once(db, ["old", *keys])
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_deleted_directory_is_recreated_and_later_rows_are_kept(tmp_path: Path):
    home = tmp_path / "home"
    db = home / "t.db"
    s = TelemetryStore(db)
    s.start()
    s.submit(row("a"))
    assert wait_until(lambda: db.exists() and keys_in(db) == ["a"])
    shutil.rmtree(home)  # the user removed ~/.tokenpak while the proxy ran
    keys = [f"k{i}" for i in range(20)]
    for k in keys:
        s.submit(row(k))
    assert wait_until(lambda: db.exists() and len(keys_in(db)) == len(keys))
    s.close()
    exactly_once(db, keys)  # rows of the deleted file went with it; none written into the void


def test_odd_values_do_not_poison_a_batch(tmp_path: Path):
    db = tmp_path / "t.db"
    s = TelemetryStore(db)
    s.start()
    s.submit(row("huge", input_tokens=2**70))
    s.submit(row("list", error=["not", "a", "string"]))
    s.submit(row("fine"))
    assert wait_until(lambda: len(keys_in(db)) == 3)
    s.close()
    exactly_once(db, ["huge", "list", "fine"])


def test_junk_in_the_spill_file_is_skipped_and_rows_imported_once(tmp_path: Path):
    db = tmp_path / "t.db"
    spill = Path(str(db) + store_mod.SPILL_SUFFIX)
    spill.write_text('{"request_key":"a","started_at":1}\n123\n"str"\n[1]\n{"no_key":1}\n{"request_key":"a","started_at":1}\n{"request_key":"b","started_at":1}\n{"request_key":"c","sta')
    s = TelemetryStore(db)
    s.start()
    s.submit(row("d"))
    assert wait_until(lambda: len(keys_in(db)) == 3)
    s.close()
    exactly_once(db, ["a", "b", "d"])
    assert not spill.exists()


def test_a_spilled_request_that_cannot_be_read_is_counted_as_lost(tmp_path: Path):
    """A record the proxy spilled that cannot be read back (a damaged line, another version's shape)
    is neither written nor spillable again: a counted loss with its cause, never a silent skip."""
    db = tmp_path / "t.db"
    spill = Path(str(db) + store_mod.SPILL_SUFFIX)
    spill.write_text('{"request_key":"bad","finished":{"no":"record here"}}\n{"request_key":"a","started_at":1}\n')
    s = TelemetryStore(db)
    s.start()
    assert wait_until(lambda: len(keys_in(db)) == 1)
    s.close()
    exactly_once(db, ["a"])
    assert s.dropped == 1
    total, reasons = store_mod.losses(db)
    assert total == 1 and any("spilled request could not be read" in r for r in reasons), reasons


def test_row_submitted_after_close_is_spilled_for_the_next_start(tmp_path: Path):
    db = tmp_path / "t.db"
    s = TelemetryStore(db)
    s.start()
    s.submit(row("a"))
    s.close()
    s.submit(row("late"))  # a flow that errored while mitmproxy was shutting down
    s2 = TelemetryStore(db)
    s2.start()
    assert wait_until(lambda: len(keys_in(db)) == 2)
    s2.close()
    exactly_once(db, ["a", "late"])


def test_concurrent_submitters_lose_nothing(tmp_path: Path):
    db = tmp_path / "t.db"
    s = TelemetryStore(db)
    s.start()
    keys = [[f"t{t}-{i}" for i in range(500)] for t in range(8)]
    threads = [threading.Thread(target=lambda ks=ks: [s.submit(row(k)) for k in ks]) for ks in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in keys[0][:100]:
        s.submit(row(k))  # reported twice: still one row
    s.close()
    exactly_once(db, [k for ks in keys for k in ks])


def test_files_are_owner_only(tmp_path: Path):
    old = os.umask(0o022)
    try:
        db = tmp_path / "new" / "t.db"
        s = TelemetryStore(db)
        s.start()
        s.submit(row("a"))
        assert wait_until(lambda: db.exists() and keys_in(db) == ["a"])
        s._spill([row("b")])
        for p in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm"), s.spill_path):
            assert p.exists(), p
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p, oct(p.stat().st_mode))
        assert stat.S_IMODE(db.parent.stat().st_mode) & 0o077 == 0
        s.close()
    finally:
        os.umask(old)


_CRASHING_WRITER = textwrap.dedent(
    """
    import sys, time
    from tokenpak_mitm.store.sqlite import TelemetryStore
    s = TelemetryStore(sys.argv[1]); s.start()
    i = 0
    while True:
        s.submit({"request_key": f"k{i}", "started_at": time.time(), "input_tokens": i})
        i += 1
        if i % 200 == 0:
            print(i, flush=True)
        time.sleep(0.0005)
    """
)


def test_sigkill_mid_write_never_corrupts_and_loses_only_the_last_moment(tmp_path: Path):
    db = tmp_path / "t.db"
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    submitted_early = 0
    for line in proc.stdout:
        submitted_early = int(line)
        if submitted_early >= 2000:
            break
    # Rows submitted before this point had at least a second to be flushed (every 0.2 s).
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    got = [r[0] for r in con.execute("SELECT request_key FROM requests")]
    con.close()
    assert len(got) == len(set(got))
    have = set(got)
    assert all(f"k{i}" in have for i in range(submitted_early)), "rows older than one second were lost"


def test_last_request_at_reads_without_the_wal_index_and_counts_unchecked_rows(tmp_path: Path) -> None:
    """The proxy reads the newest request time at start: a mapped -shm there is a SIGBUS waiting to
    happen (another process truncates it), so the read opens the database immutable; rows still only in
    the WAL, with the index unavailable, must not make the answer earlier than the truth."""
    import os

    db = tmp_path / "t.db"
    writer = sqlite3.connect(db)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("CREATE TABLE requests (started_at REAL)")
        writer.execute("INSERT INTO requests VALUES (1000.0)")
        writer.commit()
        writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        writer.execute("INSERT INTO requests VALUES (2000.0)")  # only in the WAL
        writer.commit()
        shm = Path(str(db) + "-shm")
        os.rename(shm, tmp_path / "moved-shm")
        shm.mkdir()  # any attempt to open the WAL index now fails
        newest = last_request_at(db)
    finally:
        writer.close()
    assert newest is not None and newest >= 2000.0
