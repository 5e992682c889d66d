"""``python -m bench.hooks``: the addon's own time per request, hook by hook, in-process.

The end-to-end runs (``python -m bench``) give ratios to plain mitmdump; this names where the
addon's part goes. It drives the real ``TokenPak`` addon through mitmproxy's own test harness
(``taddons``), with a real store writer process and database, on flows shaped like an SDK's:
15 request headers and the ~20 response headers Anthropic sends back. Each request runs the
hooks in mitmproxy's order and lets the event loop turn where mitmproxy's would (the session
task after ``request``, the deferred accounting after ``response``). Figures are p50 wall time
per hook, CPU per request of the event-loop thread, and of the proxy's helper threads (the store
feeder's serialisation and the acknowledgement reader; the store's writer process is not the
proxy's); the first fifth of the requests is warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from pathlib import Path

from mitmproxy import http
from mitmproxy.test import taddons, tflow

from bench.frames import json_response, large_request, message_body
from tokenpak_mitm.proxy.addon import TokenPak

REQUEST_HEADERS = [
    ("host", "api.anthropic.com"), ("accept", "application/json"), ("content-type", "application/json"),
    ("user-agent", "Anthropic/Python 0.75.0"), ("x-stainless-lang", "python"), ("x-stainless-package-version", "0.75.0"),
    ("x-stainless-os", "Linux"), ("x-stainless-arch", "x64"), ("x-stainless-runtime", "CPython"),
    ("x-stainless-runtime-version", "3.12.1"), ("anthropic-version", "2023-06-01"), ("x-api-key", "sk-ant-bench"),
    ("x-stainless-retry-count", "0"), ("x-stainless-read-timeout", "600"), ("accept-encoding", "gzip, deflate"),
]
RESPONSE_HEADERS = [
    ("date", "Mon, 30 Nov 2026 07:00:00 GMT"), ("content-type", "application/json"), ("connection", "keep-alive"),
    *((f"anthropic-ratelimit-{kind}-{what}", "1") for kind in ("input-tokens", "output-tokens", "requests", "tokens")
      for what in ("limit", "remaining", "reset")),
    ("request-id", "req_bench"), ("strict-transport-security", "max-age=31536000"), ("via", "1.1 google"),
    ("server", "cloudflare"), ("cf-ray", "abc-SJC"),
]
PHASES = ("requestheaders", "request", "session task", "responseheaders", "response", "deferred accounting")


def _flow(body: bytes) -> http.HTTPFlow:
    f = tflow.tflow(resp=False)
    f.request.host, f.request.port, f.request.scheme = "api.anthropic.com", 443, "https"
    f.request.method, f.request.path = "POST", "/v1/messages"
    f.request.headers = http.Headers([(k.encode(), v.encode()) for k, v in REQUEST_HEADERS])
    f.request.raw_content = body
    f.request.headers["content-length"] = str(len(body))
    return f


async def _run(body: bytes, n: int, db: Path) -> tuple[dict[str, float], float, float]:
    tp = TokenPak()
    phases: dict[str, list[int]] = {p: [] for p in PHASES}
    cpu: list[int] = []
    with taddons.context(tp) as tctx:
        tctx.configure(tp, tokenpak_db=str(db), tokenpak_console="false")
        tp.started.set()
        answer = json_response()
        skip = n // 5
        helpers0 = 0
        for i in range(n):
            if i == skip:
                helpers0 = _helper_cpu_ns()
            f = _flow(body)
            resp = http.Response.make(200, answer, [(k.encode(), v.encode()) for k, v in RESPONSE_HEADERS])
            c0 = time.thread_time_ns()
            t = [time.perf_counter_ns()]
            tp.requestheaders(f)
            t.append(time.perf_counter_ns())
            await tp.request(f)
            t.append(time.perf_counter_ns())
            await asyncio.sleep(0)  # the session task's first turn
            t.append(time.perf_counter_ns())
            f.response = resp
            resp.timestamp_start = resp.timestamp_end = time.time()
            t0 = time.perf_counter_ns()
            tp.responseheaders(f)
            t.append(time.perf_counter_ns())
            pending = tp.response(f)
            if pending is not None:
                await pending
            t.append(time.perf_counter_ns())
            await asyncio.sleep(0)  # the accounting mitmproxy's loop runs after sending the response
            t.append(time.perf_counter_ns())
            cpu.append(time.thread_time_ns() - c0)
            spans = [t[1] - t[0], t[2] - t[1], t[3] - t[2], t[4] - t0, t[5] - t[4], t[6] - t[5]]
            for name, ns in zip(PHASES, spans):
                phases[name].append(ns)
        while tp.store is not None and getattr(tp.store, "pending", 0):  # the feeder's share belongs to these requests
            await asyncio.sleep(0.01)
        proc = (_helper_cpu_ns() - helpers0) / (n - skip) / 1000
        tp.done()
    return ({p: statistics.median(v[skip:]) / 1000 for p, v in phases.items()}, statistics.median(cpu[skip:]) / 1000, proc)


def _helper_cpu_ns() -> int:
    """CPU time so far of the store's feeder and acknowledgement threads."""
    total = 0
    for t in threading.enumerate():
        if t.name.startswith("tokenpak-store") and t.ident is not None:
            try:
                total += time.clock_gettime_ns(time.pthread_getcpuclockid(t.ident))
            except (OSError, ProcessLookupError):
                pass
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hooks", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per body (200 KB: a tenth)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tokenpak-hooks-") as tmp:
        for label, body, n in (("small (127 B)", message_body(), args.requests),
                               ("200 KB", large_request(), max(20, args.requests // 10))):
            phases, cpu, proc = asyncio.run(_run(body, n, Path(tmp) / f"{len(body)}.db"))
            print(f"{label}: {n} requests, CPU per request: event-loop thread p50 {cpu:.0f} us, store threads {proc:.0f} us")
            for name, us in phases.items():
                print(f"  {name:<20} p50 {us:8.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
