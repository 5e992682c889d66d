"""Test-only mitmdump addon: ``GET /__tokenpak_probe`` answers with the proxy's inner counters.

Loaded with a second ``-s`` next to the real addon so load tests can see, from outside, what
only the process knows: how many flows the addon still tracks (its WeakKeyDictionary must empty
once flows end), how many HTTPFlow objects are alive after a collection, and the RSS. The probe
path is a GET, which the addon never classifies, so it leaves no row.
"""

from __future__ import annotations

import gc
import json

from mitmproxy import ctx, http

PROBE_PATH = "/__tokenpak_probe"


def _tokenpak() -> object | None:
    found = ctx.master.addons.get("tokenpak")
    if found is not None:
        return found
    return next((o for o in gc.get_objects() if type(o).__name__ == "TokenPak"), None)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Probe:
    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.method != "GET" or flow.request.path != PROBE_PATH:
            return
        gc.collect()
        tp = _tokenpak()
        handoff = getattr(tp, "handoff", None)
        store = getattr(handoff, "sink", None)
        live = sum(1 for o in gc.get_objects() if isinstance(o, http.HTTPFlow)) - 1  # minus this probe
        body = {
            "flows_tracked": sum(1 for o in gc.get_objects() if type(o).__name__ == "FlowState"),
            "live_http_flows": live,
            "rss_kb": _rss_kb(),
            "rows_emitted": getattr(handoff, "rows_emitted", None),
            "store_written": getattr(store, "written", None),
            "store_pending": getattr(store, "pending", None),
            "store_dropped": getattr(store, "dropped", None),
        }
        flow.response = http.Response.make(200, json.dumps(body).encode(), {"content-type": "application/json"})


addons = [Probe()]
