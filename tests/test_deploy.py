"""The shipped deployment files against real parts: the alert rules under ``promtool`` (check and
unit tests), and a real Prometheus scraping three real mitmdump instances with the shipped rules,
whose sums equal ``tokenpak report --json``; every dashboard query runs there and names only
metrics the proxy exports. Prometheus and promtool are Debian's ``prometheus`` package: a test
that needs them FAILS with the install command when they are missing (``.ci/deps`` installs them)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from metrics_helpers import Prometheus, free_port, need, scrape, send_mixed, wait_for

from tokenpak_mitm.testing.provider import FakeProvider
from tokenpak_mitm.testing.proxy import MitmdumpProcess

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "tokenpak-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tokenpak-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tokenpak-dashboard.json"
ALERTS = {"TokenpakInstanceDown", "TokenpakCacheHitRatioFell", "TokenpakCacheMissCostHigh", "TokenpakErrorRateHigh",
          "TokenpakWriterBacklogGrowing", "TokenpakSpillGrowing"}
# Grafana's variables, as a dashboard with a 1-hour range and "All" instances would expand them.
GRAFANA_VARS = {"$__rate_interval": "15s", "$__range": "1h", "$instance": ".*"}


def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    promtool = need("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 10 rules found" in check.stdout
    unit = subprocess.run([promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120, cwd=RULE_TESTS.parent)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == ALERTS == set(re.findall(r"- alert: (\w+)", RULES.read_text()))


def _dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{panel['title']}: unexpanded variable in {expr}"
            queries.append((panel["title"], expr))
    return queries


def _report(db: Path) -> dict:
    out = subprocess.run([str(Path(sys.executable).parent / "tokenpak"), "report", "--json", "--since", "all", "--db", str(db)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return json.loads(out)["totals"]


@pytest.mark.e2e
def test_prometheus_scraping_three_instances_sums_to_the_report_and_runs_the_dashboard(tmp_path: Path):
    need("promtool")
    ports = [free_port() for _ in range(3)]
    dbs = [tmp_path / f"proxy{i}" / "tokenpak.db" for i in range(3)]
    with FakeProvider() as fake:
        proxies = []
        try:
            for i, (port, db) in enumerate(zip(ports, dbs)):
                db.parent.mkdir()
                proxies.append(MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=db.parent,
                                               options=[f"tokenpak_metrics=127.0.0.1:{port}"]).start())
            with Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{p}" for p in ports], rules=RULES) as prom:
                answered = sum(send_mixed(p.url, fake, n, seed=7 * i) for i, (p, n) in enumerate(zip(proxies, (25, 14, 9))))
                wait_for(lambda: prom.value("sum(tokenpak_requests_total)") == answered, 60, f"Prometheus to see {answered} requests")
                cost = prom.value("sum(tokenpak_cost_usd_total)")
                net_saved = prom.value("sum(tokenpak_saved_usd_total) - sum(tokenpak_cache_overspend_usd_total)")
                assert prom.value('count(up{job="tokenpak"} == 1)') == 3
                per_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query("sum by (instance) (tokenpak_requests_total)")}
                rules = {r["name"]: r for g in prom.query_rules() for r in g["rules"]}
                assert set(rules) >= ALERTS and all(r["health"] == "ok" for r in rules.values())
                exported = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for (name, _) in scrape(ports[0])}
                results = {}
                for title, expr in _dashboard_queries():
                    named = set(re.findall(r"\btokenpak_[a-z_]+", expr))
                    assert named and named <= {n + s for n in exported for s in ("", "_bucket", "_count", "_sum")}, f"{title}: {expr}"
                    results[(title, expr)] = prom.query(expr)  # raises on a query Prometheus rejects
        finally:
            for p in proxies:
                p.stop()
    reports = [_report(db) for db in dbs]
    assert answered == sum(r["requests"] for r in reports) == 48
    assert per_instance == {f"127.0.0.1:{p}": float(r["requests"]) for p, r in zip(ports, reports)}
    assert math.isclose(cost, math.fsum(r["cost_usd"] for r in reports), rel_tol=1e-9) and cost > 0
    assert math.isclose(net_saved, math.fsum(r["savings_usd"]["total"] for r in reports), rel_tol=1e-9, abs_tol=1e-12)
    empty = [title for (title, _), result in results.items() if not result]
    assert not empty, f"dashboard panels without data: {empty}"
