"""``python -m bench.stall``: what one hostile request costs everyone else (issue 15's figures).

For each case a paced stream (frames every 5 ms) runs through the proxy while one hostile request
goes through beside it; the table gives the largest gap between two frames of the paced stream
(its pacing subtracted: the stall every other stream saw) and how much the proxy's peak memory
(VmHWM) grew. Run against mitmdump with the addon and against plain mitmdump, same upstream.

    .venv/bin/python -m bench.stall                 # all cases, about a minute
    .venv/bin/python -m bench.stall --case json_bomb --rounds 5

Cases: ``baseline``, an ordinary small request (the jitter every figure should be read against);
a 16 KB zstd JSON body that expands to 512 MiB; the same bomb as an SSE stream of valid
frames; a 1 MB request body of 26k small messages (planning cost by block count, not bytes);
the same for OpenAI, a 1 MB GPT-5.6 Chat Completions body of 26k small messages; a 50 MB JSON
request and a 1 MiB body of 32,000 tiny messages (issue 27: both over the planning bounds, so
forwarded untouched; "own" is that request's own time through the proxy, to compare with plain).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench.procs import PASSTHROUGH_SCRIPT
from tokenpak_mitm.core.observe.decoders import zstd
from tokenpak_mitm.sim.client import Response, build_request, request
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.upstream import (
    FakeUpstream,
    Received,
    Script,
    Step,
    sse_script,
)

PACE = 0.005
FRAMES = 400
_FRAME = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n'


def _bomb(unit: bytes, size: int = 512 * 1024 * 1024) -> bytes:
    comp = zstd.ZstdCompressor(level=1)
    block = unit * (1024 * 1024 // len(unit))
    return b"".join(comp.compress(block) for _ in range(size // len(block))) + comp.flush()


def _cases() -> dict[str, tuple[Script, bytes]]:
    small = b'{"model":"claude-sonnet-4-6","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(26000)]
    many = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "system": "s" * 8000, "messages": msgs}).encode()
    openai_msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(26000)]
    many_openai = json.dumps({"model": "gpt-5.6", "max_completion_tokens": 8, "messages": [{"role": "system", "content": "s" * 8000}, *openai_msgs]}).encode()
    ok = Script(headers=[("content-type", "application/json")], steps=[Step(b'{"type":"message","usage":{"input_tokens":1,"output_tokens":1}}')], chunked=False)
    tiny = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(32000)]}).encode()
    big = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 1000} for i in range(50000)]}).encode()
    return {
        "big_request": (ok, big),  # a 50 MB JSON request (over the planning bound: forwarded untouched)
        "tiny_messages": (ok, tiny),  # 1 MiB of 32,000 tiny messages (over the object bound)
        "baseline": (ok, small),  # an ordinary request beside the stream: the jitter to compare with
        "json_bomb": (Script(headers=[("content-type", "application/json"), ("content-encoding", "zstd")], steps=[Step(_bomb(b" "))], chunked=False), small),
        "sse_bomb": (Script(headers=[("content-type", "text/event-stream"), ("content-encoding", "zstd")], steps=[Step(_bomb(b'event: ping\ndata: {"type": "ping"}\n\n'))]), small),
        "many_blocks": (ok, many),
        "many_blocks_openai": (ok, many_openai),
    }


_PATHS = {"many_blocks_openai": "/v1/chat/completions"}  # the hostile request's path (default /v1/messages)


def _peak_kib(pid: int) -> int:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


def _max_gap(resp: Response) -> float:
    times = [t for t, _ in resp.pieces]
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def run_case(name: str, addon: bool, rounds: int, options: list[str] | None = None) -> dict[str, float]:
    scripts: dict[str, Script] = {}

    def handle(req: Received) -> Script:
        return scripts.pop(req.header("x-test-id") or "", Script(status=404, steps=[], chunked=False))

    hostile, body = _cases()[name]
    up = FakeUpstream(handle).start()
    with tempfile.TemporaryDirectory() as tmp:
        # Plain mitmdump streams SSE through mitmproxy's own pass-through script: without it the
        # paced stream would be buffered whole and show no gaps at all.
        proxy = MitmdumpProcess(f"reverse:{up.url}", db=Path(tmp) / "t.db", confdir=tmp, addon=addon, options=(options or []) if addon else [],
                                extra_args=[] if addon else ["-s", str(PASSTHROUGH_SCRIPT)]).start()
        assert proxy.proc is not None
        gaps, grown, own = [], [], []
        try:
            def call(script: Script, payload: bytes, sink: list[Response], path: str = "/v1/messages") -> float:
                key = uuid.uuid4().hex
                scripts[key] = script
                raw = build_request("POST", path, payload, [("content-type", "application/json"), ("x-test-id", key)])
                t0 = time.perf_counter()
                sink.append(request(proxy.port, raw, timeout=120))
                return time.perf_counter() - t0

            warm: list[Response] = []
            call(sse_script([_FRAME] * 20), body if name.startswith("many_blocks") else b"{}", warm, _PATHS.get(name, "/v1/messages"))
            for _ in range(rounds):
                base = _peak_kib(proxy.proc.pid)
                paced: list[Response] = []
                t = threading.Thread(target=call, args=(sse_script([_FRAME] * FRAMES, delay=PACE), b'{"model":"claude-sonnet-4-6","stream":true,"messages":[]}', paced))
                t.start()
                time.sleep(0.3)
                own.append(call(hostile, body, [], _PATHS.get(name, "/v1/messages")) * 1000)
                t.join(120)
                gaps.append(max(0.0, _max_gap(paced[0]) - PACE) * 1000)
                grown.append((_peak_kib(proxy.proc.pid) - base) / 1024)
        finally:
            proxy.stop()
            up.stop()
    return {"stall_ms_max": max(gaps), "stall_ms_median": sorted(gaps)[len(gaps) // 2], "peak_mib_grown_max": max(grown),
            "own_ms_median": sorted(own)[len(own) // 2]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", choices=sorted(_CASE_NAMES), help="repeatable; default: all")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="extra --set for the addon proxy (e.g. tokenpak_cache_history=false)")
    args = ap.parse_args(argv)
    rows: list[tuple[str, str, dict[str, float]]] = []
    for name in args.case or sorted(_CASE_NAMES):
        for label, addon in (("addon", True), ("plain", False)):
            rows.append((name, label, run_case(name, addon, args.rounds, args.set)))
    print(f"{'case':<18} {'proxy':<6} {'stall max ms':>13} {'stall median ms':>16} {'peak +MiB':>10} {'own median ms':>14}")
    for name, label, r in rows:
        print(f"{name:<18} {label:<6} {r['stall_ms_max']:>13.1f} {r['stall_ms_median']:>16.1f} {r['peak_mib_grown_max']:>10.1f} {r['own_ms_median']:>14.1f}")
    return 0


_CASE_NAMES = ("baseline", "json_bomb", "sse_bomb", "many_blocks", "many_blocks_openai", "big_request", "tiny_messages")

if __name__ == "__main__":
    raise SystemExit(main())
