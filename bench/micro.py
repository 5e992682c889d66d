"""Microbenchmarks of the hot paths, in-process: ``python -m bench.micro``.

Why: the end-to-end figures mix mitmproxy, the kernel and three processes; these isolate the
code we own, per chunk and per frame, so a regression shows up as a number that moves.
Targets (parser alone, content-delta stream): >= 200 MB/s and >= 1,000,000 frames/s.
Uses ``timeit`` (best of N repeats), no extra dependency; writes ``bench/results/micro.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.frames import big_delta, large_request, stream_frames
from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
from tokenpak_mitm.core.observe.sse import SSEParser
from tokenpak_mitm.core.observe.tap import StreamTap

RESULTS = Path(__file__).with_name("results")
TARGET_MBS, TARGET_FPS = 200.0, 1_000_000.0


def chunked(body: bytes, frames: list[bytes], size: int) -> list[bytes]:
    """size 0 = one frame per chunk (what mitmproxy hands the callable for a chunk-per-event
    upstream); otherwise fixed-size pieces that cut frames anywhere (TCP reads, HTTP/2 DATA)."""
    if size == 0:
        return frames
    return [body[i:i + size] for i in range(0, len(body), size)]


def parser_only(chunks: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        p = SSEParser()
        feed = p.feed
        for c in chunks:
            feed(c)
        p.close()
        return p.frames
    return run


def parser_and_tracker(chunks: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        p, t = SSEParser(), AnthropicTracker()
        feed, frame = p.feed, t.feed_frame
        for c in chunks:
            for raw in feed(c):
                frame(raw)
        for raw in p.close()[0]:
            frame(raw)
        assert t.extract.usage_final and t.extract.terminal_seen
        return p.frames
    return run


def stream_tap(chunks: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        tap = StreamTap(AnthropicTracker(), sse=True)
        for c in chunks:
            tap(c)
        tap(b"")
        assert tap.tracker.extract.usage_final and not tap.failed
        return tap.parser.frames  # type: ignore[union-attr]
    return run


def best_seconds(fn: Callable[[], object], budget: float) -> float:
    """Best time of one call, from enough repeats to fill about ``budget`` seconds."""
    once = timeit.timeit(fn, number=1)
    repeat = max(3, min(50, int(budget / max(once, 1e-6))))
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def run_stream_benches(n_frames: int, budget: float) -> list[dict[str, object]]:
    frames = stream_frames(n_frames)
    body = b"".join(frames)
    rows = []
    for label, make in (("SSE parser alone", parser_only), ("parser + Anthropic tracker", parser_and_tracker),
                        ("StreamTap.__call__ (end to end)", stream_tap)):
        for size in (0, 1024, 16384, 65536):
            chunks = chunked(body, frames, size)
            fn = make(chunks)
            assert fn() == len(frames)
            s = best_seconds(fn, budget)
            rows.append({"bench": label, "chunks": "1 frame/chunk" if size == 0 else f"{size // 1024} KiB",
                         "MB/s": len(body) / s / 1e6, "frames/s": len(frames) / s, "ns/frame": s / len(frames) * 1e9,
                         "bytes": len(body), "frames": len(frames), "mean_frame_bytes": len(body) / len(frames)})
    return rows


def run_big_frame_bench(budget: float) -> dict[str, object]:
    """The 1 GB workload's shape: 256 KiB text deltas arriving in 64 KiB pieces (pending-buffer path)."""
    body = big_delta(256 * 1024) * 32
    chunks = chunked(body, [], 65536)
    fn = parser_only(chunks)
    s = best_seconds(fn, budget)
    return {"bench": "SSE parser alone, 256 KiB frames", "chunks": "64 KiB", "MB/s": len(body) / s / 1e6,
            "frames/s": 32 / s, "ns/frame": s / 32 * 1e9, "bytes": len(body), "frames": 32, "mean_frame_bytes": len(body) / 32}


def run_insert_bench(budget: float) -> dict[str, object]:
    try:
        from tokenpak_mitm.core.plan.cache_insert import CacheOptions, insert_markers
    except ImportError as e:
        return {"bench": "insert_markers (200 KB)", "skipped": f"cache_insert not available: {e}"}
    body = large_request()
    opts = CacheOptions(mode="auto")
    result = insert_markers(body, None, opts)
    s = best_seconds(lambda: insert_markers(body, None, opts), budget)
    return {"bench": "insert_markers (200 KB)", "ms/call": s * 1e3, "MB/s": len(body) / s / 1e6, "bytes": len(body),
            "markers": result.markers_inserted, "decision": result.decision}


def run_learning_insert_bench(budget: float) -> dict[str, object]:
    """The proxy's request-side work on the 200 KB request as the addon runs it: the learning
    planner (one memory, a turn every 30 s; with an empty memory), and the session tracker's
    `parse_shape` of the body sent upstream (in the worker process above 32 KB)."""
    from tokenpak_mitm.core.account.request_shape import parse_shape
    from tokenpak_mitm.core.plan.cache_insert import CacheOptions, insert_markers
    from tokenpak_mitm.core.plan.learning_planner import Memory

    body = large_request()
    opts = CacheOptions(mode="auto", ttl="auto")
    memory = Memory()
    clock = iter(range(10**9))

    def plan() -> object:
        return insert_markers(body, None, opts, memory, 1000.0 + 30.0 * next(clock))

    fresh = insert_markers(body, None, opts, Memory(), 0.0)
    assert fresh.decision == "inserted"
    plan_s = best_seconds(plan, budget)
    fresh_s = best_seconds(lambda: insert_markers(body, None, opts, Memory(), 0.0), budget)
    parse_shape_s = best_seconds(lambda: parse_shape(fresh.body, "anthropic", True), budget)
    return {"bench": "learning planner + session shape (200 KB)", "bytes": len(body), "plan_ms": plan_s * 1e3,
            "plan_new_memory_ms": fresh_s * 1e3, "parse_shape_ms": parse_shape_s * 1e3, "markers": fresh.markers_inserted}


QUESTION = "What changed since the last report?"


def large_openai_request(api: str, target_bytes: int = 200 * 1024) -> bytes:
    """``bench.frames.large_request`` as a GPT-5.6 request of the other dialects: Chat Completions
    (the 40 KB system prompt as a system message, function tools, user turns as text parts,
    assistant turns as strings, a tool call and its result every fourth turn) or Responses
    (``instructions``, function tools, ``input_text`` / ``output_text`` message items, a
    ``function_call`` and its ``function_call_output`` every fourth turn); the last item is a user
    question, ``QUESTION``."""
    source = json.loads(large_request(target_bytes))
    system = source["system"][0]["text"]
    body: dict[str, object]
    if api == "openai_chat":
        messages: list[dict[str, object]] = [{"role": "system", "content": system}]
        for i, m in enumerate(source["messages"]):
            text = m["content"][0]["text"] if isinstance(m["content"], list) else m["content"]
            if m["role"] == "user":
                messages.append({"role": "user", "content": [{"type": "text", "text": text}]})
            elif i % 4 == 1:
                call = {"id": f"call_{i}", "type": "function", "function": {"name": "tool_0", "arguments": '{"path":"a.txt"}'}}
                messages += [{"role": "assistant", "content": None, "tool_calls": [call]},
                             {"role": "tool", "tool_call_id": f"call_{i}", "content": text}]
            else:
                messages.append({"role": "assistant", "content": text})
        messages.append({"role": "user", "content": QUESTION})
        tools = [{"type": "function", "function": {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]}}
                 for t in source["tools"]]
        body = {"model": "gpt-5.6", "max_completion_tokens": 1024, "tools": tools, "messages": messages}
    else:
        items: list[dict[str, object]] = []
        for i, m in enumerate(source["messages"]):
            text = m["content"][0]["text"] if isinstance(m["content"], list) else m["content"]
            if m["role"] == "user":
                items.append({"role": "user", "content": [{"type": "input_text", "text": text}]})
            elif i % 4 == 1:
                items += [{"type": "function_call", "call_id": f"call_{i}", "name": "tool_0", "arguments": '{"path":"a.txt"}'},
                          {"type": "function_call_output", "call_id": f"call_{i}", "output": text}]
            else:
                items.append({"role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]})
        items.append({"role": "user", "content": [{"type": "input_text", "text": QUESTION}]})
        tools = [{"type": "function", "name": t["name"], "description": t["description"], "parameters": t["input_schema"]}
                 for t in source["tools"]]
        body = {"model": "gpt-5.6", "max_output_tokens": 1024, "instructions": system, "tools": tools, "input": items}
    return json.dumps(body, separators=(",", ":")).encode()


def p50_seconds(fn: Callable[[], object], budget: float, setup: Callable[[], object] = lambda: None) -> float:
    """Median time of one call (``setup`` run untimed before each), from enough repeats to fill about ``budget`` seconds."""
    setup()
    once = timeit.timeit(fn, number=1)
    repeat = max(5, min(200, int(budget / max(once, 1e-6))))
    return statistics.median(timeit.repeat(fn, setup, number=1, repeat=repeat))


def run_openai_insert_bench(budget: float) -> list[dict[str, object]]:
    """``insert_openai_breakpoint`` on a 200 KB GPT-5.6 Chat Completions and Responses body, as the
    addon runs it: the learning planner with one memory and a turn every 30 s (the same body, each
    response begun: its history says the prefix is shared and cached), and with an empty memory
    each time (no history). Both splice a breakpoint."""
    from tokenpak_mitm.core.plan.learning_planner import Memory
    from tokenpak_mitm.core.plan.openai_cache import insert_openai_breakpoint

    rows: list[dict[str, object]] = []
    for api in ("openai_chat", "openai_responses"):
        body = large_openai_request(api)
        head, tail = body.rsplit(QUESTION.encode(), 1)
        memory = Memory()
        clock = iter(range(10**9))
        turn: list[tuple[bytes, float]] = []

        def next_turn(head: bytes = head, tail: bytes = tail, turn: list[tuple[bytes, float]] = turn, clock: Iterator[int] = clock) -> None:
            n = next(clock)  # untimed: a new question 30 s after the last one
            turn[:] = [(head + f"Question {n}: what changed?".encode() + tail, 1000.0 + 30.0 * n)]

        def history(api: str = api, memory: Memory = memory, turn: list[tuple[bytes, float]] = turn) -> object:
            body, now = turn[0]
            res = insert_openai_breakpoint(body, None, api, memory=memory, now=now)  # type: ignore[arg-type]
            if res.ticket is not None:
                memory.index.response_began(res.ticket.recorded)  # as the addon does once the response begins
            return res

        def fresh(body: bytes = body, api: str = api) -> object:
            return insert_openai_breakpoint(body, None, api, memory=Memory(), now=0.0)  # type: ignore[arg-type]

        first = insert_openai_breakpoint(body, None, api, memory=Memory(), now=0.0)  # type: ignore[arg-type]
        assert first.decision == "inserted", first.decision
        history_s = p50_seconds(history, budget, next_turn)
        next_turn()
        again = history()
        assert again.decision == "inserted", again.decision  # type: ignore[attr-defined]
        rows.append({"bench": f"insert_openai_breakpoint, {api} (200 KB)", "bytes": len(body),
                     "history_p50_us": history_s * 1e6, "no_history_p50_us": p50_seconds(fresh, budget) * 1e6,
                     "markers": first.markers_inserted})
    return rows


def run_session_bench(budget: float) -> dict[str, object]:
    """The session tracker's work per request on the 200 KB request: fingerprint it, then begin + finish."""
    import json as _json

    from tokenpak_mitm.core.account.request_shape import shape_of
    from tokenpak_mitm.core.account.session_id import identify
    from tokenpak_mitm.core.account.sessions import SessionTracker, UsageFacts

    body = large_request()
    request = _json.loads(body)
    shape = shape_of(request)
    assert shape is not None
    tracker = SessionTracker(clock=lambda: 0.0)
    clock = iter(range(10**9))

    def track() -> None:
        now = float(next(clock))
        ticket = tracker.begin(identify({}, request, "anthropic"), shape, now)
        tracker.finish(ticket, UsageFacts(10, shape.tokens, 50), now)

    parse = best_seconds(lambda: _json.loads(body), budget)
    fingerprint = best_seconds(lambda: shape_of(request), budget)
    tracked = best_seconds(track, budget)
    return {"bench": "session tracker (200 KB)", "parse_ms": parse * 1e3, "shape_ms": fingerprint * 1e3,
            "track_ms": tracked * 1e3, "blocks": len(shape.blocks), "bytes": len(body)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=5_000, help="frames in the benchmark stream")
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of repeats per case")
    ap.add_argument("--json", type=Path, default=RESULTS / "micro.json")
    ap.add_argument("--openai-only", action="store_true", help="only the OpenAI insertion case (printed, not written)")
    args = ap.parse_args(argv)
    if args.openai_only:
        for row in run_openai_insert_bench(args.budget):
            print(f"{row['bench']}: {row['bytes']:,} bytes, p50 {row['history_p50_us']:,.0f} µs with history, "
                  f"{row['no_history_p50_us']:,.0f} µs with an empty memory, {row['markers']} breakpoints")
        return 0
    rows = run_stream_benches(args.frames, args.budget)
    rows.append(run_big_frame_bench(args.budget))
    insert = run_insert_bench(args.budget)
    learning = run_learning_insert_bench(args.budget)
    session = run_session_bench(args.budget)
    openai = run_openai_insert_bench(args.budget)
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"hot paths, best of N (stream: {args.frames} frames, mostly content_block_delta)")
    for col in ("bench", "chunks", "MB/s", "frames/s", "ns/frame"):
        table.add_column(col, justify="left" if col in ("bench", "chunks") else "right")
    for r in rows:
        ok = r["bench"] != "SSE parser alone" or (r["MB/s"] >= TARGET_MBS and r["frames/s"] >= TARGET_FPS)  # type: ignore[operator]
        style = "" if ok else "red"
        table.add_row(str(r["bench"]), str(r["chunks"]), f"{r['MB/s']:.0f}", f"{r['frames/s']:,.0f}", f"{r['ns/frame']:.0f}", style=style)
    console.print(table)
    mean = rows[0]["mean_frame_bytes"]
    console.print(f"mean frame {mean:.0f} bytes; parser targets: >= {TARGET_MBS:.0f} MB/s and >= {TARGET_FPS:,.0f} frames/s (red = missed)")
    if "skipped" in insert:
        console.print(f"insert_markers: skipped ({insert['skipped']})")
    else:
        console.print(f"insert_markers on a {insert['bytes']:,}-byte request: {insert['ms/call']:.2f} ms/call "
                      f"({insert['MB/s']:.0f} MB/s), {insert['markers']} markers, decision {insert['decision']}")
    console.print(f"learning planner on it (one memory, a turn every 30 s): {learning['plan_ms']:.2f} ms/call "
                  f"({learning['plan_new_memory_ms']:.2f} ms with an empty memory, {learning['markers']} markers); "
                  f"session shape of the sent body (parse_shape, worker process): {learning['parse_shape_ms']:.2f} ms")
    console.print(f"session tracker on the same request ({session['blocks']} blocks, shape_of a parsed request, no byte "
                  f"map): json.loads {session['parse_ms']:.2f} ms, fingerprints "
                  f"{session['shape_ms']:.2f} ms, begin+finish {session['track_ms']:.2f} ms")
    for row in openai:
        console.print(f"{row['bench']}: {row['bytes']:,} bytes, p50 {row['history_p50_us']:,.0f} µs with history "
                      f"(one memory, a turn every 30 s), {row['no_history_p50_us']:,.0f} µs with an empty memory, "
                      f"{row['markers']} breakpoints")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"stream": rows, "insert_markers": insert, "learning_planner": learning,
                                     "session_tracker": session, "openai_insert": openai}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

