"""Experiment: time every tokenpak hook (and the planner) inside the running proxy.

Why: py-spy samples show *where* the proxy is busy but not how long one call takes; wrapping the
hooks with a monotonic clock gives per-call costs, measured in the process that serves traffic.
Load after the addon: ``python -m bench --addon-script bench/experiments/hook_timer.py``; set
``TOKENPAK_HOOK_TIMES=/path.json`` to choose where the summary is written at shutdown.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import time
from collections import defaultdict
from typing import Any

from mitmproxy import ctx

import tokenpak_mitm.addon as addon_module
import tokenpak_mitm.telemetry as telemetry_module

_TIMES: dict[str, list[int]] = defaultdict(list)
_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")


def _timed(name: str, fn: Any) -> Any:
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter_ns()
            try:
                return await fn(*a, **kw)
            finally:
                _TIMES[name].append(time.perf_counter_ns() - t)
        return run_async

    @functools.wraps(fn)
    def run(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter_ns()
        try:
            return fn(*a, **kw)
        finally:
            _TIMES[name].append(time.perf_counter_ns() - t)
    return run


addon_module.insert_markers = _timed("insert_markers", addon_module.insert_markers)
addon_module.build_row = _timed("build_row", addon_module.build_row)
telemetry_module.build_row = addon_module.build_row


def running() -> None:
    target = ctx.master.addons.get("tokenpak")
    for hook in _HOOKS:
        setattr(target, hook, _timed(hook, getattr(target, hook)))


def done() -> None:
    out = {}
    for name, values in _TIMES.items():
        s = sorted(values)
        out[name] = {"calls": len(s), "p50_us": s[len(s) // 2] / 1e3, "p99_us": s[int(len(s) * 0.99)] / 1e3,
                     "total_ms": sum(s) / 1e6}
    path = os.environ.get("TOKENPAK_HOOK_TIMES")
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
