"""One conformance session: replay every flow, then check it (used by ``tokenpak conformance``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenpak_mitm.conformance.flowfile import Recording, find_flow_files, load_recording
from tokenpak_mitm.conformance.golden import compare_golden, write_golden
from tokenpak_mitm.conformance.invariants import Outcome, Violation, check_all
from tokenpak_mitm.conformance.replay import ReplayResult, ReplayRig
from tokenpak_mitm.conformance.report import FlowOutcome
from tokenpak_mitm.core.secret_scan import DEFAULT_CANARIES

__all__ = ["run_conformance", "chunk_fidelity"]


def chunk_fidelity(result: ReplayResult) -> Outcome:
    """The client got the upstream's chunks with the same boundaries (chunked streams only)."""
    resp, rec = result.response, result.recording
    if resp is None or not rec.chunked or not result.sent_chunks:
        return None
    want = [len(c) for c in result.sent_chunks]
    got = [len(p) for _, p in resp.pieces]
    ok = got == want if rec.end_path == "completed" else want[: len(got)] == got
    return [] if ok else [Violation("chunks", f"chunk sizes upstream {want[:12]}{'…' if len(want) > 12 else ''}, client {got[:12]}{'…' if len(got) > 12 else ''}")]


def _live(row: Mapping[str, Any] | None, log: str, flow_id: str | None) -> Outcome:
    """What the in-proxy checker (on during replays) said: its log lines, else the row's count.

    The log is the authority: a violation found after the row was written (a second row for the
    same request, which the store then ignores) can only be logged.
    """
    lines = [ln.split("): ", 1)[-1] for ln in log.splitlines() if flow_id and f"tokenpak conformance violation (flow {flow_id[:8]})" in ln]
    if lines:
        return [Violation("live", f"in-proxy checker: {ln}") for ln in lines]
    if row is None or row.get("conformance_violations") is None:
        return None
    n = int(row["conformance_violations"])
    return [Violation("live", f"the in-proxy checker counted {n} violation(s) on this flow")] if n else []


def run_conformance(
    paths: Sequence[str | Path],
    *,
    fast: bool = False,
    update_golden: bool = False,
    workdir: str | Path | None = None,
    extra_options: list[str] | None = None,
    extra_scripts: list[str] | None = None,
    keep: list[ReplayResult] | None = None,
) -> list[FlowOutcome]:
    """Replay and check every flow; ``keep`` (if given) receives the raw replay results."""
    outcomes: list[FlowOutcome] = []
    recordings: list[Recording] = []
    for path in find_flow_files(paths):
        try:
            recordings.append(load_recording(path))
        except Exception as e:
            outcomes.append(FlowOutcome(Path(path).stem, error=f"cannot load: {e}"))
    if not recordings:
        return outcomes
    results: list[ReplayResult] = []
    rig = ReplayRig(Path(workdir) if workdir else None, fast=fast, extra_options=extra_options, extra_scripts=extra_scripts)
    try:
        rig.start()
        for rec in recordings:
            try:
                results.append(rig.replay(rec))
            except Exception as e:
                outcomes.append(FlowOutcome(rec.name, error=f"replay failed: {type(e).__name__}: {e}"))
        rig.stop()  # flushes the database
        rows = rig.rows_by_flow()
        artifacts = rig.artifacts()
        for result in results:
            outcomes.append(_check(result, rows, artifacts, update_golden))
    finally:
        rig.stop()
        rig.cleanup()
    if keep is not None:
        keep.extend(results)
    order = {rec.name: i for i, rec in enumerate(recordings)}
    return sorted(outcomes, key=lambda o: order.get(o.name, -1))


def _check(result: ReplayResult, rows: Mapping[str, list[dict[str, Any]]], artifacts: dict[str, bytes], update_golden: bool) -> FlowOutcome:
    rec = result.recording
    if result.skipped:
        return FlowOutcome(rec.name, skipped=result.skipped)
    ev = result.evidence
    ev.rows = list(rows.get(result.flow_id or "", []))
    ev.artifacts = {**artifacts, rec.path.name: rec.path.read_bytes()}
    ev.canaries = [*result.canaries, *DEFAULT_CANARIES]
    outcome = FlowOutcome(rec.name, results=dict(check_all(ev)))
    row = ev.rows[0] if ev.rows else None
    if update_golden and row is not None:
        write_golden(rec.golden_path, row)
    outcome.results["golden"] = compare_golden(rec.golden(), row)
    outcome.results["chunks"] = chunk_fidelity(result)
    outcome.results["live"] = _live(row, artifacts.get("mitmdump log", b"").decode("utf-8", "replace"), result.flow_id)
    return outcome
