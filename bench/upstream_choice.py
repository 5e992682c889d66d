"""Why the benchmark's upstream is its own process: ``python -m bench.upstream_choice``.

Measures the *direct* setup (client -> upstream, no proxy) two ways: against
``tokenpak_mitm.sim.upstream.FakeUpstream`` running in a thread of the client's process,
and against ``bench.upstream`` in a separate process. Whatever the in-thread upstream adds is
GIL contention with the client plus its per-write ``drain``, and would be charged to every
setup, blurring the proxy's share.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.table import Table

from bench.client import Conn, request_bytes
from bench.frames import json_response, message_body, stream_frames
from bench.procs import start_upstream
from bench.results_model import percentile
from tokenpak_mitm.sim.upstream import FakeUpstream, Received, Script, Step, sse_script

REQUESTS, FRAMES, STREAMS = 500, 1000, 5


def _in_thread_handler(req: Received) -> Script:
    if "mode=stream" in req.path:
        return sse_script(stream_frames(FRAMES))
    return Script(headers=[("content-type", "application/json")], steps=[Step(json_response())], chunked=False)


def _measure(port: int) -> dict[str, float]:
    conn = Conn(port)
    try:
        small = request_bytes("/v1/messages?mode=json", message_body())
        for _ in range(20):
            conn.post(small)
        cpu0 = time.process_time()
        lat = [conn.post(small)[0] for _ in range(REQUESTS)]
        stream = request_bytes(f"/v1/messages?mode=stream&frames={FRAMES}&interval_us=0", message_body(stream=True))
        fps = []
        for _ in range(STREAMS):
            r = conn.stream(stream, time.monotonic() + 30)
            fps.append(FRAMES / ((r.times[-1] - r.sent_ns) / 1e9))
        return {"latency p50 ms": percentile(lat, 50) / 1e6, "latency p99 ms": percentile(lat, 99) / 1e6,  # type: ignore[operator]
                "frames/s": percentile(fps, 50), "client-process CPU s": time.process_time() - cpu0}  # type: ignore[dict-item]
    finally:
        conn.close()


def main() -> int:
    with FakeUpstream(_in_thread_handler) as up:
        in_thread = _measure(up.port)
        time.sleep(0.2)  # let its connection task see our close before its loop stops
    child = start_upstream(max_seconds=120)
    try:
        separate = _measure(child.port)
    finally:
        child.stop()
    table = Table(title="direct setup: upstream in a thread of the client vs its own process")
    table.add_column("metric")
    table.add_column("FakeUpstream (thread)", justify="right")
    table.add_column("bench.upstream (process)", justify="right")
    for key in in_thread:
        table.add_row(key, f"{in_thread[key]:,.3f}", f"{separate[key]:,.3f}")
    Console(width=None if sys.stdout.isatty() else 120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
