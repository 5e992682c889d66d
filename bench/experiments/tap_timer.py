"""Experiment: time ``StreamTap.__call__`` per chunk inside the proxy and record chunk sizes.

Why: shows how mitmproxy actually slices a stream for the callable (one call per upstream HTTP
chunk, large chunks split by socket reads) and what our work per call costs in situ.
Set ``TOKENPAK_TAP_TIMES=/path.json``; the summary is written at shutdown.
"""

from __future__ import annotations

import json
import os
import time

from tokenpak_mitm.tap import StreamTap

_sizes: list[int] = []
_times: list[int] = []
_call = StreamTap.__call__


def _timed(self: StreamTap, data: bytes) -> bytes:
    t = time.perf_counter_ns()
    out = _call(self, data)
    if len(_times) < 2_000_000:  # bounded
        _times.append(time.perf_counter_ns() - t)
        _sizes.append(len(data))
    return out


StreamTap.__call__ = _timed  # type: ignore[method-assign]


def done() -> None:
    path = os.environ.get("TOKENPAK_TAP_TIMES")
    if not path or not _times:
        return
    s, z = sorted(_times), sorted(_sizes)
    with open(path, "w") as f:
        json.dump({"calls": len(s), "p50_us": s[len(s) // 2] / 1e3, "p99_us": s[int(len(s) * 0.99)] / 1e3,
                   "total_ms": sum(s) / 1e6, "chunk_p50_bytes": z[len(z) // 2], "chunk_max_bytes": z[-1],
                   "bytes": sum(z)}, f, indent=2)
