"""Render results: one rich table for the terminal, one JSON document for tooling and the docs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.results_model import SETUPS, WorkloadResult, ratio

__all__ = ["loadavg", "machine_info", "print_table", "print_profiles", "write_json"]


def loadavg() -> str:
    """Other work on the box shows up in the tails; record how busy it was."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def machine_info() -> dict[str, object]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    try:
        from mitmproxy.version import VERSION as mitm_version
    except ImportError:
        mitm_version = "?"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {"nproc": os.cpu_count(), "cpu": cpu, "loadavg_at_end": loadavg(), "python": platform.python_version(), "mitmproxy": mitm_version,
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit,
            "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]])}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def print_table(results: list[WorkloadResult], console: Console | None = None, peers: tuple[str, ...] = ()) -> None:
    """One row per metric: a column per setup (the peers' after ours), addon's ratios to plain,
    direct and each peer, and the target's verdict. A peer that sat a workload out shows "-"."""
    console = console or Console()
    title = "tokenpak-mitm: direct vs plain mitmdump vs mitmdump + tokenpak"
    table = Table(title=f"{title}{' vs ' + ' vs '.join(peers) if peers else ''} (one interleaved run)")
    table.add_column("workload")
    table.add_column("metric")
    table.add_column("unit")
    for s in (*SETUPS, *peers):
        table.add_column(s, justify="right")
    for s in ("plain", "direct", *peers):
        table.add_column(f"addon/{s}", justify="right")
    table.add_column("target")
    for res in results:
        for i, m in enumerate(res.metrics):
            verdict = "" if m.target is None else f"{'[green]met' if m.met else '[red]MISSED' if m.met is False else '?'}[/] {m.target} ({m.note})"
            table.add_row(res.name if i == 0 else "", m.name, m.unit, *(_fmt(m.values.get(s)) for s in (*SETUPS, *peers)),
                          *(_ratio(ratio(m.values.get("addon"), m.values.get(s))) for s in ("plain", "direct", *peers)), verdict)
        table.add_section()
    console.print(table)
    for res in results:
        for note in res.notes:
            console.print(f"[dim]{res.name}: {note}[/]")


def print_profiles(results: list[WorkloadResult], console: Console) -> None:
    """Hot functions per proxy, as shares of the samples where the proxy was busy (not idle)."""
    for res in results:
        for setup, rows in res.profiles.items():
            table = Table(title=f"py-spy: {res.name} / {setup} (share of busy samples)")
            table.add_column("function")
            table.add_column("inclusive %", justify="right")
            table.add_column("self %", justify="right")
            for fn, inc, own in rows:
                table.add_row(fn, f"{inc:.1f}", f"{own:.1f}")
            console.print(table)


def write_json(path: Path, results: list[WorkloadResult], extra: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info(), **extra, "workloads": [r.to_json() for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
