"""The end-to-end workloads. Each runs the setups interleaved (A B C A B C ...).

Why interleaved: on a shared 2-core VM, background noise drifts over seconds; alternating the
setups request by request (or stream by stream) spreads that drift evenly over all of them, so
their ratios are fair even when absolute figures wobble. The setups are direct, plain and addon,
then any installed peer (``bench/peers``): a peer that cannot serve a workload sits it out
(:attr:`Setup.skips`), and one that fails during a workload drops out of that workload only
(:func:`guard`), with its figures blanked and the reason in the notes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.client import Conn, frame_delays, read_streams, request_bytes
from bench.config import Config
from bench.frames import large_request, message_body
from bench.procs import Child, RssSampler, TreeRssSampler, cpu_seconds, tree_cpu_seconds
from bench.profiling import Sampler, summarise
from bench.results_model import SETUPS, WorkloadResult, percentile, ratio
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess

__all__ = ["Setup", "WORKLOADS", "run_workload"]

MS = 1e6  # ns per ms


@dataclass
class Setup:
    name: str
    port: int
    proxy: MitmdumpProcess | Child | None = None
    prefix: str = ""  # path prefix of this setup's requests (LiteLLM's pass-through is /anthropic/...)
    peer: bool = False  # a proxy users would pick instead: its failures drop it out, never end the run
    skips: dict[str, str] = field(default_factory=dict)  # workload -> why this setup does not run it
    requests_sent: int = 0
    broken: str | None = None  # why this setup dropped out of the current workload
    _conns: list[Conn] = field(default_factory=list)

    def request(self, path: str, body: bytes) -> bytes:
        return request_bytes(self.prefix + path, body)

    def conns(self, n: int) -> list[Conn]:
        """``n`` keep-alive connections, reused across rounds (as SDK clients do)."""
        while len(self._conns) < n:
            self._conns.append(Conn(self.port))
        return self._conns[:n]

    def close(self) -> None:
        for c in self._conns:
            c.close()
        self._conns.clear()

    @property
    def reconnects(self) -> int:
        return sum(c.reconnects for c in self._conns)


def live(setups: list[Setup]) -> Iterator[Setup]:
    """The setups still in the current workload."""
    return (s for s in setups if s.broken is None)


@contextmanager
def guard(s: Setup) -> Iterator[None]:
    """A peer's error drops it out of the workload; our own setups' errors end the run as before."""
    try:
        yield
    except (OSError, ValueError) as e:  # ConnectionError and TimeoutError are OSErrors
        if not s.peer:
            raise
        s.broken = f"{type(e).__name__}: {e}"


def _header_number(head: bytes, name: bytes) -> float | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return float(value)
    return None


def _ms(ns: float | None) -> float | None:
    return None if ns is None else ns / MS


def nonstream(setups: list[Setup], cfg: Config, res: WorkloadResult) -> None:
    raw = {s.name: s.request("/v1/messages?mode=json", message_body()) for s in setups}
    lat: dict[str, list[int]] = {s.name: [] for s in setups}
    conns = {s.name: s.conns(1)[0] for s in setups}
    for _ in range(min(20, cfg.requests)):  # warm-up: connections, caches, lazy imports
        for s in live(setups):
            with guard(s):
                conns[s.name].post(raw[s.name])
    for _ in range(cfg.requests):
        for s in live(setups):
            with guard(s):
                ns, _, _ = conns[s.name].post(raw[s.name])
                lat[s.name].append(ns)
    for s in setups:
        s.requests_sent += cfg.requests + min(20, cfg.requests)
    p50 = res.add("latency p50", "ms", {k: _ms(percentile(v, 50)) for k, v in lat.items()})
    p50.judge("addon/plain <= 1.05", lambda v: (ratio(v["addon"], v["plain"]) <= 1.05, f"{ratio(v['addon'], v['plain']):.3f}"))
    res.add("latency p99", "ms", {k: _ms(percentile(v, 99)) for k, v in lat.items()})
    res.add("requests/s (1 client)", "req/s", {k: 1e9 / (sum(v) / len(v)) for k, v in lat.items()})


def _added_over_plain(limit_ms: float) -> Callable[[dict[str, float | None]], tuple[bool, str]]:
    def check(v: dict[str, float | None]) -> tuple[bool, str]:
        added = v["addon"] - v["plain"]  # type: ignore[operator]
        return added <= limit_ms, f"addon-plain {added:+.3f} ms"
    return check


def _added_over_direct(samples: dict[str, list[int]], q: float = 50) -> dict[str, float | None]:
    """What each setup adds to the direct figure at percentile ``q``, in ms."""
    base = percentile(samples["direct"], q)
    return {k: None if base is None or not v else _ms(percentile(v, q) - base) for k, v in samples.items()}  # type: ignore[operator]


def _stream_request(setups: list[Setup], query: str) -> dict[str, bytes]:
    return {s.name: s.request(f"/v1/messages?{query}", message_body(stream=True)) for s in setups}


def stream(setups: list[Setup], cfg: Config, res: WorkloadResult) -> None:
    deadline = lambda: time.monotonic() + cfg.deadline_s  # noqa: E731
    paced = _stream_request(setups, f"mode=stream&frames={cfg.stream_frames}&interval_us={cfg.stream_interval_us}")
    burst = _stream_request(setups, f"mode=stream&frames={cfg.stream_frames}&interval_us=0")
    short = _stream_request(setups, "mode=stream&frames=10&interval_us=0")
    ttfb: dict[str, list[int]] = {s.name: [] for s in setups}
    delays: dict[str, list[int]] = {s.name: [] for s in setups}
    fps: dict[str, list[float]] = {s.name: [] for s in setups}
    missing = 0
    for s in live(setups):  # warm-up
        with guard(s):
            s.conns(1)[0].stream(short[s.name], deadline())
    for _ in range(cfg.ttfb_streams):
        for s in live(setups):
            with guard(s):
                first, _ = frame_delays(s.conns(1)[0].stream(short[s.name], deadline()))
                ttfb[s.name].append(first)  # type: ignore[arg-type]
    for _ in range(cfg.rounds):
        for s in live(setups):
            with guard(s):
                _, d = frame_delays(s.conns(1)[0].stream(paced[s.name], deadline()))
                missing += cfg.stream_frames - 6 - len(d)
                delays[s.name] += d
                r = s.conns(1)[0].stream(burst[s.name], deadline())
                fps[s.name].append(cfg.stream_frames / ((r.times[-1] - r.sent_ns) / 1e9))
    for s in setups:
        s.requests_sent += 1 + cfg.ttfb_streams + 2 * cfg.rounds
    res.add("time to first byte p50", "ms", {k: _ms(percentile(v, 50)) for k, v in ttfb.items()}).judge(
        "addon-plain <= 0.5 ms", _added_over_plain(0.5))
    res.add("time to first byte p99", "ms", {k: _ms(percentile(v, 99)) for k, v in ttfb.items()})
    res.add("added time to first byte p50 (vs direct)", "ms", _added_over_direct(ttfb))
    res.add("per-frame delay p50", "ms", {k: _ms(percentile(v, 50)) for k, v in delays.items()}).judge(
        "addon-plain <= 0.1 ms", _added_over_plain(0.1))
    res.add("per-frame delay p99", "ms", {k: _ms(percentile(v, 99)) for k, v in delays.items()})
    res.add("added per-frame delay p50 (vs direct)", "ms", _added_over_direct(delays))
    res.add("frames/s (unpaced)", "frames/s", {k: percentile(v, 50) for k, v in fps.items()})
    if missing:
        res.notes.append(f"{missing} stamped frames not found in paced streams (split by chunk framing)")
    res.notes.append(f"paced: {cfg.stream_frames} frames at {cfg.stream_interval_us} us; "
                     f"TTFB from {cfg.ttfb_streams} short streams per setup; frames/s from unpaced streams")


def concurrent(setups: list[Setup], cfg: Config, res: WorkloadResult) -> None:
    n = cfg.concurrent_streams
    raw = _stream_request(setups, f"mode=stream&frames={cfg.concurrent_frames}&interval_us={cfg.concurrent_interval_us}")
    delays: dict[str, list[int]] = {s.name: [] for s in setups}
    wall: dict[str, float] = dict.fromkeys((s.name for s in setups), 0.0)
    incomplete = 0
    for _ in range(cfg.rounds):
        for s in live(setups):
            t = time.monotonic()
            with guard(s):
                reads = read_streams(s.conns(n), raw[s.name], time.monotonic() + cfg.deadline_s)
                for r in reads:
                    incomplete += not r.done or not r.pieces  # cut off, or closed with no answer at all
                    delays[s.name] += frame_delays(r)[1]
            wall[s.name] += time.monotonic() - t
            s.requests_sent += n
    res.add("per-frame delay p50", "ms", {k: _ms(percentile(v, 50)) for k, v in delays.items()}).judge(
        "addon-plain <= 0.1 ms", _added_over_plain(0.1))
    res.add("per-frame delay p99", "ms", {k: _ms(percentile(v, 99)) for k, v in delays.items()}).judge(
        "addon p99 <= plain p99", lambda v: (v["addon"] <= v["plain"], f"addon/plain {ratio(v['addon'], v['plain']):.2f}"))  # type: ignore[operator]
    res.add("per-frame delay max", "ms", {k: _ms(max(v)) if v else None for k, v in delays.items()})
    res.add("added per-frame delay p50 (vs direct)", "ms", _added_over_direct(delays))
    res.add("added per-frame delay p99 (vs direct)", "ms", _added_over_direct(delays, 99))
    res.notes.append(f"{n} streams x {cfg.concurrent_frames} frames at {cfg.concurrent_interval_us} us "
                     f"({n * 1e6 / cfg.concurrent_interval_us:.0f} frames/s total), {cfg.rounds} rounds")
    # Per-frame delays count from the upstream's send: a proxy slow to start the upstream
    # requests, or one that falls behind, shows here (the streams' own length is the floor).
    res.add("time for a round (all streams ended)", "s", {k: v / cfg.rounds if delays[k] else None for k, v in wall.items()})
    if incomplete:
        res.notes.append(f"{incomplete} streams did not complete before the deadline or got no answer")


def large(setups: list[Setup], cfg: Config, res: WorkloadResult) -> None:
    body = large_request(cfg.large_bytes)
    raw = {s.name: s.request("/v1/messages?mode=json", body) for s in setups}
    lat: dict[str, list[int]] = {s.name: [] for s in setups}
    markers: dict[str, float | None] = {}
    conns = {s.name: s.conns(1)[0] for s in setups}
    for s in live(setups):
        with guard(s):
            conns[s.name].post(raw[s.name])  # warm-up
    for _ in range(cfg.large_reps):
        for s in live(setups):
            with guard(s):
                ns, head, _ = conns[s.name].post(raw[s.name])
                lat[s.name].append(ns)
                markers[s.name] = _header_number(head, b"x-bench-markers")
    for s in setups:
        s.requests_sent += cfg.large_reps + 1
    res.add("latency p50", "ms", {k: _ms(percentile(v, 50)) for k, v in lat.items()})
    res.add("latency p99", "ms", {k: _ms(percentile(v, 99)) for k, v in lat.items()})
    res.add("added request-side latency p50", "ms", _added_over_direct(lat))
    res.add("cache_control markers upstream saw", "count", markers).judge(
        "addon inserts markers", lambda v: ((v["addon"] or 0) > 0, f"{v['addon']:.0f} markers"))
    res.notes.append(f"request body {len(body)} bytes, no client markers, {cfg.large_reps} reps per setup")


def bulk(setups: list[Setup], cfg: Config, res: WorkloadResult) -> None:
    raw = _stream_request(setups, f"mode=bulk&total={cfg.bulk_bytes}&frame={cfg.bulk_frame_bytes}")
    rate: dict[str, float | None] = {}
    base: dict[str, float | None] = {"direct": None}
    peak: dict[str, float | None] = {"direct": None}
    growth: dict[str, float | None] = {"direct": None}
    for s in live(setups):
        conn = s.conns(1)[0]
        with guard(s):
            if s.proxy is None:
                sent, end, total = conn.drain_bulk(raw[s.name], time.monotonic() + cfg.deadline_s * 3)
            else:
                with RssSampler(s.proxy.pid, period=0.01) as rss:
                    sent, end, total = conn.drain_bulk(raw[s.name], time.monotonic() + cfg.deadline_s * 3)
                base[s.name], peak[s.name] = rss.baseline_kb / 1024, rss.peak_kb / 1024
                growth[s.name] = (rss.peak_kb - rss.baseline_kb) / 1024
            rate[s.name] = total / ((end - sent) / 1e9) / 1e6
        s.requests_sent += 1
    res.add("throughput", "MB/s", rate)
    res.add("proxy RSS before", "MB", base)
    res.add("proxy RSS peak", "MB", peak)
    res.add("proxy RSS growth", "MB", growth).judge("addon growth < 10 MB", lambda v: (v["addon"] < 10, f"{v['addon']:.1f} MB"))  # type: ignore[operator]
    res.notes.append(f"{cfg.bulk_bytes / 2**20:.0f} MiB of {cfg.bulk_frame_bytes // 1024} KiB text deltas, RSS sampled every 10 ms")


WORKLOADS: dict[str, tuple[str, Callable[[list[Setup], Config, WorkloadResult], None]]] = {
    "nonstream": ("sequential small non-streamed requests", nonstream),
    "stream": ("single streamed responses (1,000 frames)", stream),
    "concurrent": ("concurrent streams", concurrent),
    "large": ("200 KB request with marker insertion", large),
    "bulk": ("1 GB stream (memory)", bulk),
}


def run_workload(name: str, setups: list[Setup], upstream: Child, cfg: Config, profile_dir: Path | None = None) -> WorkloadResult:
    """Run one workload; add the proxies' CPU seconds and peak RSS over it, and the others' CPU.

    With ``profile_dir``, py-spy samples each proxy during the workload (this perturbs timings:
    use the figures of a run without it)."""
    desc, fn = WORKLOADS[name]
    res = WorkloadResult(name, desc)
    assert [s.name for s in setups[:3]] == list(SETUPS)
    for s in setups:
        if name in s.skips:
            res.notes.append(f"{s.name}: skipped ({s.skips[name]})")
    setups = [s for s in setups if name not in s.skips]
    for s in setups:
        s.broken = None
        if s.peer:
            s.close()  # fresh connections: a peer that failed in the last workload starts clean
    proxies = [s for s in setups if s.proxy is not None]
    pids = {s.name: s.proxy.pid for s in proxies}  # type: ignore[union-attr]
    cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
    tree0 = {k: tree_cpu_seconds(pid) for k, pid in pids.items()}
    up0, me0, t0 = cpu_seconds(upstream.pid), time.process_time(), time.monotonic()
    samplers = [RssSampler(pid, period=0.05) for pid in pids.values()]
    trees = [TreeRssSampler(pid, period=0.05) for pid in pids.values()]
    for r in samplers + trees:
        r.__enter__()
    spies = {k: Sampler(pid, profile_dir / f"{name}-{k}.txt") for k, pid in pids.items()} if profile_dir else {}
    try:
        fn(setups, cfg, res)
    finally:
        for r in samplers + trees:
            r.__exit__()
        for setup_name, spy in spies.items():
            out = spy.stop()
            if out is not None:
                res.profiles[setup_name] = summarise(out)
    res.seconds = time.monotonic() - t0
    res.add("proxy CPU", "s", {"direct": None, **{k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}})
    res.add("proxy peak RSS", "MB", {"direct": None, **{k: r.peak_kb / 1024 for k, r in zip(pids, samplers, strict=True)}})
    # The process and its children (the addon's store writer and planner workers): what the
    # machine spends, comparable with a peer that does the same work in one process.
    res.add("proxy CPU, with child processes", "s", {"direct": None, **{k: tree_cpu_seconds(pid) - tree0[k] for k, pid in pids.items()}})
    res.add("proxy peak RSS, with child processes", "MB", {"direct": None, **{k: r.peak_kb / 1024 for k, r in zip(pids, trees, strict=True)}})
    for s in setups:
        if s.broken is not None:  # partial figures of a setup that dropped out would mislead
            for m in res.metrics:
                if s.name in m.values:
                    m.values[s.name] = None
            res.notes.append(f"{s.name}: dropped out ({s.broken})")
        elif s.reconnects:
            res.notes.append(f"{s.name}: {s.reconnects} reconnects (the server closed the connection after a response), "
                             "each inside the timed request or before the stream's send time")
    res.notes.append(f"upstream CPU {cpu_seconds(upstream.pid) - up0:.2f} s, client CPU {time.process_time() - me0:.2f} s, "
                     f"wall {res.seconds:.1f} s")
    return res
