"""``tokenpak conformance [PATHS...]``: replay recorded flows through a real mitmdump, check I1-I10.

Each flow is replayed (``replay.py``) and then checked: the ten invariants, its golden row
(``<flow>.golden.json``; ``--update-golden`` rewrites them), the replayed chunk boundaries and
the live checker's count. Prints a flow × invariant table, optionally writes JUnit XML, and
exits 1 when anything failed. Also runnable as ``python -m tokenpak_mitm.conformance.runner``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tokenpak_mitm.conformance.flowfile import Recording, find_flow_files, load_recording
from tokenpak_mitm.conformance.golden import compare_golden, write_golden
from tokenpak_mitm.conformance.invariants import Outcome, Violation, check_all
from tokenpak_mitm.conformance.replay import ReplayResult, ReplayRig
from tokenpak_mitm.conformance.report import FlowOutcome, failed, render_table, write_junit
from tokenpak_mitm.conformance.secrets import DEFAULT_CANARIES

__all__ = ["add_arguments", "run", "run_conformance", "chunk_fidelity"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", default=["flows"], help="flow files or directories of *.mitm (default: flows/)")
    parser.add_argument("--fast", action="store_true", help="replay chunks at a fixed 1 ms pace instead of the recorded timing")
    parser.add_argument("--junit", metavar="FILE", help="also write JUnit XML results to FILE")
    parser.add_argument("--update-golden", action="store_true", help="rewrite each flow's golden row from this replay")
    parser.add_argument("--workdir", metavar="DIR", help="keep the replay db, probe trace, logs and re-recordings in DIR")


def run(args: argparse.Namespace) -> int:
    outcomes = run_conformance(args.paths, fast=args.fast, update_golden=args.update_golden, workdir=args.workdir)
    render_table(outcomes)
    if args.junit:
        write_junit(outcomes, args.junit)
    if not outcomes:
        print("no flow files found in " + " ".join(args.paths), file=sys.stderr)
        return 2
    return 1 if failed(outcomes) else 0


def chunk_fidelity(result: ReplayResult) -> Outcome:
    """The client got the upstream's chunks with the same boundaries (chunked streams only)."""
    resp, rec = result.response, result.recording
    if resp is None or not rec.chunked or not result.sent_chunks:
        return None
    want = [len(c) for c in result.sent_chunks]
    got = [len(p) for _, p in resp.pieces]
    ok = got == want if rec.end_path == "completed" else want[: len(got)] == got
    return [] if ok else [Violation("chunks", f"chunk sizes upstream {want[:12]}{'…' if len(want) > 12 else ''}, client {got[:12]}{'…' if len(got) > 12 else ''}")]


def _live(row: dict | None) -> Outcome:
    if row is None or row.get("conformance_violations") is None:
        return None
    n = int(row["conformance_violations"])
    return [Violation("live", f"the in-proxy checker counted {n} violation(s) on this flow (see the mitmdump log)")] if n else []


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


def _check(result: ReplayResult, rows: dict[str, list[dict]], artifacts: dict[str, bytes], update_golden: bool) -> FlowOutcome:
    rec = result.recording
    if result.skipped:
        return FlowOutcome(rec.name, skipped=result.skipped)
    ev = result.evidence
    ev.rows = rows.get(result.flow_id or "", [])
    ev.artifacts = {**artifacts, rec.path.name: rec.path.read_bytes()}
    ev.canaries = [*result.canaries, *DEFAULT_CANARIES]
    outcome = FlowOutcome(rec.name, results=dict(check_all(ev)))
    row = ev.rows[0] if ev.rows else None
    if update_golden and row is not None:
        write_golden(rec.golden_path, row)
    outcome.results["golden"] = compare_golden(rec.golden(), row)
    outcome.results["chunks"] = chunk_fidelity(result)
    outcome.results["live"] = _live(row)
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenpak conformance", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
