"""How much of the best possible prompt-cache saving does the marker planner capture?

Why: inserting markers costs money when it writes entries nobody reads (a 5m write
is 1.25× input). This benchmark replays realistic multi-turn workloads through the
in-process cache simulator three ways and prices them:

* none    — the client's bodies as sent (no markers);
* planner — each body rewritten by ``tokenpak_mitm.cache_insert.insert_markers``
  (default ``CacheOptions()``), sent as JSON through ``CacheSimulator.handle``;
* best    — the cheapest plan found by a bounded search (see ``search_best_plan``).

"best" is the cheapest of three locally optimal plans, one started from each of:
no markers, a simple fixed heuristic, and the planner's own placements. From a
start plan, every turn in order is re-planned by trying every set of ≤ 4 5-minute
markers over that turn's candidate positions (plus the start plan's and the
current plan's placement for the turn), scoring each as this turn's cost + the
cost of replaying the rest of the current plan, and keeping the cheapest; sweeps
repeat until one changes nothing (at most 4). Candidate positions: the last tool,
the last system block, the last block the request shares with the previous
request, the end of every message at or after it, and every 10th block after it
(so gaps longer than the 20-block lookback can be bridged). The result is never
worse than its start plans, so planner share ≤ 100%; it is an upper bound on the
true optimum (1h markers and older positions are not searched — the workloads'
gaps are all under 5 minutes, where a 1h write only costs more).

Costs use claude-sonnet-4-6 list prices; output is a fixed 300 tokens per request.
Writes a table to the terminal and JSON (with per-turn usage and marker paths) to
``bench/results/savings.json``; exits 1 when the planner misses the goal (≥ 90% of the
best saving on every workload and never dearer than no markers).
"""
from __future__ import annotations

import copy
import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tokenpak_mitm.cache_insert import CacheOptions, insert_markers
from tokenpak_mitm.testing.cache_sim import Breakpoint, CacheSimulator, RequestAnalysis, analyse_request

MODEL = "claude-sonnet-4-6"
PRICE_PER_MTOK = {"input": 3.00, "write_5m": 3.75, "write_1h": 6.00, "read": 0.30, "output": 15.00}
OUTPUT_TOKENS = 300
RESULTS_PATH = Path(__file__).parent / "results" / "savings.json"
Placement = tuple[Breakpoint, ...]
Plan = list[Placement]

# ---------------------------------------------------------------- workloads

WORDS = ["cache", "prefix", "token", "stream", "request", "proxy", "model", "system", "tool", "result", "message", "budget", "latency", "write", "read", "marker", "window", "turn", "agent", "search", "file", "patch", "test", "build", "deploy", "config", "error"]


def prose(rng: random.Random, tokens: int) -> str:
    """About `tokens` stand-in tokens (4 characters each) of filler text."""
    words: list[str] = []
    length = 0
    while length < 4 * tokens:
        words.append(rng.choice(WORDS))
        length += len(words[-1]) + 1
    return " ".join(words)


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    requests: list[tuple[float, dict[str, Any]]]  # (seconds since start, body without markers)


def request_body(messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 4096, **fields, "messages": copy.deepcopy(messages)}


def chat_workload() -> Workload:
    rng = random.Random(10)
    system = prose(rng, 3000)
    messages: list[dict[str, Any]] = []
    requests, now = [], 0.0
    for _ in range(10):
        messages.append({"role": "user", "content": prose(rng, rng.randint(30, 250))})
        requests.append((now, request_body(messages, system=system)))
        messages.append({"role": "assistant", "content": prose(rng, rng.randint(150, 500))})
        now += rng.uniform(20, 120)
    return Workload("chat-10-turns", "10-turn chat, 3k-token string system prompt", requests)


def agent_workload() -> Workload:
    rng = random.Random(30)
    tools = [
        {"name": f"tool_{n}", "description": prose(rng, rng.randint(150, 300)),
         "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "query": {"type": "string"}}}}
        for n in range(10)
    ]
    system = [{"type": "text", "text": prose(rng, 1500)}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": prose(rng, 200)}]}]
    requests, now, call = [(0.0, request_body(messages, tools=tools, system=system))], 0.0, 0
    for parallel in (1, 2, 1, 1, 12, 1, 2, 1, 22, 1, 3, 1, 1, 2):
        calls = [f"toolu_{call + n:04d}" for n in range(parallel)]
        call += parallel
        messages.append({"role": "assistant", "content": [{"type": "text", "text": prose(rng, rng.randint(20, 80))}] + [
            {"type": "tool_use", "id": tool_id, "name": f"tool_{rng.randrange(10)}",
             "input": {"path": f"src/{rng.choice(WORDS)}.py", "query": prose(rng, 8)}}
            for tool_id in calls
        ]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tool_id, "content": prose(rng, rng.randint(100, 900))} for tool_id in calls
        ]})
        now += rng.uniform(3, 25)
        requests.append((now, request_body(messages, tools=tools, system=system)))
    return Workload("agent-tool-loop", f"agent loop, 10 tools, {call} tool calls (turns of 12 and 22 parallel calls)", requests)


def batch_workload() -> Workload:
    rng = random.Random(20)
    system = prose(rng, 5000)
    requests, now = [], 0.0
    for _ in range(20):
        requests.append((now, request_body([{"role": "user", "content": prose(rng, rng.randint(40, 300))}], system=system)))
        now += rng.uniform(5, 30)
    return Workload("batch-long-system", "20 independent questions, 5k-token string system prompt", requests)


# ---------------------------------------------------------------- costing


def usage_cost(usage: dict[str, Any]) -> float:
    split = usage.get("cache_creation") or {}
    write_1h = split.get("ephemeral_1h_input_tokens", 0)
    write_5m = usage.get("cache_creation_input_tokens", 0) - write_1h
    tokens = {"input": usage.get("input_tokens", 0), "write_5m": write_5m, "write_1h": write_1h,
              "read": usage.get("cache_read_input_tokens", 0), "output": usage.get("output_tokens", 0)}
    return sum(PRICE_PER_MTOK[kind] * count for kind, count in tokens.items()) / 1e6


def run_turn(sim: CacheSimulator, analysis: RequestAnalysis, placement: Placement, now: float) -> dict[str, Any]:
    usage, _ = sim.apply(replace(analysis, breakpoints=placement), now)
    return {**usage, "output_tokens": OUTPUT_TOKENS}


def plan_usages(analyses: Sequence[RequestAnalysis], times: Sequence[float], plan: Plan) -> list[dict[str, Any]]:
    sim = CacheSimulator(output_tokens=OUTPUT_TOKENS)
    return [run_turn(sim, analysis, placement, now) for analysis, placement, now in zip(analyses, plan, times, strict=True)]


# ---------------------------------------------------------------- best-plan search


def candidate_positions(analyses: Sequence[RequestAnalysis], turn: int) -> list[int]:
    blocks = analyses[turn].blocks
    previous = analyses[turn - 1].blocks if turn else ()
    shared = 0
    while shared < min(len(blocks), len(previous)) and blocks[shared].prefix_hash == previous[shared].prefix_hash:
        shared += 1
    positions = {max(b.index for b in blocks if b.section == section)
                 for section in ("tools", "system") if any(b.section == section for b in blocks)}
    if shared:
        positions.add(shared - 1)
    positions.update(range(shared - 1 + 10, len(blocks), 10))
    message_ends = [b.index for b, after in zip(blocks, blocks[1:] + (None,)) if b.section == "messages"
                    and (after is None or after.path.split(".")[1] != b.path.split(".")[1])]
    positions.update(end for end in message_ends if end >= shared - 1)
    return sorted(p for p in positions if p >= 0 and blocks[p].markable)


def placements(positions: Sequence[int]) -> list[Placement]:
    return [tuple(Breakpoint(p, "5m") for p in chosen)
            for size in range(5) for chosen in itertools.combinations(positions, size)]


def plan_cost(sim: CacheSimulator, analyses: Sequence[RequestAnalysis], times: Sequence[float], plan: Plan, start: int) -> float:
    return sum(usage_cost(run_turn(sim, analyses[t], plan[t], times[t])) for t in range(start, len(analyses)))


def improve_plan(analyses: Sequence[RequestAnalysis], times: Sequence[float], start_plan: Plan) -> Plan:
    """Re-plan one turn at a time against the rest of the plan until nothing improves."""
    plan = list(start_plan)
    for _ in range(4):
        sim, changed = CacheSimulator(output_tokens=OUTPUT_TOKENS), False
        for turn in range(len(analyses)):
            options = {plan[turn], start_plan[turn], *placements(candidate_positions(analyses, turn))}
            scored = []
            for option in options:
                trial = sim.copy()
                scored.append((plan_cost(trial, analyses, times, plan[:turn] + [option] + plan[turn + 1:], turn), option))
            cost, choice = min(scored, key=lambda item: (item[0], len(item[1]), [b.index for b in item[1]]))
            current = plan_cost(sim.copy(), analyses, times, plan, turn)
            if cost < current - 1e-12 or (cost <= current + 1e-12 and len(choice) < len(plan[turn])):
                plan[turn], changed = choice, True  # cheaper, or as cheap with fewer markers
            run_turn(sim, analyses[turn], plan[turn], times[turn])
        if not changed:
            break
    return plan


def heuristic_plan(analyses: Sequence[RequestAnalysis]) -> Plan:
    """Fixed start plan: last tool, last system block, last block."""
    plan = []
    for analysis in analyses:
        ends = {max(b.index for b in analysis.blocks if b.section == s) for s in ("tools", "system", "messages")
                if any(b.section == s for b in analysis.blocks)}
        plan.append(tuple(Breakpoint(p, "5m") for p in sorted(ends) if analysis.blocks[p].markable))
    return plan


def search_best_plan(analyses: Sequence[RequestAnalysis], times: Sequence[float], start_plans: Sequence[Plan]) -> Plan:
    improved = [improve_plan(analyses, times, plan) for plan in start_plans]
    return min(improved, key=lambda plan: sum(map(usage_cost, plan_usages(analyses, times, plan))))


# ---------------------------------------------------------------- planner


def planner_bodies(workload: Workload) -> list[dict[str, Any]]:
    bodies = []
    for _, body in workload.requests:
        result = insert_markers(json.dumps(body).encode(), None, CacheOptions())
        bodies.append(json.loads(result.body))
    return bodies


def describe(analysis: RequestAnalysis, placement: Placement) -> list[str]:
    return [f"{analysis.blocks[b.index].path}@{analysis.blocks[b.index].prefix_tokens}({b.ttl})" for b in placement]


# ---------------------------------------------------------------- report


def evaluate(workload: Workload) -> dict[str, Any]:
    times = [now for now, _ in workload.requests]
    analyses = [analyse_request(body) for _, body in workload.requests]
    none_plan: Plan = [() for _ in analyses]
    sim = CacheSimulator(output_tokens=OUTPUT_TOKENS)
    planned = planner_bodies(workload)
    planner_results = [sim.handle(body, now=now) for body, now in zip(planned, times, strict=True)]
    planner_analyses = [analyse_request(body) if result.status == 200 else None
                        for body, result in zip(planned, planner_results, strict=True)]
    content_kept = all(a is not None and [b.prefix_hash for b in a.blocks] == [b.prefix_hash for b in base.blocks]
                       for a, base in zip(planner_analyses, analyses, strict=True))
    starts = [none_plan, heuristic_plan(analyses)]
    if content_kept:
        starts.append([a.breakpoints for a in planner_analyses if a is not None])
    best_plan = search_best_plan(analyses, times, starts)
    usages = {"none": plan_usages(analyses, times, none_plan), "best": plan_usages(analyses, times, best_plan),
              "planner": [r.usage if r.status == 200 else {"error": r.error} for r in planner_results]}
    costs = {name: sum(usage_cost(u) if "error" not in u else usage_cost(none_u)
                       for u, none_u in zip(rows, usages["none"], strict=True)) for name, rows in usages.items()}
    best_saving = costs["none"] - costs["best"]
    share = (costs["none"] - costs["planner"]) / best_saving if best_saving > 1e-12 else 1.0
    turns = []
    for t, analysis in enumerate(analyses):
        planner_analysis = planner_analyses[t]
        turns.append({
            "turn": t, "at_seconds": round(times[t], 1), "blocks": len(analysis.blocks), "prompt_tokens": analysis.total_tokens,
            "cost": {name: round(usage_cost(usages[name][t]), 6) for name in ("none", "best")} | {
                "planner": round(usage_cost(usages["planner"][t]), 6) if "error" not in usages["planner"][t] else None},
            "usage": {name: usages[name][t] for name in usages},
            "markers": {"best": describe(analysis, best_plan[t]),
                        "planner": describe(planner_analysis, planner_analysis.breakpoints) if planner_analysis else None},
        })
    return {
        "workload": workload.name, "description": workload.description, "requests": len(analyses),
        "prompt_tokens": sum(a.total_tokens for a in analyses),
        "cost_usd": {name: round(cost, 6) for name, cost in costs.items()},
        "planner_share_of_best_saving": round(share, 4),
        "planner_not_more_expensive_than_none": costs["planner"] <= costs["none"] + 1e-12,
        "planner_kept_content": content_kept,
        "planner_errors": sum(1 for r in planner_results if r.status != 200),
        "turns": turns,
    }


WORKLOADS: tuple[Callable[[], Workload], ...] = (chat_workload, agent_workload, batch_workload)


def main() -> int:
    reports = [evaluate(make()) for make in WORKLOADS]
    goals_met = True
    table = Table(title=f"Prompt-cache savings, {MODEL} list prices (simulator)")
    headers = ("workload", "requests", "prompt tokens", "no markers", "planner", "best", "planner share")
    for column in headers:
        table.add_column(column, justify="left" if column == "workload" else "right", no_wrap=column == "workload")
    for report in reports:
        cost, share = report["cost_usd"], report["planner_share_of_best_saving"]
        ok = share >= 0.9 and report["planner_not_more_expensive_than_none"] and not report["planner_errors"]
        goals_met &= ok
        table.add_row(report["workload"], str(report["requests"]), f"{report['prompt_tokens']:,}", f"${cost['none']:.4f}",
                      f"${cost['planner']:.4f}", f"${cost['best']:.4f}", f"[{'green' if ok else 'red'}]{share:.1%}[/]")
    console = Console()
    console.width = max(console.width, 110)  # keep one line per row when piped
    console.print(table)
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps({"model": MODEL, "price_per_mtok": PRICE_PER_MTOK, "output_tokens_per_request": OUTPUT_TOKENS,
                                        "workloads": reports}, indent=2) + "\n")
    print(f"wrote {RESULTS_PATH}")
    return 0 if goals_met else 1  # goal: planner ≥ 90% of the best saving, never dearer than no markers


if __name__ == "__main__":
    raise SystemExit(main())
