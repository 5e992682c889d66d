"""Render ``bench/results/latest.json`` as a Markdown table: ``python -m bench.markdown [--no-targets] [PATH]``.

Why: docs/performance.md quotes a full run; generating its table from the JSON keeps the numbers
in the doc exactly those of the run, not retyped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.results_model import SETUPS

DEFAULT = Path(__file__).with_name("results") / "latest.json"


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}" if abs(v) < 10 else f"{v:.1f}"


def _ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}x"


def render(doc: dict, targets: bool = True) -> str:
    """The run's table; with peers (bench/peers) in the run, a column for each after addon's and
    addon's ratio to each. ``targets=False`` leaves the target column out (the peers section)."""
    peers = list(doc.get("peers") or {})
    heads = [*SETUPS, *(doc["peers"][p]["label"] for p in peers)]
    ratios = ["plain", "direct", *peers]
    ratio_heads = ["addon/plain", "addon/direct", *(f"addon/{doc['peers'][p]['label']}" for p in peers)]
    lines = ["| workload | metric | unit | " + " | ".join(heads + ratio_heads) + (" | target |" if targets else " |"),
             "|---|---|---|" + "---:|" * (len(heads) + len(ratio_heads)) + ("---|" if targets else "")]
    for w in doc["workloads"]:
        for i, m in enumerate(w["metrics"]):
            v = m["values"]
            target = "" if m["target"] is None else f"{'**met**' if m['met'] else '**MISSED**'}: {m['target']} ({m['note']})"
            lines.append(f"| {w['name'] if i == 0 else ''} | {m['name']} | {m['unit']} | "
                         + " | ".join(_fmt(v.get(s)) for s in (*SETUPS, *peers))
                         + " | " + " | ".join(_ratio(m.get(f"addon_over_{s}")) for s in ratios)
                         + (f" | {target} |" if targets else " |"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    targets = "--no-targets" not in argv
    argv = [a for a in argv if a != "--no-targets"]
    doc = json.loads(Path(argv[0] if argv else DEFAULT).read_text())
    print(render(doc, targets))
    for w in doc["workloads"]:
        for note in w["notes"]:
            print(f"\n* {w['name']}: {note}", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
