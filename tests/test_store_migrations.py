"""Schema upgrades keep users' history: a database from an older version is migrated in place."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tokenpak_mitm.store import sqlite as store_mod
from tokenpak_mitm.store.sqlite import COLUMNS_V1, MIGRATIONS, TelemetryStore


def v1_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("BEGIN;" + MIGRATIONS[0] + "PRAGMA user_version=1;COMMIT;")
    names = [n for n, _ in COLUMNS_V1]
    values = dict.fromkeys(names) | {"request_key": "old", "started_at": 1.0, "provider": "anthropic", "input_tokens": 42}
    conn.execute(f"INSERT INTO requests ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", [values[n] for n in names])
    conn.commit()
    conn.close()


def test_a_v1_database_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path):
    db = tmp_path / "t.db"
    v1_database(db)
    s = TelemetryStore(db)
    s.start()
    s.submit({"request_key": "new", "started_at": 2.0, "provider": "anthropic", "proxy_request_ms": 0.25,
              "cache_reasons": '[{"at":"system","why":"no_history","tokens":2000,"ttl":"5m"}]'})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute("SELECT request_key, input_tokens, proxy_request_ms, cache_reasons FROM requests ORDER BY id").fetchall()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError:  # not migrated yet
            rows, version = [], 1
        finally:
            conn.close()
        if len(rows) == 2:
            break
        time.sleep(0.05)
    s.close()
    assert version == len(MIGRATIONS) >= 6
    assert rows == [("old", 42, None, None), ("new", None, 0.25, '[{"at":"system","why":"no_history","tokens":2000,"ttl":"5m"}]')]
    conn = sqlite3.connect(db)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert {"requests_started_at", "requests_provider_model", "requests_latency"} <= indexes  # v5: report indexes


def test_every_column_written_exists_after_migrating(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "t.db")
    store_mod.migrate(conn)
    have = {r[1] for r in conn.execute("PRAGMA table_info(requests)")}
    assert set(store_mod.COLUMN_NAMES) <= have
    assert store_mod.migrate(conn) == len(MIGRATIONS)  # idempotent
