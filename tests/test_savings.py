"""tokenpak savings: what caching would cost on a workload file or recorded flows, at the file's clock."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tokenpak_mitm.savings import WorkloadRequest, evaluate, parse_workload

DOC = "the shared document says many things about caches and prefixes " * 400


def batch_lines(waves: int = 4, size: int = 4) -> list[str]:
    lines = []
    for wave in range(waves):
        for i in range(size):
            body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": [
                {"type": "text", "text": DOC}, {"type": "text", "text": f"question {wave}.{i}?"}]}]}
            lines.append(json.dumps({"t": wave * 20.0, "path": "/v1/messages", "body": body, "wave": wave, "output_tokens": 20}))
    return lines


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenpak_mitm.cli", "savings", *args], capture_output=True, text=True, timeout=120, check=False)


def test_json_output_has_exactly_the_documented_shape(tmp_path: Path):
    workload = tmp_path / "w.jsonl"
    workload.write_text("\n".join(batch_lines()) + "\n")
    done = run_cli(str(workload), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"none", "planner", "stateless", "best", "share", "requests"}
    assert out["requests"] == 16
    assert out["best"] <= out["planner"] < out["none"] < out["stateless"]  # the old planner lost money here
    assert 0.95 <= out["share"] <= 1.0


def test_bad_lines_are_reported_one_each_and_the_rest_is_replayed(tmp_path: Path):
    workload = tmp_path / "w.jsonl"
    good = batch_lines(1, 2)
    workload.write_text("\n".join([good[0], "{not json", json.dumps({"t": "soon", "path": "/v1/messages", "body": {}}),
                                   json.dumps({"t": 1, "path": "/v1/embeddings", "body": {"model": "m"}}), good[1]]) + "\n")
    done = run_cli(str(workload), "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["requests"] == 2
    problems = done.stderr.strip().splitlines()
    assert [p.split(":")[1].strip() for p in problems] == ["skipped line 2", "skipped line 3", "skipped line 4"]


def test_a_missing_path_is_one_clear_line(tmp_path: Path):
    done = run_cli(str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no such file" in done.stderr


def test_a_directory_of_recorded_flows_is_replayed():
    flows = Path(__file__).parent.parent / "flows"
    done = run_cli(str(flows), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["requests"] >= 10 and out["best"] <= min(out["none"], out["planner"], out["stateless"]) + 1e-9


def test_the_files_clock_decides_not_the_wall_clock():
    """The same requests 4 minutes apart read the cache; 6 minutes apart (with ttl 5m) they cannot."""
    body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "system": DOC, "messages": [{"role": "user", "content": "hi"}]}
    close = [WorkloadRequest(t, "/v1/messages", body) for t in (0.0, 240.0, 480.0)]
    apart = [WorkloadRequest(t, "/v1/messages", body) for t in (0.0, 360.0, 720.0)]
    assert evaluate(close, search=False, ttl="5m").planner < evaluate(apart, search=False, ttl="5m").planner


def test_parse_workload_reads_waves_and_output_tokens():
    requests, problems = parse_workload(batch_lines(2, 2))
    assert problems == [] and [(r.t, r.wave, r.output_tokens) for r in requests] == [(0.0, 0, 20)] * 2 + [(20.0, 1, 20)] * 2


def test_openai_requests_are_priced_with_their_cache_fields():
    items = [{"role": "user", "content": [{"type": "input_text", "text": DOC}]}]
    workload = [WorkloadRequest(t, "/v1/responses", {"model": "gpt-5.6", "input": items + [
        {"role": "user", "content": [{"type": "input_text", "text": f"now is {t}"}]}]}) for t in (0.0, 10.0, 20.0, 30.0)]
    result = evaluate(workload)
    assert result.best <= result.planner < result.none  # an explicit breakpoint before the changing tail pays
