"""Report figures per session, per project and per miss cause equal sums computed independently.

Rows come from a simulated multi-session workload (the tracker's real verdicts and the real price
table), are written through the real store into SQLite, and the report's JSON (through the CLI's
own `run`) is compared with GROUP BY queries on the database.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sqlite3
import uuid
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from test_sessions import Conversation, Driver, system_text, tools

from tokenpak_mitm.cli import report
from tokenpak_mitm.core.account.cache_miss import miss_cost_usd, usage_with_read
from tokenpak_mitm.core.account.pricing import price
from tokenpak_mitm.core.observe.usage import Usage
from tokenpak_mitm.store.sqlite import TelemetryStore


def _rows(n: int = 240) -> list[dict[str, Any]]:
    rng = random.Random(16)
    d = Driver()
    convs = [Conversation(f"c{i}", system_text(f"c{i}"), tools(f"c{i}"), cache="off" if i == 3 else "auto") for i in range(6)]
    rows, now = [], 1_800_000_000.0
    for step in range(n):
        if rng.random() < 0.02:
            now += 400
        if rng.random() < 0.02:
            d.sim.clear()
        conv = rng.choice(convs)
        if rng.random() < 0.05:
            conv.system += f" v{step}"
        outcome, u = d.send(conv.request(), now, cache=conv.cache)
        conv.answered()
        usage = Usage(u["input_tokens"], u["cache_read_input_tokens"], u["cache_creation_input_tokens"],
                      u["cache_creation"]["ephemeral_5m_input_tokens"], u["cache_creation"]["ephemeral_1h_input_tokens"], u["output_tokens"])
        cost = price("anthropic", "claude-sonnet-4-6", usage)
        row: dict[str, Any] = {
            "request_key": str(uuid.uuid4()), "started_at": now, "provider": "anthropic", "api": "messages",
            "model": "claude-sonnet-4-6", "terminal_state": "completed", "usage_source": "final", **usage.as_dict(),
            "cost_usd": cost.cost_usd, "savings_usd": cost.savings_usd, **outcome.columns(),
        }
        row["project"] = "alpha" if conv.tag in ("c0", "c1", "c2") else "beta"
        v = outcome.verdict
        row["miss_cost_usd"] = miss_cost_usd("anthropic", "claude-sonnet-4-6", usage, v.expected_tokens) if v else None
        if step % 3 == 0:  # some requests carried the provider's own verdict (cache diagnostics)
            row["provider_miss_reason"] = "system_changed" if v is not None and v.section == "system" else "none"
        rows.append(row)
        now += rng.uniform(1, 5)
    return rows


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rep") / "t.db"
    store = TelemetryStore(path)
    store.start()
    for row in _rows():
        store.submit(row)
    store.close()
    return path


def _report(db: Path, *args: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    out = io.StringIO()
    with redirect_stdout(out):
        assert report.run(parser.parse_args(["--db", str(db), "--since", "all", "--json", *args])) == 0
    return json.loads(out.getvalue())


def _sql(db: Path, query: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def test_per_session_figures_equal_sql_sums(db: Path):
    data = _report(db, "--by", "session")
    got = {g["key"]: g for g in data["by_session"]}
    expected = _sql(db, "SELECT session_id, COUNT(*), SUM(cost_usd), MAX(turn), SUM(cache_miss_reason IS NOT NULL), "
                        "COALESCE(SUM(miss_cost_usd), 0), SUM(cache_read_tokens) FROM requests GROUP BY session_id")
    assert len(expected) == 6 and set(got) == {e[0] for e in expected}
    for sid, count, cost, turns, misses, lost, read in expected:
        g = got[sid]
        assert (g["requests"], g["turns"], g["misses"], g["cache_read_tokens"]) == (count, turns, misses, read)
        assert g["cost_usd"] == pytest.approx(cost, abs=1e-9)
        assert g["miss_cost_usd"] == pytest.approx(lost, abs=1e-9)
        assert turns == count  # each conversation numbered its turns 1..n


def test_per_project_figures_equal_sql_sums(db: Path):
    got = {g["key"]: g for g in _report(db, "--by", "project")["by_project"]}
    for project, count, cost in _sql(db, "SELECT project, COUNT(*), SUM(cost_usd) FROM requests GROUP BY project"):
        assert got[project]["requests"] == count and got[project]["cost_usd"] == pytest.approx(cost, abs=1e-9)


def test_per_cause_figures_equal_sql_sums_and_are_ranked_by_money(db: Path):
    causes = _report(db, "--misses")["misses"]
    expected = _sql(db, "SELECT cache_miss_reason, COUNT(*), COALESCE(SUM(miss_cost_usd), 0), COUNT(DISTINCT session_id) "
                        "FROM requests WHERE cache_miss_reason IS NOT NULL GROUP BY cache_miss_reason")
    assert {"cold", "ttl_expired", "prefix_changed", "not_marked", "provider_evicted"} <= {e[0] for e in expected}
    got = {c["reason"]: c for c in causes}
    for reason, count, lost, sessions in expected:
        assert (got[reason]["misses"], got[reason]["session_count"]) == (count, sessions)
        assert got[reason]["cost_usd"] == pytest.approx(lost, abs=1e-9)
    assert [c["cost_usd"] for c in causes] == sorted((c["cost_usd"] for c in causes), reverse=True)


def test_the_providers_verdicts_equal_sql_sums(db: Path):
    got = {v["provider_said"]: v for v in _report(db, "--misses")["provider_verdicts"]}
    want: dict[str, dict[str, int]] = {}
    for said, ours, n in _sql(db, "SELECT provider_miss_reason, COALESCE(cache_miss_reason, 'none'), COUNT(*) FROM requests "
                                  "WHERE provider_miss_reason IS NOT NULL GROUP BY 1, 2"):
        want.setdefault(said, {})[ours] = n
    assert set(got) == set(want) and len(want) == 2
    for said, says in want.items():
        assert got[said]["row_says"] == says and got[said]["rows"] == sum(says.values())


def test_miss_cost_is_the_price_of_the_missed_read():
    u = Usage(input_tokens=10, cache_read_tokens=0, cache_write_tokens=3000, cache_write_5m_tokens=3000, cache_write_1h_tokens=0, output_tokens=50)
    ideal = usage_with_read(u, 2900)
    assert ideal is not None and (ideal.cache_read_tokens, ideal.cache_write_tokens, ideal.input_tokens) == (2900, 100, 10)
    # claude-sonnet-4-6: 5m write $3.75/MTok, read $0.30/MTok: 2900 tokens written instead of read
    assert miss_cost_usd("anthropic", "claude-sonnet-4-6", u, 2900) == pytest.approx(2900 * (3.75 - 0.30) / 1e6, rel=1e-9)
    assert miss_cost_usd("anthropic", "no-such-model", u, 2900) is None  # unpriced, never $0


def test_the_html_page_has_the_sessions_and_misses_and_escapes_what_users_typed(db: Path, tmp_path: Path):
    page = tmp_path / "r.html"
    _report(db, "--html", str(page))
    html = page.read_text()
    assert "<h2>Cache misses by cause</h2>" in html and "<h2>Sessions</h2>" in html and "ttl_expired" in html
    # a filter value (here a glob that matches: a value matching nothing is refused) is shown escaped
    _report(db, "--html", str(page), "--model", "[<c>]laude-*")
    assert "[<c>]" not in page.read_text() and "[&lt;c&gt;]laude-*" in page.read_text()
