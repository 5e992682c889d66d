"""``tokenpak savings PATH [--json]``: what prompt caching would cost on a workload, before turning it on.

A workload is a JSONL file, one request per line::

    {"t": seconds from the start, "path": "/v1/messages" | "/v1/chat/completions" | "/v1/responses",
     "body": the request JSON object, "wave": optional int, "output_tokens": optional int}

or a directory of flows recorded with ``--set tokenpak_record=DIR`` (the client's own request
bytes, before any marker of ours, and the flow's start time). Requests sharing a ``wave`` are
sent concurrently: none can read what another of its wave writes (its writes become readable
when the wave is over). The file's clock is used, never the wall clock.

It is replayed through the cache simulator (``testing.cache_sim``: the providers' documented
rules, per-model facts from ``cache_facts``) four ways and priced at list prices:

* ``none``: the bodies as the client sent them (no markers of ours);
* ``stateless``: today's fixed rules, each request alone (``cache_planner``);
* ``planner``: the default, learning planner (``learning_planner``), fed the file's times and
  the simulated usage, exactly as the proxy would be live;
* ``best``: the cheapest placement a bounded search finds (see ``search_best``), started from the
  three plans above, so it is never dearer than any of them.

``share`` = (none - planner) / (none - best): the part of the achievable saving the planner gets
(1.0 when nothing can be saved). Prices: genai-prices' list prices for the model, flattened to
per-token rates (long-context tiers are not applied); a model it does not know is priced at
$3 / $15 per MTok input / output with ``cache_facts`` multipliers. Output tokens: the request's
``output_tokens``, else ``DEFAULT_OUTPUT_TOKENS``. OpenAI requests: the stateless planner adds
nothing; the planner's are what the proxy sends: ``openai_cache.insert_openai_breakpoint`` (the
learning planner's ``plan_openai`` decision, spliced into the request's bytes) with the replay's
memory and clock, then read back from the spliced body.

Bad input never stops a run: a line that is not a request is reported on stderr (one line each,
with its line number) and skipped; the run goes on with the rest.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from tokenpak_mitm.core.plan import learning_planner
from tokenpak_mitm.core.plan.cache_facts import facts_for
from tokenpak_mitm.core.plan.cache_insert import CacheOptions, insert_markers
from tokenpak_mitm.core.plan.openai_cache import insert_openai_breakpoint
from tokenpak_mitm.sim.cache_sim import (
    Breakpoint,
    CacheSimulator,
    InvalidRequest,
    OpenAIAnalysis,
    PendingWrite,
    RequestAnalysis,
    analyse_openai,
    analyse_request,
)

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "Replay",
    "WorkloadRequest",
    "add_arguments",
    "evaluate",
    "load",
    "parse_workload",
    "read_flows",
    "run",
]

DEFAULT_OUTPUT_TOKENS = 300
API_BY_PATH: dict[str, Literal["anthropic", "openai_chat", "openai_responses"]] = {
    "/v1/messages": "anthropic", "/v1/chat/completions": "openai_chat", "/v1/responses": "openai_responses",
}


@dataclass(frozen=True)
class WorkloadRequest:
    t: float
    path: str
    body: dict[str, Any]
    wave: int | None = None
    output_tokens: int | None = None

    @property
    def api(self) -> Literal["anthropic", "openai_chat", "openai_responses"]:
        return API_BY_PATH[self.path]


# ------------------------------------------------------------------------------------ input


def parse_workload(lines: Iterable[str]) -> tuple[list[WorkloadRequest], list[str]]:
    """Requests from JSONL lines, and one problem line per line skipped."""
    requests: list[WorkloadRequest] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {number}: not JSON ({e.msg})")
            continue
        problem = _problem(item)
        if problem:
            problems.append(f"line {number}: {problem}")
            continue
        requests.append(WorkloadRequest(float(item["t"]), item["path"], item["body"], item.get("wave"), item.get("output_tokens")))
    return requests, problems


def _problem(item: object) -> str | None:
    if not isinstance(item, dict):
        return "not a JSON object"
    if isinstance(item.get("t"), bool) or not isinstance(item.get("t"), (int, float)) or item["t"] != item["t"]:
        return '"t" must be a number of seconds'
    if item.get("path") not in API_BY_PATH:
        return f'"path" must be one of {", ".join(API_BY_PATH)}'
    if not isinstance(item.get("body"), dict) or not isinstance(item["body"].get("model"), str):
        return '"body" must be a request object with a "model"'
    for key in ("wave", "output_tokens"):
        value = item.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            return f'"{key}" must be a non-negative integer'
    return None


def read_flows(directory: Path) -> tuple[list[WorkloadRequest], list[str]]:
    """Requests from a directory of recorded flows (``*.mitm``), in start order, t from the first."""
    from mitmproxy import http, io  # only this input needs mitmproxy
    from mitmproxy.net import encoding

    found: list[tuple[float, str, dict[str, Any]]] = []
    problems: list[str] = []
    for path in sorted(directory.glob("*.mitm")):
        try:
            with path.open("rb") as f:
                flows = [flow for flow in io.FlowReader(f).stream() if isinstance(flow, http.HTTPFlow)]
        except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the run
            problems.append(f"{path.name}: not a readable flow file ({e})")
            continue
        for flow in flows:
            record = flow.metadata.get("tokenpak_record")
            client = record.get("client") if isinstance(record, dict) else None
            body = client.get("body") if isinstance(client, dict) else None
            if body is None or not isinstance(client, dict):
                body = flow.request.get_content(strict=False)  # no record: what went upstream
            else:
                coding = _header(client.get("headers"), "content-encoding") or flow.request.headers.get("content-encoding")
                if coding:
                    try:
                        body = encoding.decode(body, coding)
                    except (ValueError, TypeError):
                        problems.append(f"{path.name}: request body does not decode ({coding})")
                        continue
            route = flow.request.path.split("?", 1)[0]
            if route not in API_BY_PATH:
                continue  # not a request the planner plans (count_tokens, Gemini, ...)
            try:
                parsed = json.loads(body or b"")
            except ValueError:
                problems.append(f"{path.name}: request body is not JSON")
                continue
            if not isinstance(parsed, dict) or not isinstance(parsed.get("model"), str):
                problems.append(f"{path.name}: request body has no model")
                continue
            found.append((flow.request.timestamp_start, route, parsed))
    found.sort(key=lambda item: item[0])
    start = found[0][0] if found else 0.0
    return [WorkloadRequest(t - start, route, body) for t, route, body in found], problems


def _header(headers: object, name: str) -> str | None:
    """A header from a recorded head (a list of [name, value] byte or text pairs)."""
    if not isinstance(headers, (list, tuple)):
        return None
    for pair in headers:
        if isinstance(pair, (list, tuple)) and len(pair) == 2:
            key, value = (v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in pair)
            if key.lower() == name:
                return value
    return None


def load(path: Path) -> tuple[list[WorkloadRequest], list[str]]:
    if path.is_dir():
        return read_flows(path)
    with path.open(encoding="utf-8", errors="replace") as f:
        return parse_workload(f)


# ------------------------------------------------------------------------------------ replay model


@dataclass(frozen=True)
class Rates:
    """USD per token: input, 5m write, 1h write, read, output."""

    input: float
    write_5m: float
    write_1h: float
    read: float
    output: float


@lru_cache(maxsize=256)
def rates_for(provider: str, model: str) -> Rates:
    from tokenpak_mitm.core.account.pricing import price
    from tokenpak_mitm.core.observe.usage import Usage

    def unit(**tokens: int) -> float | None:
        return price(provider, model, Usage(**{"input_tokens": 0, "output_tokens": 0, **tokens})).cost_usd

    m = 1_000_000
    base = unit(input_tokens=m)
    facts = facts_for(model, "openai" if provider == "openai" else "anthropic")
    if base is None:
        i, o = 3.0 / m, 15.0 / m
        return Rates(i, i * facts.write_multiplier("5m" if provider == "anthropic" else "30m"),
                     i * facts.write_multiplier("1h"), i * facts.read_multiplier(), o)
    i = base / m
    out = (unit(output_tokens=m) or 0.0) / m
    read = (unit(cache_read_tokens=m) or base * facts.read_multiplier()) / m
    w5 = (unit(cache_write_tokens=m, cache_write_5m_tokens=m) or base * facts.write_multiplier("5m")) / m
    w1 = (unit(cache_write_tokens=m, cache_write_1h_tokens=m) or base * facts.write_multiplier("1h")) / m
    if provider == "openai" and not facts.write:
        w5 = w1 = i  # writes are free before GPT-5.6: billed as input
    return Rates(i, w5, w1, read, out)


# A placement: Anthropic -> the breakpoints; OpenAI -> (explicit positions, explicit-only mode).
Placement = Any


@dataclass
class Turn:
    request: WorkloadRequest
    analysis: RequestAnalysis | OpenAIAnalysis | None  # None: the simulator rejects it (priced as uncached)
    rates: Rates
    output: int
    batch: int  # requests sharing a batch are concurrent


@dataclass
class State:
    sim: CacheSimulator = field(default_factory=CacheSimulator)
    pending: list[PendingWrite] = field(default_factory=list)

    def copy(self) -> State:
        return State(self.sim.copy(), list(self.pending))


def turn_cost(state: State, turns: Sequence[Turn], i: int, placement: Placement) -> tuple[float, dict[str, Any]]:
    """Apply request `i` with `placement` to `state` (committing at the end of its batch): (USD, usage)."""
    turn = turns[i]
    r = turn.rates
    a = turn.analysis
    if a is None:
        usage: dict[str, Any] = {}
        cost = 0.0
    elif isinstance(a, OpenAIAnalysis):
        points, only = placement
        usage, _ = state.sim.apply_openai(a, turn.request.t, pending=state.pending, points=points, explicit_only=only)
        details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
        total = usage.get("input_tokens", usage.get("prompt_tokens", 0))
        read, write = details.get("cached_tokens", 0), details.get("cache_write_tokens", 0)
        cost = (total - read - write) * r.input + read * r.read + write * r.write_5m
    else:
        usage, _ = state.sim.apply(replace(a, breakpoints=placement), turn.request.t, pending=state.pending)
        w1 = usage["cache_creation"]["ephemeral_1h_input_tokens"]
        w5 = usage["cache_creation"]["ephemeral_5m_input_tokens"]
        cost = usage["input_tokens"] * r.input + usage["cache_read_input_tokens"] * r.read + w5 * r.write_5m + w1 * r.write_1h
    if a is None:
        cost = _uncached_tokens(turn) * r.input
    cost += turn.output * r.output
    if i + 1 >= len(turns) or turns[i + 1].batch != turn.batch:
        state.sim.commit(state.pending)
    return cost, usage


def _uncached_tokens(turn: Turn) -> int:
    return len(json.dumps(turn.request.body)) // 4


def trace(turns: Sequence[Turn], plan: Sequence[Placement]) -> list[dict[str, Any]]:
    """Per request of a replayed plan: time, tokens read / written (5m, 1h) / uncached, USD, the markers.

    What the bench writes for the planner and the best placement side by side, so a loss can be
    found request by request."""
    state = State()
    rows: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        cost, usage = turn_cost(state, turns, i, plan[i])
        if "cache_read_input_tokens" in usage:
            read, uncached = usage["cache_read_input_tokens"], usage["input_tokens"]
            w5, w1 = usage["cache_creation"]["ephemeral_5m_input_tokens"], usage["cache_creation"]["ephemeral_1h_input_tokens"]
            markers = [f"{bp.index}:{bp.ttl}" for bp in plan[i]]
        else:
            details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
            read, w5, w1 = details.get("cached_tokens", 0), details.get("cache_write_tokens", 0), 0
            uncached = usage.get("input_tokens", usage.get("prompt_tokens", 0)) - read - w5
            markers = [str(p) for p in plan[i][0]] if plan[i] else []
        rows.append({"t": round(turn.request.t, 1), "read": read, "write_5m": w5, "write_1h": w1, "uncached": uncached,
                     "usd": round(cost, 6), "markers": markers})
    return rows


def plan_cost(turns: Sequence[Turn], plan: Sequence[Placement], start: int = 0, state: State | None = None,
              stop: int | None = None) -> float:
    state = state or State()
    return sum(turn_cost(state, turns, i, plan[i])[0] for i in range(start, len(turns) if stop is None else min(stop, len(turns))))


# ------------------------------------------------------------------------------------ strategies


def build_turns(requests: Sequence[WorkloadRequest]) -> list[Turn]:
    ordered = sorted(requests, key=lambda r: r.t)
    turns: list[Turn] = []
    batch = -1
    previous_wave: object = object()
    for request in ordered:
        if request.wave is None or request.wave != previous_wave:
            batch += 1
        previous_wave = request.wave if request.wave is not None else object()
        analysis: RequestAnalysis | OpenAIAnalysis | None
        try:
            analysis = analyse_request(request.body) if request.api == "anthropic" else analyse_openai(request.body, request.api)
        except InvalidRequest:
            analysis = None
        provider = "anthropic" if request.api == "anthropic" else "openai"
        output = request.output_tokens if request.output_tokens is not None else DEFAULT_OUTPUT_TOKENS
        turns.append(Turn(request, analysis, rates_for(provider, str(request.body.get("model"))), output, batch))
    return turns


def as_sent(turn: Turn) -> Placement:
    a = turn.analysis
    if isinstance(a, OpenAIAnalysis):
        return (a.explicit, a.explicit_only)
    return a.breakpoints if a is not None else ()


def stateless_plan(turns: Sequence[Turn]) -> list[Placement]:
    plan: list[Placement] = []
    for turn in turns:
        if turn.request.api != "anthropic" or turn.analysis is None:
            plan.append(as_sent(turn))
            continue
        result = insert_markers(json.dumps(turn.request.body).encode(), None, CacheOptions())
        plan.append(_placement_of(turn, json.loads(result.body)))
    return plan


AUTO = CacheOptions(ttl="auto")


Route = Callable[[int, Turn], int]  # (request number, request) -> the proxy instance that plans it


def learning_plan(turns: Sequence[Turn], opts: CacheOptions = AUTO, instances: int = 1,
                  route: Route | None = None) -> tuple[list[Placement], list[tuple[Any, ...]]]:
    """The learning planner replayed at the file's clock, fed the simulated usage; (plan, notes per turn).

    With ``instances`` > 1, a fleet of proxies in front of one provider: each has its own planner
    memory (it learns per process) and plans, then learns from, only the requests ``route`` sends it.
    """
    memories = [learning_planner.Memory() for _ in range(max(1, instances))]
    state = State()
    plan: list[Placement] = []
    notes: list[tuple[Any, ...]] = []
    waiting: list[tuple[Turn, Any, dict[str, Any], learning_planner.Memory]] = []  # this batch's tickets and usages
    for i, turn in enumerate(turns):
        memory = memories[route(i, turn) % len(memories)] if route is not None else memories[0]
        ticket: Any = None
        note: Sequence[Any] = ()
        if turn.analysis is None:
            placement = as_sent(turn)
        elif turn.request.api == "anthropic":
            result = insert_markers(json.dumps(turn.request.body).encode(), None, opts, memory, turn.request.t)
            placement, note, ticket = _placement_of(turn, json.loads(result.body)), result.notes, result.ticket
        else:  # the proxy's own path: the planner's decision spliced into the client's bytes
            result = insert_openai_breakpoint(json.dumps(turn.request.body).encode(), None, turn.request.api,
                                              memory=memory, now=turn.request.t)
            placement, note, ticket = _openai_placement(turn, json.loads(result.body)), result.notes, result.ticket
        plan.append(placement)
        notes.append(tuple(note))
        _, usage = turn_cost(state, turns, i, placement)
        if ticket is not None:
            waiting.append((turn, ticket, usage, memory))
        if i + 1 >= len(turns) or turns[i + 1].batch != turn.batch:  # the batch's responses have begun
            for done, t, u, planned_by in waiting:
                planned_by.index.response_began(t.recorded)
                read, write, prompt = _usage_counts(done, u)
                learning_planner.observe_usage(planned_by, t, prompt_tokens=prompt, read_tokens=read, write_tokens=write)
            waiting.clear()
    return plan, notes


def _usage_counts(turn: Turn, usage: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    if not usage:
        return None, None, None
    if "cache_read_input_tokens" in usage:
        read, write = usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]
        return read, write, usage["input_tokens"] + read + write
    details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
    return details.get("cached_tokens"), details.get("cache_write_tokens"), usage.get("input_tokens", usage.get("prompt_tokens"))


def _openai_placement(turn: Turn, body: dict[str, Any]) -> Placement:
    """(explicit breakpoint positions, explicit-only mode) of a body as it would go upstream."""
    try:
        analysis = analyse_openai(body, turn.request.api)
    except InvalidRequest:
        return as_sent(turn)
    return (analysis.explicit, analysis.explicit_only)


def _placement_of(turn: Turn, body: dict[str, Any]) -> Placement:
    try:
        return analyse_request(body).breakpoints
    except InvalidRequest:
        return as_sent(turn)


# ------------------------------------------------------------------------------------ best search


HORIZON = 6  # requests scored ahead when trying a turn's options
VERIFY_HORIZON = 400  # requests the winner is checked over (the whole rest of any workload up to that size)


def shared_positions(turns: Sequence[Turn]) -> list[int]:
    """For each request, the deepest block position whose prefix some earlier request also had (-1: none)."""
    seen: set[str] = set()
    out: list[int] = []
    for turn in turns:
        a = turn.analysis
        keys: Sequence[str] = () if a is None else a.keys if isinstance(a, OpenAIAnalysis) else [b.prefix_hash for b in a.blocks]
        out.append(max((p for p, k in enumerate(keys) if k in seen), default=-1))
        seen.update(keys)
    return out


def candidate_positions(turns: Sequence[Turn], i: int, starts: Sequence[Sequence[Placement]], shared: int) -> list[int]:
    """Where a marker might pay: section ends, the deepest prefix shared with any earlier request
    (`shared`), the end of every message past it, every 10th block past it, and the start plans'
    own positions."""
    a = turns[i].analysis
    if a is None:
        return []
    if isinstance(a, OpenAIAnalysis):
        keys, markable = a.keys, a.markable
        found = {p for p in range(max(0, shared), len(keys)) if markable[p]} if len(keys) - shared < 12 else {shared}
        found |= {p for s in starts for p in s[i][0]}
        return sorted(p for p in found if 0 <= p < len(keys) and markable[p])
    blocks = a.blocks
    found = {max(b.index for b in blocks if b.section == s) for s in ("tools", "system") if any(b.section == s for b in blocks)}
    if shared >= 0:
        found.add(shared)
    found.update(range(max(shared, 0) + 10, len(blocks), 10))
    ends = [b.index for b, after in zip(blocks, (*blocks[1:], None), strict=True) if b.section == "messages"
            and (after is None or after.path.split(".")[1] != b.path.split(".")[1])]
    found.update(e for e in ends if e >= shared)
    found.update(bp.index for s in starts for bp in s[i])
    return sorted(p for p in found if 0 <= p < len(blocks) and blocks[p].markable)


def options(turns: Sequence[Turn], i: int, positions: Sequence[int]) -> list[Placement]:
    a = turns[i].analysis
    if isinstance(a, OpenAIAnalysis):
        subsets = [c for n in range(4) for c in itertools.combinations(positions, n)]
        return [(c, only) for c in subsets for only in (False, True)]
    found: list[Placement] = []
    for n in range(4):
        for chosen in itertools.combinations(positions, n):
            for long in range(n + 1):  # the first `long` markers 1h, the rest 5m (1h never after 5m)
                if long not in (0, 1, n):
                    continue
                found.append(tuple(Breakpoint(p, "1h" if j < long else "5m") for j, p in enumerate(chosen)))
    return found


def search_best(turns: Sequence[Turn], starts: Sequence[list[Placement]], sweeps: int = 2) -> list[Placement]:
    """Cheapest plan found: from each start plan, re-plan one request at a time (its options scored
    over the next HORIZON requests, the winner kept only if the replay of the next VERIFY_HORIZON
    requests is cheaper), sweeping until nothing improves; the cheapest of the results and the start
    plans, so never dearer than any start plan. Time grows linearly with the requests."""
    results = []
    shared = shared_positions(turns)
    for start in starts:
        plan = list(start)
        for _ in range(sweeps):
            changed = False
            state = State()
            for i in range(len(turns)):
                if turns[i].analysis is not None:
                    tried = options(turns, i, candidate_positions(turns, i, starts, shared[i]))
                    scored = min(((plan_cost(turns, plan[:i] + [o] + plan[i + 1:], i, state.copy(), i + HORIZON), _size(o), o)
                                  for o in tried), key=lambda x: (x[0], x[1]))
                    choice = scored[2]
                    if choice != plan[i]:
                        trial = plan[:i] + [choice] + plan[i + 1:]
                        stop = i + VERIFY_HORIZON
                        if plan_cost(turns, trial, i, state.copy(), stop) < plan_cost(turns, plan, i, state.copy(), stop) - 1e-12:
                            plan, changed = trial, True
                turn_cost(state, turns, i, plan[i])
            if not changed:
                break
        results.append(plan)
    return min([*results, *starts], key=lambda p: plan_cost(turns, p))  # never dearer than a start plan


def _size(option: Placement) -> int:
    return len(option[0]) if isinstance(option, tuple) and len(option) == 2 and isinstance(option[1], bool) else len(option)


# ------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class Replay:
    none: float
    stateless: float
    planner: float
    best: float
    requests: int
    notes: tuple[tuple[Any, ...], ...] = ()
    traces: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)  # plan -> per-request `trace`

    @property
    def share(self) -> float:
        saving = self.none - self.best
        return 1.0 if saving <= 1e-12 else (self.none - self.planner) / saving

    def as_json(self) -> dict[str, Any]:
        return {"none": round(self.none, 6), "planner": round(self.planner, 6), "stateless": round(self.stateless, 6),
                "best": round(self.best, 6), "share": round(self.share, 4), "requests": self.requests}


def evaluate(requests: Sequence[WorkloadRequest], search: bool = True, ttl: str = "auto") -> Replay:
    """Cost the workload four ways (see the module docstring); `ttl` is the learning planner's option."""
    turns = build_turns(requests)
    none = [as_sent(t) for t in turns]
    stateless = stateless_plan(turns)
    learned, notes = learning_plan(turns, CacheOptions(ttl=ttl))
    starts = [none, stateless, learned]
    best = search_best(turns, starts) if search else min(starts, key=lambda p: plan_cost(turns, p))
    traces = {"planner": trace(turns, learned), "best": trace(turns, best)}
    return Replay(plan_cost(turns, none), plan_cost(turns, stateless), plan_cost(turns, learned), plan_cost(turns, best),
                  len(turns), tuple(notes), traces)


# ------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="a JSONL workload, or a directory of recorded flows (tokenpak_record)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-search", action="store_true",
                        help="skip the search for the best placement (best = the cheapest of no markers and the two planners); "
                             "the search takes about 30 s per 1,000 requests")


def run(args: argparse.Namespace) -> int:
    path: Path = args.path
    if not path.exists():
        print(f"tokenpak savings: {path}: no such file or directory", file=sys.stderr)
        return 2
    requests, problems = load(path)
    for problem in problems:
        print(f"tokenpak savings: skipped {problem}", file=sys.stderr)
    result = evaluate(requests, search=not args.no_search)
    if args.json:
        print(json.dumps(result.as_json()))
        return 0
    print(f"{result.requests} requests from {path}")
    for name, cost in (("no markers", result.none), ("stateless planner", result.stateless),
                       ("planner (learning, default)", result.planner), ("best placement found", result.best)):
        print(f"  {name:<28} ${cost:,.4f}")
    print(f"  planner's share of the best saving: {result.share:.1%}")
    for name, cost in (("planner", result.planner), ("stateless planner (tokenpak_cache_history=false)", result.stateless)):
        if cost > result.none + 1e-9:
            print(f"  the {name} costs ${cost - result.none:,.4f} more than no markers on this workload")
    return 0
