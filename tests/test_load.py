"""Load through a real mitmdump: 2,000 requests, 200 at a time, mixed dialects, random hang-ups.

Checks the accounting promise under concurrency (exactly one correct row per request: tokens
equal an offline parse of exactly the frames delivered; hang-ups marked) and that the proxy
keeps no flow alive and returns to its memory baseline afterwards.

CI size is fixed below. A longer soak runs outside CI with, e.g.:
``TOKENPAK_LOAD_REQUESTS=50000 TOKENPAK_LOAD_CONCURRENCY=400 .venv/bin/python -m pytest tests/test_load.py -q``
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Stack, fixture_bytes, make_stack

from tokenpak_mitm.core.observe.sse import SSEParser
from tokenpak_mitm.core.routes import Route, tracker_for
from tokenpak_mitm.sim.client import build_request, request
from tokenpak_mitm.sim.upstream import Script, Step

pytestmark = pytest.mark.e2e

TOTAL = int(os.environ.get("TOKENPAK_LOAD_REQUESTS", "2000"))
CONCURRENCY = int(os.environ.get("TOKENPAK_LOAD_CONCURRENCY", "200"))
HANG_UP_SHARE = 0.1
FRAME_GAP = 0.02  # seconds between frames: streams overlap, so ~CONCURRENCY are open at once
PROBE_ADDON = Path(__file__).with_name("probe_addon.py")
BUCKETS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")


def split_frames(data: bytes) -> list[bytes]:
    p = SSEParser()
    out = p.feed(data)
    tail, rest = p.close()
    return out + tail + ([rest] if rest else [])


@dataclass(frozen=True)
class Dialect:
    name: str
    path: str
    frames: list[bytes]
    body: bytes

    def expected(self, n: int) -> dict:
        """Buckets an offline tracker reports for the first ``n`` frames: what the row must say."""
        t = tracker_for(Route("x", "x", self.name))
        assert t is not None
        for f in self.frames[:n]:
            t.feed_frame(f)
        return {k: getattr(t.extract.usage, k) for k in BUCKETS}


def _anthropic_frames() -> list[bytes]:
    from test_faults_e2e import FRAMES

    return FRAMES


DIALECTS = [
    Dialect("anthropic", "/v1/messages", _anthropic_frames(), b'{"model":"claude-sonnet-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}'),
    Dialect("openai_chat", "/v1/chat/completions", split_frames(fixture_bytes("openai_chat_include_usage.sse")), b'{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}'),
    Dialect("openai_responses", "/v1/responses", split_frames(fixture_bytes("openai_responses_basic_text.sse")), b'{"model":"gpt-4o","stream":true,"input":"hi"}'),
    Dialect("gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", split_frames(fixture_bytes("gemini_crlf_thoughts.sse")), b'{"contents":[{"parts":[{"text":"hi"}]}]}'),
]


@dataclass
class Outcome:
    key: str
    dialect: Dialect
    hang_up_after: int | None  # frames the client took before hanging up; None = read to the end
    ok: bool = False
    error: str | None = None


def probe(stack: Stack) -> dict:
    resp = request(stack.proxy.port, build_request("GET", "/__tokenpak_probe", b""))
    assert resp.status == 200, resp
    return json.loads(resp.body)


def one_request(stack: Stack, out: Outcome) -> None:
    d, k = out.dialect, out.hang_up_after
    steps = [Step(f, delay=FRAME_GAP if i else 0.0) for i, f in enumerate(d.frames)]
    if k is not None:
        steps[k] = Step(d.frames[k], delay=5.0)  # long after the hang-up: the proxy must see it first
    stack.scripts[out.key] = Script(headers=[("content-type", "text/event-stream")], steps=steps)
    want = b"".join(d.frames if k is None else d.frames[:k])
    raw = build_request("POST", d.path, d.body, [("content-type", "application/json"), ("x-test-id", out.key)])
    try:
        resp = request(stack.proxy.port, raw, on_piece=(lambda p, r: len(r.body) >= len(want)) if k is not None else None, timeout=60)
        out.ok = resp.status == 200 and resp.body == want and (resp.complete if k is None else resp.disconnected_early)
        if not out.ok:
            out.error = f"status={resp.status} complete={resp.complete} bytes={len(resp.body)}/{len(want)}"
    except OSError as e:
        out.error = repr(e)


def run_load(stack: Stack, total: int, concurrency: int, seed: int) -> list[Outcome]:
    rng = random.Random(seed)
    plan: list[Outcome] = []
    for _ in range(total):
        d = rng.choice(DIALECTS)
        k = rng.randrange(1, len(d.frames)) if rng.random() < HANG_UP_SHARE else None
        plan.append(Outcome(f"req_{uuid.uuid4().hex[:16]}", d, k))
    lock = threading.Lock()
    queue_iter = iter(plan)

    def worker() -> None:
        while True:
            with lock:
                item = next(queue_iter, None)
            if item is None:
                return
            one_request(stack, item)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return plan


def rows_by_key(db: Path) -> dict[str, list[dict]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    out: dict[str, list[dict]] = {}
    for r in con.execute("SELECT * FROM requests"):
        out.setdefault(r["upstream_request_id"], []).append(dict(r))
    con.close()
    return out


def wait_count(db: Path, n: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        try:
            con = sqlite3.connect(db)
            got = con.execute("SELECT count(*) FROM requests").fetchone()[0]
            con.close()
        except sqlite3.Error:
            pass
        if got >= n:
            break
        time.sleep(0.2)
    return got


@pytest.fixture(scope="module")
def lstack(tmp_path_factory: pytest.TempPathFactory):
    s = make_stack(tmp_path_factory.mktemp("load"), options=["tokenpak_console=false", "flow_detail=0"], extra_args=["-s", str(PROBE_ADDON)])
    yield s
    s.close()


def test_two_thousand_mixed_streams_give_two_thousand_correct_rows(lstack: Stack):
    warm = run_load(lstack, 200, 50, seed=1)  # warm-up: imports, caches, connection pools
    assert all(o.ok for o in warm), [o.error for o in warm if not o.ok][:5]
    assert wait_count(lstack.db, len(warm)) == len(warm)
    base = probe(lstack)

    started = time.monotonic()
    plan = run_load(lstack, TOTAL, CONCURRENCY, seed=2)
    elapsed = time.monotonic() - started
    failed = [o for o in plan if not o.ok]
    assert not failed, [(o.dialect.name, o.hang_up_after, o.error) for o in failed[:5]]

    assert wait_count(lstack.db, len(warm) + TOTAL) == len(warm) + TOTAL
    rows = rows_by_key(lstack.db)
    lost = [o.key for o in plan if o.key not in rows]
    doubled = [k for k, v in rows.items() if len(v) > 1]
    assert not lost and not doubled, f"lost {len(lost)} doubled {len(doubled)}"
    wrong = []
    for o in plan:
        row = rows[o.key][0]
        n = len(o.dialect.frames) if o.hang_up_after is None else o.hang_up_after
        want_state = "completed" if o.hang_up_after is None else "client_disconnected"
        got = {b: row[b] for b in BUCKETS}
        if row["terminal_state"] != want_state or got != o.dialect.expected(n) or row["frames"] != n:
            wrong.append((o.dialect.name, o.hang_up_after, row["terminal_state"], row["frames"], got, o.dialect.expected(n)))
    assert not wrong, wrong[:5]

    after = probe(lstack)
    hang_ups = sum(o.hang_up_after is not None for o in plan)
    print(f"\nload: {TOTAL} requests ({hang_ups} hang-ups) at {CONCURRENCY} concurrent in {elapsed:.1f} s "
          f"({TOTAL / elapsed:.0f} req/s); rss {base['rss_kb'] / 1024:.1f} -> {after['rss_kb'] / 1024:.1f} MiB; "
          f"flows tracked {after['flows_tracked']}, live HTTPFlow {after['live_http_flows']}")
    assert after["flows_tracked"] == 0  # the WeakKeyDictionary emptied: no flow kept alive
    assert after["live_http_flows"] <= 5
    assert after["store_pending"] == 0 and after["store_dropped"] == 0
    assert after["rows_emitted"] == base["rows_emitted"] + TOTAL
    # Memory back near its baseline: CPython keeps some freed arenas, so allow a bounded margin.
    assert after["rss_kb"] - base["rss_kb"] < 64 * 1024, (base, after)
