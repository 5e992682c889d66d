"""The shipped deployment files against real parts: the alert rules under ``promtool`` (check and
unit tests), and a real Prometheus scraping three real mitmdump instances with the shipped rules,
whose sums equal ``tokenpak report --json``; every dashboard query runs there and names only
metrics the proxy exports. Prometheus and promtool are Debian's ``prometheus`` package: a test
that needs them FAILS with the install command when they are missing (``.ci/deps`` installs them)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from metrics_helpers import Prometheus, free_port, need, scrape, send_mixed, wait_for

from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.provider import FakeProvider

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "tokenpak-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tokenpak-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tokenpak-dashboard.json"
ALERTS = {"TokenpakInstanceDown", "TokenpakCacheHitRatioFell", "TokenpakCacheMissCostHigh", "TokenpakErrorRateHigh",
          "TokenpakWriterBacklogGrowing", "TokenpakSpillGrowing", "TokenpakRowsLost"}
# Grafana's variables, as a dashboard with a 1-hour range and "All" instances would expand them.
GRAFANA_VARS = {"$__rate_interval": "15s", "$__range": "1h", "$instance": ".*"}


def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    promtool = need("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 11 rules found" in check.stdout
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


def _report(db: Path | str, *args: str, env: dict[str, str] | None = None) -> Any:
    """`tokenpak report --json` on ``db``: all of it, or with ``--by`` its groups."""
    out = subprocess.run([str(Path(sys.executable).parent / "tokenpak"), "report", "--json", "--since", "all", "--db", str(db), *args],
                         capture_output=True, text=True, timeout=120, check=True, env=env).stdout
    body = json.loads(out)
    return body["groups"] if args else body


@pytest.mark.e2e
def test_prometheus_scraping_three_instances_of_one_postgresql_sums_to_the_report_and_runs_the_dashboard(tmp_path: Path, postgres: Any):
    """The issue's "done when": three mitmdumps writing one PostgreSQL database, a real Prometheus
    scraping them with the shipped rules; its sums equal `tokenpak report --json` on that database,
    in total and model by model; every dashboard query runs there and names only exported metrics."""
    need("promtool")
    ports = [free_port() for _ in range(3)]
    url = postgres.database()
    env = {**os.environ, "TOKENPAK_HOME": str(tmp_path / "home")}
    with FakeProvider() as fake:
        proxies = []
        try:
            for i, port in enumerate(ports):
                (tmp_path / f"proxy{i}").mkdir()
                proxies.append(MitmdumpProcess(f"reverse:{fake.url}", db=url, confdir=tmp_path / f"proxy{i}", env=env,
                                               options=[f"tokenpak_metrics=127.0.0.1:{port}"]).start())
            with Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{p}" for p in ports], rules=RULES) as prom:
                sent = [send_mixed(p.url, fake, n, seed=7 * i) for i, (p, n) in enumerate(zip(proxies, (25, 14, 9)))]
                wait_for(lambda: prom.value("sum(tokenpak_requests_total)") == sum(sent), 60, f"Prometheus to see {sum(sent)} requests")
                cost = prom.value("sum(tokenpak_cost_usd_total)")
                net_saved = prom.value("sum(tokenpak_saved_usd_total) - sum(tokenpak_cache_overspend_usd_total)")
                by_model = {r["metric"]["model"]: float(r["value"][1]) for r in prom.query("sum by (model) (tokenpak_requests_total)")}
                cost_by_model = {r["metric"]["model"]: float(r["value"][1]) for r in prom.query("sum by (model) (tokenpak_cost_usd_total)")}
                assert prom.value('count(up{job="tokenpak"} == 1)') == 3
                per_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query("sum by (instance) (tokenpak_requests_total)")}
                rules = {r["name"]: r for g in prom.query_rules() for r in g["rules"]}
                assert set(rules) >= ALERTS and all(r["health"] == "ok" for r in rules.values())
                exported = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for (name, _) in scrape(ports[0])}
                results: dict[tuple[str, str], Any] = {}
                for title, expr in _dashboard_queries():
                    named = set(re.findall(r"\btokenpak_[a-z_]+", expr))
                    assert named and named <= {n + s for n in exported for s in ("", "_bucket", "_count", "_sum")}, f"{title}: {expr}"
                # A rate or an increase needs two samples of a series: on a busy machine Prometheus may
                # have scraped a new series once when the counts first matched, so give it a few more.
                deadline = time.monotonic() + 30
                while True:
                    for title, expr in _dashboard_queries():
                        results[(title, expr)] = prom.query(expr)  # raises on a query Prometheus rejects
                    if all(results.values()) or time.monotonic() > deadline:
                        break
                    time.sleep(1)
        finally:
            for p in proxies:
                p.stop()
    report = _report(url)
    groups = {g["key"]: g for g in _report(url, "--by", "model")}
    assert sent == [25, 14, 9] and report["totals"]["requests"] == 48
    assert per_instance == {f"127.0.0.1:{p}": float(n) for p, n in zip(ports, sent)}
    assert math.isclose(cost, report["totals"]["cost_usd"], rel_tol=1e-9) and cost > 0
    assert math.isclose(net_saved, report["totals"]["savings_usd"]["total"], rel_tol=1e-9, abs_tol=1e-12)
    assert by_model == {m: float(g["requests"]) for m, g in groups.items()} and len(by_model) == 3
    assert all(math.isclose(cost_by_model[m], g["cost_usd"], rel_tol=1e-9, abs_tol=1e-12) for m, g in groups.items())
    empty = [title for (title, _), result in results.items() if not result]
    assert not empty, f"dashboard panels without data: {empty}"


GUIDE = ROOT / "docs" / "deploy.md"


def _consecutive_free_ports(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports (the guide numbers its instances' ports)."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20000, 60000)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port range")


@pytest.mark.e2e
def test_the_deployment_guide_runs_as_written(tmp_path: Path):
    """docs/deploy.md's `sh` blocks, in order, exactly as written: every block but the last brings
    the team up (PostgreSQL, three proxies writing it, Prometheus with the shipped rules, an OTLP
    collector); we check what the guide says; the last block stops everything and nothing is left
    running. Only the variables of its first block are set: free ports, temp directories, a
    loopback provider, and (we run as root in CI) `AS_PG` as the guide says."""
    import shutil
    import tempfile

    from test_otel import Collector

    from tokenpak_mitm.testing.postgres import Missing, bin_dir

    need("prometheus")
    need("promtool")
    try:
        pgbin = bin_dir()
    except Missing as e:
        pytest.fail(str(e), pytrace=False)
    blocks = re.findall(r"^```sh\n(.*?)^```", GUIDE.read_text(), flags=re.S | re.M)
    assert len(blocks) >= 8 and blocks[-1].startswith("kill ")
    team = tmp_path / "team"
    pg_parent = Path(tempfile.mkdtemp(prefix="tokenpak-guide-pg-"))  # the postgres user must reach it (tmp_path is root's, 0700)
    root = os.geteuid() == 0
    if root:
        shutil.chown(pg_parent, "postgres")
    password = "guide-pw-" + os.urandom(6).hex()
    collector = Collector()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TEAM": str(team), "PROXY_PORT": str(_consecutive_free_ports(3)), "METRICS_PORT": str(_consecutive_free_ports(3)),
        "PROMETHEUS_PORT": str(free_port()), "SCRAPE_INTERVAL": "1s", "OTLP": collector.url, "ANTHROPIC_API_KEY": "sk-ant-guide-test",
        "PG_PORT": str(free_port()), "PGPASSWORD": password, "PGBIN": str(pgbin), "PGDATA": str(pg_parent / "data"),
        "AS_PG": "runuser -u postgres --" if root else "", "TOKENPAK_HOME": str(tmp_path / "home"),
    }
    url = f"postgresql://tokenpak@127.0.0.1:{env['PG_PORT']}/tokenpak"
    down = None
    with FakeProvider() as fake:
        env["UPSTREAM"] = fake.url
        try:
            up = subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(blocks[:-1])], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr
            assert re.search(r'instances up: "value":\[[0-9.]+,"3"\]', up.stdout) and up.stdout.count("tokenpak report") == 1, (
                up.stdout[-3000:] + up.stderr[-2000:] + "".join(f"\n--- {log.name}:\n{log.read_text(errors='replace')[-1500:]}" for log in sorted(team.glob("*.log"))))
            prom = Prometheus.__new__(Prometheus)
            prom.port = int(env["PROMETHEUS_PORT"])
            wait_for(lambda: prom.value("sum(tokenpak_requests_total)") == 3, 60, "Prometheus to count the guide's 3 requests")
            per_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in prom.query("sum by (instance) (tokenpak_requests_total)")}
            assert per_instance == {f"127.0.0.1:{int(env['METRICS_PORT']) + i}": 1.0 for i in range(3)}
            rules = {r["name"] for g in prom.query_rules() for r in g["rules"]}
            assert rules >= ALERTS
            cost = prom.value("sum(tokenpak_cost_usd_total)")
            report = _report(url, env=env)["totals"]  # the team's report, from the one database
            wait_for(lambda: sum(len(t.resource_spans) for t in collector.traces) >= 3, 60, "the collector to receive the spans")
        finally:
            down = subprocess.run(["bash", "-euo", "pipefail", "-c", blocks[0] + "\n" + blocks[-1]], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
            pids = [int(p.read_text()) for p in team.glob("*.pid")]
            for pid in pids:
                wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(),
                         60, f"process {pid} to exit")
            stopped = not (pg_parent / "data" / "postmaster.pid").exists()
            if not stopped:  # the guide failed before its last block: do not leave a server running
                subprocess.run([*env["AS_PG"].split(), str(pgbin / "pg_ctl"), "-D", env["PGDATA"], "-w", "stop", "-m", "immediate"], capture_output=True)
            shutil.rmtree(pg_parent, ignore_errors=True)
            collector.shutdown()
    assert down is not None and down.returncode == 0, down.stderr if down else ""
    assert stopped and len(pids) == 4
    assert report["requests"] == 3
    assert cost is not None and math.isclose(cost, report["cost_usd"], rel_tol=1e-9) and cost > 0
    for log in [team / "prometheus.log", team / "initdb.log", *team.glob("proxy*/proxy.log")]:
        text = log.read_text()
        assert password not in text and "sk-ant-guide-test" not in text and "Traceback" not in text, log
    for i in (1, 2, 3):
        assert "metrics=http://127.0.0.1:" in (team / f"proxy{i}" / "proxy.log").read_text()
