"""Presenting conformance results: a flow × invariant table (rich) and JUnit XML for CI."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tokenpak_mitm.conformance.invariants import INVARIANTS, Outcome
from tokenpak_mitm.store.files import write_private

__all__ = ["FlowOutcome", "COLUMNS", "render_table", "write_junit", "failed"]

# Extra columns beside I1-I10: the golden row, the replayed chunk boundaries, the live checker.
EXTRA = {"golden": "golden row (stable columns)", "chunks": "replayed chunk boundaries", "live": "live checker (tokenpak_conformance=warn)"}
COLUMNS: dict[str, str] = {**{k: v[0] for k, v in INVARIANTS.items()}, **EXTRA}


@dataclass
class FlowOutcome:
    name: str
    results: dict[str, Outcome] = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None  # the flow could not be loaded or replayed at all

    @property
    def failed(self) -> bool:
        return self.error is not None or any(r for r in self.results.values())


def failed(outcomes: Sequence[FlowOutcome]) -> bool:
    return any(o.failed for o in outcomes)


def _cell(outcome: Outcome) -> str:
    if outcome is None:
        return "[dim]n.a.[/dim]"
    return "[bold red]FAIL[/bold red]" if outcome else "[green]pass[/green]"


def render_table(outcomes: Sequence[FlowOutcome], console: Console | None = None) -> None:
    if console is None:
        needed = max([len(o.name) for o in outcomes] + [10]) + 7 * len(COLUMNS) + 8
        console = Console()
        if not console.is_terminal:  # CI logs: never squeeze the table into 80 columns
            console = Console(width=max(needed, 100))
    table = Table(title="tokenpak conformance", show_lines=False)
    table.add_column("flow", no_wrap=True)
    for key in COLUMNS:
        table.add_column(key, justify="center")
    for o in outcomes:
        if o.error or o.skipped:
            note = f"[bold red]ERROR[/bold red] {o.error}" if o.error else f"[yellow]skipped[/yellow]: {o.skipped}"
            table.add_row(o.name, note, *[""] * (len(COLUMNS) - 1))
            continue
        table.add_row(o.name, *[_cell(o.results.get(k)) for k in COLUMNS])
    console.print(table)
    for o in outcomes:
        for key in COLUMNS:
            for v in o.results.get(key) or []:
                console.print(f"[red]✗[/red] {o.name} [bold]{key}[/bold] {v.message}", markup=True, highlight=False, soft_wrap=True)
    total = sum(1 for o in outcomes for r in o.results.values() if r is not None)
    bad = sum(1 for o in outcomes for r in o.results.values() if r)
    console.print(f"{len(outcomes)} flow(s), {total} check(s), {bad} failed" + (f", {sum(1 for o in outcomes if o.skipped)} skipped" if any(o.skipped for o in outcomes) else ""))


def write_junit(outcomes: Sequence[FlowOutcome], path: str | Path) -> None:
    suite = ET.Element("testsuite", name="tokenpak-conformance")
    tests = failures = skipped = errors = 0
    for o in outcomes:
        if o.error:
            case = ET.SubElement(suite, "testcase", classname=f"conformance.{o.name}", name="replay")
            ET.SubElement(case, "error", message=o.error)
            tests, errors = tests + 1, errors + 1
            continue
        for key, title in COLUMNS.items():
            case = ET.SubElement(suite, "testcase", classname=f"conformance.{o.name}", name=f"{key} {title}")
            tests += 1
            result = o.results.get(key)
            if o.skipped or result is None:
                ET.SubElement(case, "skipped", message=o.skipped or "not applicable to this flow")
                skipped += 1
            elif result:
                node = ET.SubElement(case, "failure", message=result[0].message[:200])
                node.text = "\n".join(v.message for v in result)
                failures += 1
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", str(skipped))
    root = ET.Element("testsuites")
    root.append(suite)
    buf = io.BytesIO()
    ET.ElementTree(root).write(buf, encoding="utf-8", xml_declaration=True)
    write_private(Path(path), buf.getvalue())  # owner-only, like every file the CLI writes
