"""Regenerate the ``flows/`` corpus: ``python -m tokenpak_mitm.conformance.corpus [--out flows]``.

Every scenario (``scenarios.py``) is run through a real mitmdump with ``tokenpak_record`` against
the scripted loopback upstream, exactly as a user would record one; the recorded file is renamed
after its scenario. Then the whole corpus is replayed once to write the golden rows, each of
which is compared with the row the live run wrote (they must agree on every stable column
except where redaction changed the bytes). Finally every file is scanned for the canary keys
used while recording: a corpus that leaks them is not written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tokenpak_mitm.conformance.flowfile import load_recording
from tokenpak_mitm.conformance.golden import compare_golden, stable_row
from tokenpak_mitm.conformance.scenarios import SCENARIOS, Scenario
from tokenpak_mitm.core.secret_scan import scan_paths
from tokenpak_mitm.sim.client import Response, build_request, request
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.upstream import FakeUpstream, Received, Script

__all__ = ["record_scenarios", "main"]


def _wait_for_file(directory: Path, known: set[Path], timeout: float = 15.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [p for p in directory.glob("*.mitm") if p not in known]
        if fresh:
            return fresh[0]
        time.sleep(0.02)
    raise TimeoutError(f"no recording appeared in {directory}")


def record_scenarios(out: Path, scenarios: list[Scenario], workdir: Path) -> dict[str, dict[str, Any]]:
    """Record each scenario into ``out/<name>.mitm``; returns the live rows by scenario name."""
    slot: list[Script] = []

    def handle(_: Received) -> Script:
        return slot.pop() if slot else Script(status=500, steps=[])

    rec_dir, db = workdir / "recorded", workdir / "live.db"
    upstream = FakeUpstream(handle).start()
    proxy = MitmdumpProcess(f"reverse:{upstream.url}", db=db, confdir=workdir, options=[f"tokenpak_record={rec_dir}", "flow_detail=0",
                                                                                   "tokenpak_cache_history=false"]).start()
    ids: dict[str, str] = {}
    try:
        known: set[Path] = set()
        for sc in scenarios:
            slot.append(sc.script)
            raw = build_request("POST", sc.path, sc.body, sc.headers, host=f"127.0.0.1:{proxy.port}")
            marker = sc.hang_up_after

            def hang_up(piece: bytes, resp: Response, marker: bytes | None = marker) -> bool:
                return marker is not None and marker in resp.body

            request(proxy.port, raw, on_piece=hang_up, timeout=30)
            path = _wait_for_file(rec_dir, known)
            known.add(path)
            target = out / f"{sc.name}.mitm"
            shutil.move(path, target)
            ids[sc.name] = load_recording(target).flow.id
    finally:
        proxy.stop()
        upstream.stop()
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = {r["request_key"]: dict(r) for r in con.execute("SELECT * FROM requests")}
    con.close()
    return {name: rows.get(fid, {}) for name, fid in ids.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="flows", help="corpus directory (default: flows)")
    parser.add_argument("--only", nargs="*", help="record only these scenarios")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    with tempfile.TemporaryDirectory(prefix="tokenpak-corpus-") as tmp:
        live = record_scenarios(out, chosen, Path(tmp))
    names = [out / f"{s.name}.mitm" for s in chosen]
    leaks = scan_paths(names)
    if leaks:
        for p in names:
            p.unlink(missing_ok=True)
        print("canary keys leaked into the recordings; nothing kept:\n" + "\n".join(map(str, leaks)), file=sys.stderr)
        return 1
    from tokenpak_mitm.conformance.report import failed, render_table
    from tokenpak_mitm.conformance.session import run_conformance

    outcomes = run_conformance(names, fast=True, update_golden=True)
    render_table(outcomes)
    drift = 0
    for sc in chosen:
        golden_file = out / f"{sc.name}.golden.json"
        if not golden_file.exists():
            continue
        golden = json.loads(golden_file.read_text())
        for v in compare_golden(golden, stable_row(live.get(sc.name) or {})) or []:
            drift += 1
            print(f"note: {sc.name}: the live row differs from the replayed one: {v.message}")
    print(f"recorded {len(chosen)} flow(s) into {out}; {drift} live/replay difference(s)")
    return 1 if failed(outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
