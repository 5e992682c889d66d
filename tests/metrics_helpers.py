"""Shared by the metrics and deployment tests: mixed LLM traffic through a proxy, a scrape of its
/metrics, and a real Prometheus server (Debian's ``prometheus`` package; tests FAIL without it)."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenpak_mitm.sim.provider import FakeProvider

INSTALL = "apt-get install -y prometheus  (Debian/Ubuntu: prometheus and promtool; .ci/deps installs it)"
MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5")


def need(binary: str) -> str:
    """The path of a Prometheus binary; a missing one FAILS the test (never a skip) with the install command."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: {INSTALL}", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send_mixed(proxy_url: str, fake: FakeProvider, n: int, *, seed: int = 0) -> int:
    """``n`` requests: Anthropic streamed and not, two models, three conversations that grow (so the
    cache writes, hits and misses), OpenAI Chat, and every seventh an upstream 429. Returns how many
    were answered (all of them: errors are answers too)."""
    answered = 0
    with httpx.Client(timeout=30) as client:
        for i in range(n):
            k = seed + i
            if k % 7 == 3:
                fake.next_http_error = 429
            if k % 5 == 4:
                body: dict[str, Any] = {"model": "gpt-5.6", "stream": k % 2 == 0, "messages": [
                    {"role": "system", "content": "policy " * 900}, {"role": "user", "content": f"question {k}"}]}
                if body["stream"]:
                    body["stream_options"] = {"include_usage": True}
                r = client.post(f"{proxy_url}/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-test"})
            else:
                conversation = k % 3
                turns = [{"role": "user" if t % 2 == 0 else "assistant", "content": f"turn {t} of {conversation} " * 40} for t in range(1 + 2 * (k // 3 % 4))]
                body = {"model": MODELS[conversation % 2], "max_tokens": 64, "stream": k % 2 == 0,
                        "system": f"You are helper {conversation}. " + "rules " * 2500, "messages": turns}
                r = client.post(f"{proxy_url}/v1/messages", json=body, headers={"x-api-key": "sk-ant-test"})
            r.read()
            answered += 1
    return answered


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    response.raise_for_status()
    text = response.text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items() if n == name and all(dict(labels).get(k) == m for k, m in match.items()))


def db_rows(db: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests")]
    finally:
        conn.close()


def wait_for(predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Prometheus:
    """A real Prometheus server on a loopback port, its data in a temp dir."""

    def __init__(self, workdir: Path, targets: Sequence[str], *, rules: Path | None = None, interval: str = "1s") -> None:
        self.binary = need("prometheus")
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": "tokenpak", "static_configs": [{"targets": list(targets)}]}],
        }
        if rules is not None:
            config["rule_files"] = [str(rules)]
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        self.log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError("prometheus exited: " + (self.workdir / "prometheus.log").read_text()[-2000:])
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(ready, 60, "prometheus to be ready")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = str(at)
        body = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr}: {body.get('errorType')}: {body.get('error')}")
        return list(body["data"]["result"])

    def query_rules(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"{self.url}/api/v1/rules", timeout=10).json()["data"]["groups"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def per_label_sums(rows: list[dict[str, Any]]) -> dict[str, dict[tuple[str, ...], float]]:
    """What the counters must hold, computed from the stored rows (the report's source)."""
    out: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        pm = (r["provider"] or "unknown", r["model"] or "unknown")
        out["requests"][(*pm, r["terminal_state"])] += 1
        for bucket, col in (("input", "input_tokens"), ("cache_read", "cache_read_tokens"), ("cache_write", "cache_write_tokens"), ("output", "output_tokens")):
            out["tokens"][(*pm, bucket)] += r[col] or 0
        out["cost"][pm] += r["cost_usd"] or 0.0
        out["net_saved"][pm] += r["savings_usd"] or 0.0
        if r["cache_miss_reason"]:
            out["miss_cost"][(*pm, r["cache_miss_reason"])] += r["miss_cost_usd"] or 0.0
        if r["ttft_ms"] is not None:
            out["ttft_count"][pm] += 1
        if r["duration_ms"] is not None:
            out["duration_count"][pm] += 1
    return out
