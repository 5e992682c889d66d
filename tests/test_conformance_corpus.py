"""`make test` replays the recorded corpus in flows/ through a real mitmdump: all green, fast."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tokenpak_mitm.conformance.flowfile import find_flow_files, load_recording
from tokenpak_mitm.conformance.golden import compare_golden
from tokenpak_mitm.conformance.invariants import check_all
from tokenpak_mitm.conformance.replay import ReplayResult
from tokenpak_mitm.conformance.report import failed, write_junit
from tokenpak_mitm.conformance.session import run_conformance
from tokenpak_mitm.core.secret_scan import scan_paths

FLOWS = Path(__file__).resolve().parents[1] / "flows"
FLOW_FILES = find_flow_files([FLOWS])


def _explain(outcomes) -> str:
    return "\n".join(f"{o.name} {k}: {v.message}" for o in outcomes for k, r in o.results.items() for v in r or []) + "\n".join(
        f"{o.name}: {o.error}" for o in outcomes if o.error
    )


@pytest.mark.e2e
def test_the_corpus_replays_green_through_a_real_mitmdump(tmp_path: Path):
    started = time.monotonic()
    kept: list[ReplayResult] = []
    outcomes = run_conformance([FLOWS], fast=True, keep=kept)
    elapsed = time.monotonic() - started
    assert not failed(outcomes), _explain(outcomes)
    assert len(outcomes) == len(FLOW_FILES) >= 20
    assert not [o.name for o in outcomes if o.skipped]
    assert elapsed < 60, f"the corpus replay took {elapsed:.1f}s"
    # Coverage the corpus promises: every dialect, every ending, each checked where it applies.
    assert {r.recording.dialect for r in kept} == {"anthropic", "openai_chat", "openai_responses", "gemini"}
    assert {r.recording.end_path for r in kept} >= {"completed", "client_disconnected", "upstream_disconnected"}
    states = {json.loads(p.with_name(p.stem + ".golden.json").read_text())["terminal_state"] for p in FLOW_FILES}
    assert states >= {"completed", "stream_error", "error_response", "client_disconnected", "upstream_disconnected"}
    for column in ("I1", "I2", "I3", "I4", "I5", "I6", "I7", "I8", "I9", "I10", "golden", "chunks", "live"):
        assert any(o.results.get(column) == [] for o in outcomes), f"{column} was never exercised"
    junit = tmp_path / "junit.xml"
    write_junit(outcomes, junit)
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert int(suite.get("tests") or 0) == len(outcomes) * 13
    assert junit.stat().st_mode & 0o777 == 0o600  # files the CLI writes are owner-only


def test_the_corpus_holds_no_secret():
    assert FLOW_FILES
    assert scan_paths([FLOWS]) == []


@pytest.mark.parametrize("path", FLOW_FILES, ids=lambda p: p.stem)
def test_each_recording_is_consistent_at_rest(path: Path):
    """Without replaying: the file's own request/response and its golden row satisfy the invariants."""
    rec = load_recording(path)
    assert rec.golden() is not None, "every flow needs a golden row"
    results = check_all(rec.evidence_at_rest())
    assert not any(results.values()), {k: [str(v) for v in r or []] for k, r in results.items()}


@pytest.mark.e2e
def test_the_cli_fails_on_a_row_that_no_longer_matches_its_golden(tmp_path: Path):
    from tokenpak_mitm.cli.main import main

    name = "anthropic_stream_basic"
    shutil.copy(FLOWS / f"{name}.mitm", tmp_path)
    golden = json.loads((FLOWS / f"{name}.golden.json").read_text())
    (tmp_path / f"{name}.golden.json").write_text(json.dumps({**golden, "output_tokens": golden["output_tokens"] + 1}))
    junit = tmp_path / "junit.xml"
    assert main(["conformance", "--fast", "--junit", str(junit), str(tmp_path)]) == 1
    failures = ET.parse(junit).getroot().iter("failure")
    assert any("output_tokens" in (f.text or "") for f in failures)
    assert main(["conformance", "--fast", "--update-golden", str(tmp_path)]) == 0
    assert json.loads((tmp_path / f"{name}.golden.json").read_text())["output_tokens"] == golden["output_tokens"]


def _price_table_range() -> tuple[str, str]:
    """The oldest genai-prices pyproject allows (its lower bound) and the requirement itself."""
    text = (FLOWS.parent / "pyproject.toml").read_text()
    m = re.search(r'"genai-prices(>=([0-9.]+)[^"]*)"', text)
    assert m, "genai-prices is declared with a lower bound"
    return m.group(2), m.group(1)


def test_a_golden_ignores_the_price_table_version_and_names_a_real_price_change():
    # Issue 26 item 6: a newer genai-prices failed 21 of 28 flows on price_version alone.
    golden = json.loads((FLOWS / "anthropic_stream_basic.golden.json").read_text())
    assert "price_version" not in golden  # a golden holds what the flow determines
    row = {**golden, "price_version": "genai-prices 9.9.9 (2030-01-01)"}
    assert compare_golden({**golden, "price_version": "genai-prices 0.2.3"}, row) == []  # an older golden's version is ignored
    repriced = compare_golden(golden, {**row, "cost_usd": golden["cost_usd"] * 2})
    assert [v.message.split(":")[0] for v in repriced or []] == ["cost_usd"]
    assert "same model and tokens" in repriced[0].message and "genai-prices 9.9.9" in repriced[0].message
    changed = compare_golden(golden, {**row, "cost_usd": golden["cost_usd"] * 2, "output_tokens": golden["output_tokens"] + 1})
    assert {v.message.split(":")[0] for v in changed or []} == {"cost_usd", "output_tokens"}
    assert not any("same model and tokens" in v.message for v in changed or [])  # the tokens explain it


@pytest.mark.e2e
def test_the_corpus_replays_green_under_the_newest_price_table_the_range_allows(tmp_path: Path):
    """The oldest table allowed is the locked one (the corpus test above replays under it); the
    newest is fetched from the package index into a throwaway directory put first on PYTHONPATH
    of the replay (the lock and this environment are untouched). Skipped without an index."""
    oldest, spec = _price_table_range()
    installed = importlib.metadata.version("genai-prices")
    assert installed == oldest, "the lock pins the oldest allowed genai-prices; replay under the locked one too if that changes"
    overlay = tmp_path / "prices"
    got = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--target", str(overlay),
                          f"genai-prices{spec}"], capture_output=True, text=True, timeout=300)
    if got.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the package index to replay under the newest genai-prices: {got.stderr.strip()[-200:]}")
        pytest.skip(f"no package index to fetch the newest genai-prices from: {got.stderr.strip()[-200:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(overlay), os.environ.get("PYTHONPATH")]))}
    newest = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; print(m.version('genai-prices'))"],
                            env=env, capture_output=True, text=True, check=True).stdout.strip()
    if newest == installed:
        pytest.skip(f"genai-prices {installed} is also the newest the range {spec} allows")
    replay = subprocess.run([sys.executable, "-m", "tokenpak_mitm.cli.main", "conformance", "--fast", str(FLOWS)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert replay.returncode == 0, f"under genai-prices {newest}:\n{replay.stdout[-3000:]}{replay.stderr[-2000:]}"
