"""`mitmdump -nr` over a saved flow gives the same row as the live run.

The stream callable never runs during such a replay, so the addon must parse the buffered body
and reuse the live run's decisions and timings from flow metadata.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import fixture_bytes, make_stack

from tokenpak_mitm.sim.mitmdump import ADDON_SCRIPT, mitmdump_executable
from tokenpak_mitm.sim.upstream import Script, Step

pytestmark = pytest.mark.e2e  # every test here runs a real mitmdump

VOLATILE = {"id"}


def all_rows(db: Path) -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY started_at")]
    con.close()
    return rows


def test_replay_gives_the_live_rows(tmp_path: Path):
    flows = tmp_path / "flows.mitm"
    s = make_stack(tmp_path, extra_args=["-w", str(flows), "--set", "store_streamed_bodies=true"])
    try:
        data = fixture_bytes("anthropic_web_search_citations.sse")
        s.call(Script(headers=[("content-type", "text/event-stream")], steps=[Step(data[i : i + 512]) for i in range(0, len(data), 512)]))
        body = b'{"id":"msg_j","type":"message","model":"claude-haiku-4-5","content":[],"stop_reason":"end_turn","usage":{"input_tokens":11,"output_tokens":4}}'
        s.call(Script(headers=[("content-type", "application/json")], steps=[Step(body)], chunked=False))
        err = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
        s.call(Script(status=529, reason="Overloaded", headers=[("content-type", "application/json")], steps=[Step(err)], chunked=False))
    finally:
        s.close()
    live = all_rows(s.db)
    assert len(live) == 3

    replay_db = tmp_path / "replay.db"
    proc = subprocess.run(
        [mitmdump_executable(), "-n", "-q", "-r", str(flows), "-s", str(ADDON_SCRIPT),
         "--set", f"tokenpak_db={replay_db}", "--set", f"confdir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    replayed = all_rows(replay_db)
    assert len(replayed) == 3
    for a, b in zip(live, replayed):
        assert {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}
    assert live[0]["input_tokens"] == 9911 and live[0]["output_tokens"] == 343
