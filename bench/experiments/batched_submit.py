"""Experiment: hand rows to the SQLite writer in batches, at most one batch per 100 ms.

Why: the writer thread wakes for every row and runs a BEGIN/INSERT/COMMIT per row. Each time it
needs the GIL back, mitmproxy's event-loop thread can be held up to the interpreter's switch
interval (5 ms), which shows up as 20+ ms TTFB tails. Buffering on the loop thread (no lock, a
``call_later`` timer) and submitting a batch at once means one wake-up and one transaction per
batch. A real implementation would linger in the writer thread instead, and flush on close.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tokenpak_mitm.store import TelemetryStore

LINGER_S = 0.1
_submit_now = TelemetryStore.submit


def _flush(store: TelemetryStore) -> None:
    rows, store._bench_batch = store._bench_batch, []  # type: ignore[attr-defined]
    for row in rows:
        _submit_now(store, row)


def _submit_batched(self: TelemetryStore, row: Any) -> None:
    batch = getattr(self, "_bench_batch", None)
    if batch is None:
        batch = self._bench_batch = []  # type: ignore[attr-defined]
    batch.append(row)
    if len(batch) == 1:
        try:
            asyncio.get_running_loop().call_later(LINGER_S, _flush, self)
        except RuntimeError:
            _flush(self)


TelemetryStore.submit = _submit_batched  # type: ignore[method-assign]
