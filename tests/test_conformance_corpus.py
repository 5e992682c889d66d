"""`make test` replays the recorded corpus in flows/ through a real mitmdump: all green, fast."""

from __future__ import annotations

import json
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tokenpak_mitm.conformance.flowfile import find_flow_files, load_recording
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
