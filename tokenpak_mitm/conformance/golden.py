"""Golden rows: the telemetry row a recorded flow must produce, minus what legitimately varies.

Stored next to the flow as ``<flow>.golden.json``. Only stable columns are kept and compared:
tokens, states, model, ids, cache decisions, cost. Timings, the per-run request key, the
start time, the (loopback) host and the proxy version change on every run and are left out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenpak_mitm.conformance.invariants import Violation

__all__ = ["STABLE_COLUMNS", "stable_row", "compare_golden", "write_golden"]

STABLE_COLUMNS: tuple[str, ...] = (
    "provider", "api", "route_class", "path", "model", "stream", "billable", "status_code",
    "terminal_state", "stop_reason", "input_tokens", "cache_read_tokens", "cache_write_tokens",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "output_tokens", "reasoning_tokens",
    "web_search_requests", "usage_source", "frames", "response_bytes", "response_id",
    "upstream_request_id", "error", "cache_origin", "markers_inserted", "client_markers",
    "cache_decision", "prefix_tokens_est", "cost_usd", "savings_usd", "price_version",
    "provider_miss_reason", "provider_missed_tokens",
)


def stable_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in STABLE_COLUMNS if k in row}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def compare_golden(golden: Mapping[str, Any] | None, row: Mapping[str, Any] | None) -> list[Violation] | None:
    """Differences between the golden row and the replayed one (None when there is no golden)."""
    if golden is None:
        return None
    if row is None:
        return [Violation("golden", "no row was written, so nothing matches the golden row")]
    out = []
    for key, want in golden.items():
        if key.startswith("_"):
            continue
        got = row.get(key)
        if not _same(want, got):
            out.append(Violation("golden", f"{key}: golden {want!r}, replay {got!r}"))
    return out


def write_golden(path: Path, row: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(stable_row(row), indent=2, sort_keys=True) + "\n")
