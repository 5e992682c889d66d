"""Prometheus metrics (``--set tokenpak_metrics=HOST:PORT``): the counters equal the rows written,
labels stay bounded, and bad values, a taken port, a missing extra or a scrape during shutdown
cost one line and never traffic. Against a real mitmdump, a real SQLite file and real scrapes."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from metrics_helpers import db_rows, free_port, per_label_sums, scrape, send_mixed, total, wait_for

from tokenpak_mitm.core.row import TelemetryRow
from tokenpak_mitm.sim.mitmdump import ADDON_SCRIPT, MitmdumpProcess, mitmdump_executable
from tokenpak_mitm.sim.provider import FakeProvider
from tokenpak_mitm.store.metrics import MODEL_LABELS, Metrics, SpillRows, parse_address
from tokenpak_mitm.store.sqlite import TelemetryStore, append_jsonl


# -- option values ------------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)), ("localhost:1", ("localhost", 1)), ("[::1]:9464", ("::1", 9464)),
    (" 0.0.0.0:65535 ", ("0.0.0.0", 65535)),
])
def test_addresses(value, expected):
    assert parse_address(value) == expected


@pytest.mark.parametrize("value", ["9464", "127.0.0.1", "127.0.0.1:", ":9464", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http",
                                   "::1:9464", "[nothost]:9464", "http://127.0.0.1:9464", "a b:9464"])
def test_bad_addresses_say_what_is_expected(value):
    with pytest.raises(ValueError, match=r"tokenpak_metrics must be host:port \(e.g. 127.0.0.1:9464\)"):
        parse_address(value)


def test_tokenpak_run_checks_the_address_before_mitmdump_starts():
    from tokenpak_mitm.proxy.startup import preflight
    from tokenpak_mitm.script import make_addons

    assert preflight(make_addons(watch=False), ["tokenpak_metrics=9464"]) == "tokenpak_metrics must be host:port (e.g. 127.0.0.1:9464), not '9464'"
    assert preflight(make_addons(watch=False), ["tokenpak_metrics=127.0.0.1:9464"]) is None


# -- counting -----------------------------------------------------------------------------------
def _row(key: str, **kw) -> TelemetryRow:
    base = dict(request_key=key, started_at=1.0, provider="anthropic", model="claude-sonnet-4-6", terminal_state="completed",
                input_tokens=10, cache_read_tokens=100, cache_write_tokens=5, output_tokens=7, cost_usd=0.01, savings_usd=0.02)
    return TelemetryRow(**{**base, **kw})


def _samples(m: Metrics) -> dict:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_labels_are_bounded_and_savings_never_make_a_counter_fall():
    m = Metrics()
    m.observe([_row(f"k{i}", model=f"model-{i}-" + "x" * 200) for i in range(MODEL_LABELS + 20)])
    m.observe([_row("odd", terminal_state="weird", cache_miss_reason="made_up", miss_cost_usd=0.5, savings_usd=-0.004, provider=None)])
    s = _samples(m)
    models = {dict(labels)["model"] for (name, labels) in s if name == "tokenpak_requests_total" and dict(labels)["provider"] == "anthropic"}
    assert len(models) == MODEL_LABELS + 1 and "other" in models and max(map(len, models)) <= 80
    assert total(s, "tokenpak_requests_total", model="other") == 20
    assert total(s, "tokenpak_requests_total", provider="unknown", state="other") == 1
    assert total(s, "tokenpak_cache_miss_cost_usd_total", reason="other") == 0.5
    assert math.isclose(total(s, "tokenpak_saved_usd_total") - total(s, "tokenpak_cache_overspend_usd_total"), 0.02 * (MODEL_LABELS + 20) - 0.004)
    assert total(s, "tokenpak_tokens_total", bucket="cache_read") == 100 * (MODEL_LABELS + 21)
    # the provider's own cache verdict, its vocabulary bounded like the miss reasons
    m.observe([_row("v1", provider_miss_reason="system_changed"), _row("v2", provider_miss_reason="a_future_word")])
    s = _samples(m)
    assert total(s, "tokenpak_provider_cache_verdicts_total", reason="system_changed") == 1
    assert total(s, "tokenpak_provider_cache_verdicts_total", reason="other") == 1
    # never a key, a session, a host or a path as a label
    assert {k for (_, labels) in s for k, _ in labels} <= {"provider", "model", "state", "bucket", "reason", "le"}


def test_the_gauges_and_the_lost_counter_read_what_they_are_given():
    m = Metrics(backlog=lambda: 12, spill_rows=lambda: 7, lost=lambda: 3)
    s = _samples(m)
    assert (total(s, "tokenpak_writer_backlog_rows"), total(s, "tokenpak_spill_rows"), total(s, "tokenpak_rows_lost_total")) == (12, 7, 3)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_rows_are_counted_once_when_written_including_spills_imported_twice(engine: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TOKENPAK_HOME", str(tmp_path / "home"))  # where a URL's spill file lives
    db = str(tmp_path / "t.db") if engine == "sqlite" else request.getfixturevalue("postgres").database()
    counted: list[str] = []
    store = TelemetryStore(db, on_inserted=lambda rows: counted.extend(r.request_key for r in rows))
    store.start()
    for i in range(30):
        store.submit(_row(f"live-{i}"))
    store.close()
    # A spill file holding rows already written (a late acknowledgement), new ones, and one new row twice.
    append_jsonl(store.spill_path, [_row(f"live-{i}").as_dict() for i in range(10)] + [_row(f"spilled-{i}").as_dict() for i in range(5)]
                 + [_row("spilled-0").as_dict()])
    store = TelemetryStore(db, on_inserted=lambda rows: counted.extend(r.request_key for r in rows))
    store.start()
    store.submit(_row("live-0"))  # and a duplicate sent live
    store.close()
    if engine == "sqlite":
        keys = [r["request_key"] for r in db_rows(Path(db))]
    else:
        import psycopg

        with psycopg.connect(db) as conn:
            keys = [k for (k,) in conn.execute("SELECT request_key FROM requests")]
    assert sorted(counted) == sorted(keys) and len(keys) == 35


def test_spill_rows_are_counted_incrementally_and_recounted_when_the_file_is_replaced(tmp_path: Path):
    path = tmp_path / "t.db.spill.jsonl"
    count = SpillRows([path, tmp_path / "missing.jsonl"])
    assert count() == 0
    append_jsonl(path, [{"request_key": str(i)} for i in range(7)])
    assert count() == 7
    append_jsonl(path, [{"request_key": "x"}])
    assert count() == 8
    path.unlink()
    append_jsonl(path, [{"request_key": "y"}])
    assert count() == 1


# -- a real proxy -------------------------------------------------------------------------------
def _proxy(fake: FakeProvider, tmp: Path, port: int, *extra: str, db: Path | None = None) -> MitmdumpProcess:
    return MitmdumpProcess(f"reverse:{fake.url}", db=db or tmp / "t.db", confdir=tmp, options=[f"tokenpak_metrics=127.0.0.1:{port}", *extra])


@pytest.mark.e2e
def test_counters_equal_the_rows_written(tmp_path: Path):
    port = free_port()
    with FakeProvider() as fake, _proxy(fake, tmp_path, port) as proxy:
        n = send_mixed(proxy.url, fake, 40)
        wait_for(lambda: total(scrape(port), "tokenpak_requests_total") == n, what=f"{n} requests counted")
        # The backlog gauge is the proxy's note to the writer, sent a moment after the last hand-off.
        wait_for(lambda: total(scrape(port), "tokenpak_writer_backlog_rows") == 0, what="an empty backlog")
        samples = scrape(port)
        out = proxy.output()
    rows = db_rows(tmp_path / "t.db")
    assert len(rows) == n
    want = per_label_sums(rows)
    assert set(want["requests"]) >= {("anthropic", "claude-sonnet-4-6", "completed"), ("openai", "gpt-5.6", "completed"),
                                             ("anthropic", "claude-haiku-4-5", "error_response")}
    for (provider, model, state), count in want["requests"].items():
        assert total(samples, "tokenpak_requests_total", provider=provider, model=model, state=state) == count
    for (provider, model, bucket), tokens in want["tokens"].items():
        assert total(samples, "tokenpak_tokens_total", provider=provider, model=model, bucket=bucket) == tokens
    for (provider, model), cost in want["cost"].items():
        assert math.isclose(total(samples, "tokenpak_cost_usd_total", provider=provider, model=model), cost, rel_tol=1e-9, abs_tol=1e-12)
        net = total(samples, "tokenpak_saved_usd_total", provider=provider, model=model) - total(samples, "tokenpak_cache_overspend_usd_total", provider=provider, model=model)
        assert math.isclose(net, want["net_saved"][(provider, model)], rel_tol=1e-9, abs_tol=1e-12)
        assert total(samples, "tokenpak_ttft_seconds_count", provider=provider, model=model) == want["ttft_count"].get((provider, model), 0)
        assert total(samples, "tokenpak_request_duration_seconds_count", provider=provider, model=model) == want["duration_count"].get((provider, model), 0)
    for (provider, model, reason), cost in want["miss_cost"].items():
        assert math.isclose(total(samples, "tokenpak_cache_miss_cost_usd_total", provider=provider, model=model, reason=reason), cost, abs_tol=1e-12)
    assert sum(want["cost"].values()) > 0 and want["tokens"][("anthropic", "claude-sonnet-4-6", "cache_read")] > 0
    assert total(samples, "tokenpak_writer_backlog_rows") == 0 and total(samples, "tokenpak_spill_rows") == 0
    assert ("tokenpak_rows_lost_total", ()) in samples and total(samples, "tokenpak_rows_lost_total") == 0
    assert f"metrics=http://127.0.0.1:{port}/metrics" in out and "sk-ant-test" not in out


@pytest.mark.e2e
def test_spilled_rows_show_in_the_gauge_and_are_counted_once_imported(tmp_path: Path):
    port = free_port()
    db = tmp_path / "db"
    db.mkdir()  # a directory where the database should be: SQLite cannot open it, rows are spilled beside it
    with FakeProvider() as fake:
        with _proxy(fake, tmp_path, port, db=db) as proxy:
            n = send_mixed(proxy.url, fake, 12)
            wait_for(lambda: total(scrape(port), "tokenpak_spill_rows") == n, what="spilled rows in the gauge")
            assert total(scrape(port), "tokenpak_requests_total") == 0  # nothing written yet: nothing counted
            assert "Traceback" not in proxy.output()
        db.rmdir()  # the database can be created now: the next start imports the spill file
        with _proxy(fake, tmp_path, port, db=db) as proxy:
            wait_for(lambda: total(scrape(port), "tokenpak_requests_total") == n, what="imported rows counted")
            assert total(scrape(port), "tokenpak_spill_rows") == 0
    assert len(db_rows(db)) == n


@pytest.mark.e2e
@pytest.mark.parametrize("value", ["9464", "127.0.0.1:99999", "http://127.0.0.1:9464/metrics"])
def test_a_bad_address_stops_start_up_with_one_line(tmp_path: Path, value: str):
    proc = subprocess.run(
        [mitmdump_executable(), "-n", "-s", str(ADDON_SCRIPT), "--set", f"tokenpak_metrics={value}", "--set", f"confdir={tmp_path}",
         "--set", f"tokenpak_db={tmp_path / 't.db'}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"tokenpak: tokenpak_metrics must be host:port (e.g. 127.0.0.1:9464), not {value!r} (proxy not started)"]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_without_the_team_extra_the_option_stops_start_up_naming_it(tmp_path: Path):
    shadow = tmp_path / "shadow" / "prometheus_client"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named prometheus_client')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(shadow.parent), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [mitmdump_executable(), "-n", "-s", str(ADDON_SCRIPT), "--set", "tokenpak_metrics=127.0.0.1:9464", "--set", f"confdir={tmp_path}",
         "--set", f"tokenpak_db={tmp_path / 't.db'}"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["tokenpak: Prometheus metrics need the team extra: pip install 'tokenpak-mitm[team]' (proxy not started)"]


@pytest.mark.e2e
def test_a_taken_port_costs_one_line_and_no_traffic_and_metrics_come_when_it_frees(tmp_path: Path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    with FakeProvider() as fake, _proxy(fake, tmp_path, port) as proxy:
        n = send_mixed(proxy.url, fake, 6)
        wait_for(lambda: len(db_rows(tmp_path / "t.db")) == n, what="rows written")
        lines = [ln for ln in proxy.output().splitlines() if "tokenpak: metrics" in ln]
        assert lines == [f"tokenpak: metrics not served: cannot listen on 127.0.0.1:{port} (Address already in use); "
                         "the proxy carries on, retrying every 10 s"]
        holder.close()
        wait_for(lambda: "metrics now served" in proxy.output(), 40, "the retried bind")
        assert total(scrape(port), "tokenpak_requests_total") == n  # counted all along
    assert "Traceback" not in proxy.output()


@pytest.mark.e2e
def test_a_scrape_during_shutdown_is_harmless(tmp_path: Path):
    port = free_port()
    seen: list[float] = []
    errors: list[str] = []  # connection refused or cut: harmless
    unexpected: list[str] = []  # an error status, a torn page: not harmless
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            try:
                seen.append(total(scrape(port), "tokenpak_requests_total"))
            except httpx.TransportError as e:
                errors.append(type(e).__name__)
                time.sleep(0.01)
            except Exception as e:  # noqa: BLE001 - recorded and asserted on below
                unexpected.append(repr(e))

    with FakeProvider() as fake:
        proxy = _proxy(fake, tmp_path, port).start()
        n = send_mixed(proxy.url, fake, 10)
        thread = threading.Thread(target=scraper, daemon=True)
        thread.start()
        wait_for(lambda: seen and seen[-1] == n, what="counted")
        code = proxy.stop()
        time.sleep(0.3)
        stop.set()
        thread.join(10)
    assert code == 0 and "Traceback" not in proxy.output()
    assert set(seen) <= set(range(n + 1)) and max(seen) == n  # whatever was answered was a whole, true page
    assert errors and not unexpected  # then refused, nothing worse
    assert len(db_rows(tmp_path / "t.db")) == n


@pytest.mark.e2e
def test_metrics_come_back_after_the_writer_is_killed_and_count_what_it_then_writes(tmp_path: Path):
    """A writer killed (SIGKILL) takes its counters with it (Prometheus sees a counter reset); the
    proxy starts another, which serves the same port again and counts exactly the rows it then
    writes. Rows: every request, once."""
    import signal as signals

    port = free_port()
    with FakeProvider() as fake, _proxy(fake, tmp_path, port) as proxy:
        first = send_mixed(proxy.url, fake, 8)
        wait_for(lambda: total(scrape(port), "tokenpak_requests_total") == first, what="the first rows counted")
        old = proxy.store_writer_pid()
        os.kill(old, signals.SIGKILL)
        wait_for(lambda: proxy.store_writer_pid() != old, what="a new writer")
        second = send_mixed(proxy.url, fake, 6, seed=100)
        db = tmp_path / "t.db"
        wait_for(lambda: len(db_rows(db)) == first + second, what="every row written")
        # every first row was written (and counted) before the kill: the new writer counts exactly the second ones
        wait_for(lambda: total(scrape(port), "tokenpak_requests_total") == second, what="the new writer's count")
        assert total(scrape(port), "tokenpak_requests_total") == second
    rows = db_rows(tmp_path / "t.db")
    assert len(rows) == len({r["request_key"] for r in rows}) == first + second
    assert "Traceback" not in proxy.output()
