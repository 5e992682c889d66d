"""Golden rows: the telemetry row a recorded flow must produce, minus what legitimately varies.

Stored next to the flow as ``<flow>.golden.json``. Only what the flow determines is kept and
compared: tokens, states, model, ids, cache decisions, cost. Timings, the per-run request key,
the start time, the (loopback) host and the proxy version change on every run and are left out,
and so is ``price_version``: it names the installed price table (genai-prices), not the flow, so
a newer table that prices the flow the same passes. A price that really changed shows as a
``cost_usd`` / ``savings_usd`` difference that says so (same model and tokens, another table).
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
    "cache_decision", "prefix_tokens_est", "cost_usd", "savings_usd",
    "provider_miss_reason", "provider_missed_tokens",
)
VARYING: frozenset[str] = frozenset({"price_version"})  # in goldens written before it was left out: ignored
_PRICED = ("cost_usd", "savings_usd")


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
    differs = {key for key, want in golden.items() if not key.startswith("_") and key not in VARYING and not _same(want, row.get(key))}
    repriced = bool(differs) and differs <= set(_PRICED)  # the same model and tokens, another price
    table = row.get("price_version")
    for key in sorted(differs, key=list(golden).index):
        message = f"{key}: golden {golden[key]!r}, replay {row.get(key)!r}"
        if repriced:
            message += (f": same model and tokens, so the price table{f' ({table})' if table else ''} prices "
                        f"{golden.get('model') or 'the model'} differently from when the golden was written")
        out.append(Violation("golden", message))
    return out


def write_golden(path: Path, row: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(stable_row(row), indent=2, sort_keys=True) + "\n")
