"""Render ``bench/results/latest.json`` as a Markdown table: ``python -m bench.markdown [PATH]``.

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


def render(doc: dict) -> str:
    lines = ["| workload | metric | unit | direct | plain | addon | addon/plain | addon/direct | target |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for w in doc["workloads"]:
        for i, m in enumerate(w["metrics"]):
            v = m["values"]
            ap, ad = m.get("addon_over_plain"), m.get("addon_over_direct")
            target = "" if m["target"] is None else f"{'**met**' if m['met'] else '**MISSED**'}: {m['target']} ({m['note']})"
            lines.append(f"| {w['name'] if i == 0 else ''} | {m['name']} | {m['unit']} | "
                         + " | ".join(_fmt(v.get(s)) for s in SETUPS)
                         + f" | {'–' if ap is None else f'{ap:.2f}x'} | {'–' if ad is None else f'{ad:.2f}x'} | {target} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    doc = json.loads(Path(argv[0] if argv else DEFAULT).read_text())
    print(render(doc))
    for w in doc["workloads"]:
        for note in w["notes"]:
            print(f"\n* {w['name']}: {note}", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
