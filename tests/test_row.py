"""The telemetry row is one type: the store's columns, the migrations, the OTLP mapping, the report
and the console line all read TelemetryRow, and these tests fail as soon as one of them drifts."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest

from tokenpak_mitm.cli import report
from tokenpak_mitm.core import row
from tokenpak_mitm.core.account import telemetry
from tokenpak_mitm.core.account.telemetry import RequestRecord, build_row
from tokenpak_mitm.core.observe.tracker import Extract
from tokenpak_mitm.core.observe.usage import Usage
from tokenpak_mitm.core.plan.cache_planner import DECISIONS
from tokenpak_mitm.core.routes import classify
from tokenpak_mitm.core.row import (
    CACHE_DECISIONS,
    CACHE_ORIGINS,
    COLUMNS,
    FIELD_NAMES,
    SCHEMA_VERSION,
    TERMINAL_STATES,
    USAGE_SOURCES,
    TelemetryRow,
)
from tokenpak_mitm.store import otel
from tokenpak_mitm.store import sqlite as store
from tokenpak_mitm.store.sqlite import MIGRATIONS, TelemetryStore

# The columns of the first release, in order. Schema v1 is frozen: databases created by it exist.
V1_NAMES = (
    "request_key", "started_at", "provider", "api", "route_class", "host", "path", "model", "stream", "billable",
    "status_code", "terminal_state", "stop_reason", "input_tokens", "cache_read_tokens", "cache_write_tokens",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "output_tokens", "reasoning_tokens", "web_search_requests",
    "usage_source", "ttfb_ms", "ttft_ms", "duration_ms", "frames", "response_bytes", "response_id",
    "upstream_request_id", "error", "cache_origin", "markers_inserted", "client_markers", "cache_decision",
    "prefix_tokens_est", "cost_usd", "savings_usd", "price_version", "conformance_violations", "proxy_version",
)
SQL_FOR = {int: "INTEGER", float: "REAL", str: "TEXT"}


def full_row(**over: Any) -> TelemetryRow:
    """A row with every field set to a value of its declared type (no NULLs to hide a drift)."""
    values: dict[str, Any] = {}
    for c in COLUMNS:
        base = c.sql.split()[0]
        values[c.name] = {"INTEGER": 1, "REAL": 1.5, "TEXT": f"v-{c.name}"}[base]
    values.update(terminal_state="error_response", usage_source="final", cache_origin="proxy", cache_decision="inserted",
                  route_class="sdk", provider="anthropic", api="messages", model="claude-sonnet-4-6", started_at=1_700_000_000.0)
    values.update(over)
    return TelemetryRow(**values)


def table_columns(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [(r[1], r[2]) for r in conn.execute("PRAGMA table_info(requests)") if r[1] != "id"]


def test_every_field_is_a_column_with_the_sql_type_of_its_python_type():
    hints = get_type_hints(TelemetryRow)
    for f in fields(TelemetryRow):
        py = [t for t in get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)]
        base = {SQL_FOR.get(t, "TEXT") for t in py if isinstance(t, type)} or {"TEXT"}  # Literals are TEXT
        assert f.metadata["sql"].split()[0] in base, f.name


def test_a_fresh_database_has_exactly_the_row_fields_as_columns(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "t.db")
    assert store.migrate(conn) == len(MIGRATIONS) >= SCHEMA_VERSION  # later migrations may add only indexes
    assert [n for n, _ in table_columns(conn)] == list(FIELD_NAMES)


def test_a_v1_database_upgrades_to_exactly_the_row_fields(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.executescript("BEGIN;" + MIGRATIONS[0] + "PRAGMA user_version=1;COMMIT;")
    assert [n for n, _ in table_columns(conn)] == list(V1_NAMES)  # v1 never changes
    store.migrate(conn)
    assert sorted(n for n, _ in table_columns(conn)) == sorted(FIELD_NAMES)


def test_each_migration_adds_the_fields_declared_with_its_version():
    for version in range(2, SCHEMA_VERSION + 1):
        added = [c.name for c in COLUMNS if c.since == version]  # none for an index-only migration (v5)
        assert all(f"ADD COLUMN {n} " in MIGRATIONS[version - 1] for n in added), version


def test_a_stored_row_reads_back_equal(tmp_path: Path):
    db = tmp_path / "t.db"
    s = TelemetryStore(db)
    s.start()
    original = full_row(request_key="k1")
    s.submit(original)
    deadline = time.monotonic() + 10
    while s.written < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    s.close()
    conn = store.connect_readonly(db)
    try:
        assert [TelemetryRow.from_stored(r) for r in conn.execute("SELECT * FROM requests")] == [original]
    finally:
        conn.close()


def test_a_spilled_row_reads_back_equal(tmp_path: Path):
    s = TelemetryStore(tmp_path / "t.db")
    original = full_row(request_key="k2")
    assert s._spill([original])
    stored = json.loads(s.spill_path.read_text())
    assert TelemetryRow.from_stored(stored) == original


def test_a_misspelt_key_is_an_error_not_a_null(tmp_path: Path):
    s = TelemetryStore(tmp_path / "t.db")
    with pytest.raises(ValueError, match="inptu_tokens"):
        s.submit({"request_key": "k", "started_at": 1.0, "inptu_tokens": 3})
    r = full_row()
    with pytest.raises(KeyError):
        r.get("inptu_tokens")
    with pytest.raises(KeyError):
        r["inptu_tokens"]
    with pytest.raises(TypeError):
        TelemetryRow(request_key="k", started_at=1.0, inptu_tokens=3)  # type: ignore[call-arg]


def test_a_row_without_its_key_is_refused():
    with pytest.raises(ValueError, match="request_key"):
        TelemetryRow.from_mapping({"started_at": 1.0})


def test_readers_skip_the_id_column_and_unknown_newer_columns():
    r = TelemetryRow.from_stored({"id": 7, "request_key": "k", "started_at": 2.0, "a_column_from_the_future": 1})
    assert r == TelemetryRow(request_key="k", started_at=2.0)


def test_the_otel_mapping_reads_the_row():
    attrs = otel.span_attributes(full_row())
    # every tokenpak.* attribute is a row field of the same name (or a documented rename)
    for key, value in attrs.items():
        if key.startswith("tokenpak."):
            name = key.removeprefix("tokenpak.")
            assert name in FIELD_NAMES, key
            assert value == (bool(full_row()[name]) if name == "stream" else full_row()[name])
    assert attrs["gen_ai.usage.input_tokens"] == 3  # input + cache_read + cache_write, all 1


def test_the_report_reads_the_row(tmp_path: Path):
    # The report aggregates in SQL over the columns the row declares: an unknown column name in
    # its queries would fail here (SQLite rejects it), as would a figure read from the wrong one.
    db = tmp_path / "t.db"
    s = TelemetryStore(db)
    s.start()
    s.submit(full_row(usage_source="final"))
    s.close()
    conn = store.connect_readonly(db)
    try:
        summary = report.build_report(conn, since="all", unit_prices=lambda p, m: None).totals
    finally:
        conn.close()
    assert summary.requests == 1 and summary.tokens["input"] == 1 and summary.cost_usd == 1.5


def test_vocabularies_have_one_home():
    from tokenpak_mitm.core.plan.openai_cache import OPENAI_DECISIONS

    assert set(DECISIONS) | {"request_streamed", "not_supported"} == set(CACHE_DECISIONS)
    assert set(OPENAI_DECISIONS) | {"request_streamed"} == set(CACHE_DECISIONS)
    assert report.ORIGINS == CACHE_ORIGINS
    assert not hasattr(telemetry, "TERMINAL_STATES")


@pytest.mark.parametrize("kwargs", [
    {},
    {"error_msg": "Client disconnected."},
    {"error_msg": "peer closed connection", "closed_by": "server"},
    {"status_code": 529},
    {"terminal_override": "proxy_error"},
    {"markers_inserted": 1, "cache_decision": "inserted"},
])
def test_built_rows_use_only_the_vocabularies(kwargs: dict[str, Any]):
    route = classify("POST", "api.anthropic.com", "/v1/messages")
    assert route is not None
    x = Extract(model="claude-sonnet-4-6", usage=Usage(input_tokens=3, cache_read_tokens=2, output_tokens=1), usage_final=True)
    r = build_row(RequestRecord(request_key="k", route=route, started_at=1.0, host="h", path="/v1/messages", extract=x, **kwargs))
    assert r.terminal_state in TERMINAL_STATES
    assert r.usage_source in USAGE_SOURCES
    assert r.cache_origin in CACHE_ORIGINS
    assert r.cache_decision is None or r.cache_decision in CACHE_DECISIONS
    assert row.TelemetryRow.from_mapping(r.as_dict()) == r
