"""tokenpak savings: what caching would cost on a workload file or recorded flows, at the file's clock."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tokenpak_mitm.cli.savings import WorkloadRequest, evaluate, parse_workload
from tokenpak_mitm.core.plan.prefix_index import boundaries

DOC = "the shared document says many things about caches and prefixes " * 400


def batch_lines(waves: int = 4, size: int = 4) -> list[str]:
    lines = []
    for wave in range(waves):
        for i in range(size):
            body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "messages": [{"role": "user", "content": [
                {"type": "text", "text": DOC}, {"type": "text", "text": f"question {wave}.{i}?"}]}]}
            lines.append(json.dumps({"t": wave * 20.0, "path": "/v1/messages", "body": body, "wave": wave, "output_tokens": 20}))
    return lines


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenpak_mitm.cli.main", "savings", *args], capture_output=True, text=True, timeout=120, check=False)


def test_json_output_has_exactly_the_documented_shape(tmp_path: Path):
    workload = tmp_path / "w.jsonl"
    workload.write_text("\n".join(batch_lines()) + "\n")
    done = run_cli(str(workload), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == {"none", "planner", "stateless", "best", "share", "requests"}
    assert out["requests"] == 16
    # the stateless planner lost money here until it left the trailing question unmarked (per-turn trailer)
    assert out["best"] <= out["planner"] <= out["stateless"] < out["none"]
    assert 0.95 <= out["share"] <= 1.0


def test_bad_lines_are_reported_one_each_and_the_rest_is_replayed(tmp_path: Path):
    workload = tmp_path / "w.jsonl"
    good = batch_lines(1, 2)
    workload.write_text("\n".join([good[0], "{not json", json.dumps({"t": "soon", "path": "/v1/messages", "body": {}}),
                                   json.dumps({"t": 1, "path": "/v1/embeddings", "body": {"model": "m"}}), good[1]]) + "\n")
    done = run_cli(str(workload), "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["requests"] == 2
    problems = done.stderr.strip().splitlines()
    assert [p.split(":")[1].strip() for p in problems] == ["skipped line 2", "skipped line 3", "skipped line 4"]


def test_a_missing_path_is_one_clear_line(tmp_path: Path):
    done = run_cli(str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no such file" in done.stderr


def test_a_directory_of_recorded_flows_is_replayed():
    flows = Path(__file__).parent.parent / "flows"
    done = run_cli(str(flows), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["requests"] >= 10 and out["best"] <= min(out["none"], out["planner"], out["stateless"]) + 1e-9


def test_the_files_clock_decides_not_the_wall_clock():
    """The same requests 4 minutes apart read the cache; 6 minutes apart (with ttl 5m) they cannot."""
    body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "system": DOC, "messages": [{"role": "user", "content": "hi"}]}
    close = [WorkloadRequest(t, "/v1/messages", body) for t in (0.0, 240.0, 480.0)]
    apart = [WorkloadRequest(t, "/v1/messages", body) for t in (0.0, 360.0, 720.0)]
    assert evaluate(close, search=False, ttl="5m").planner < evaluate(apart, search=False, ttl="5m").planner


def test_parse_workload_reads_waves_and_output_tokens():
    requests, problems = parse_workload(batch_lines(2, 2))
    assert problems == [] and [(r.t, r.wave, r.output_tokens) for r in requests] == [(0.0, 0, 20)] * 2 + [(20.0, 1, 20)] * 2


def test_openai_requests_are_priced_with_their_cache_fields():
    items = [{"role": "user", "content": [{"type": "input_text", "text": DOC}]}]
    workload = [WorkloadRequest(t, "/v1/responses", {"model": "gpt-5.6", "input": items + [
        {"role": "user", "content": [{"type": "input_text", "text": f"now is {t}"}]}]}) for t in (0.0, 10.0, 20.0, 30.0)]
    result = evaluate(workload)
    assert result.best <= result.planner < result.none  # an explicit breakpoint before the changing tail pays


# ---- parity: the live OpenAI path and the savings tool are one decision ---------------------------
def responses_agent(turns: int = 14) -> list[WorkloadRequest]:
    """A GPT-5.6 Responses agent loop: instructions, tools, tool results as content parts (and
    strings), a string user turn, and a per-turn context item last (changes every turn)."""
    tools = [{"type": "function", "name": f"fn_{n}", "description": DOC[: 300 + 40 * n],
              "parameters": {"type": "object", "properties": {"arg": {"type": "string"}}}} for n in range(4)]
    items: list[dict] = [{"role": "user", "content": "fix the failing test " + DOC[:900]}]
    out = []
    for turn in range(turns):
        context = {"role": "user", "content": [{"type": "input_text", "text": f"<turn_context>turn {turn} t={turn * 9}</turn_context>"}]}
        body = {"model": "gpt-5.6", "instructions": DOC[:6000], "tools": tools, "input": [*items, context]}
        out.append(WorkloadRequest(turn * 9.0, "/v1/responses", json.loads(json.dumps(body)), None, 100))
        items.append({"type": "function_call", "call_id": f"c{turn}", "name": "fn_1", "arguments": "{}"})
        output: object = [{"type": "input_text", "text": f"result {turn}: " + DOC[: 400 + 150 * (turn % 5)]}] if turn % 3 else f"ok {turn}"
        items.append({"type": "function_call_output", "call_id": f"c{turn}", "output": output})
    return out


def chat_agent(turns: int = 12) -> list[WorkloadRequest]:
    """A GPT-5.6 Chat Completions loop: a string system prompt, tool messages (string and parts),
    a growing conversation, a per-request environment message last, a pause (entries lapse)."""
    messages: list[dict] = [{"role": "system", "content": DOC[:7000]}, {"role": "user", "content": "review the patch"}]
    out, t = [], 0.0
    for turn in range(turns):
        env = {"role": "user", "content": f"<env>turn {turn}, clock {t:.0f}</env>"}  # changes every request
        out.append(WorkloadRequest(t, "/v1/chat/completions", {"model": "gpt-5.6", "messages": json.loads(json.dumps([*messages, env]))},
                                   None, 80))
        messages.append({"role": "assistant", "content": None,
                         "tool_calls": [{"id": f"t{turn}", "type": "function", "function": {"name": "read", "arguments": "{}"}}]})
        content: object = [{"type": "text", "text": f"file {turn}: " + DOC[: 600 + 100 * (turn % 4)]}] if turn % 2 else f"short {turn}"
        messages.append({"role": "tool", "tool_call_id": f"t{turn}", "content": content})
        t += 2000.0 if turn == 6 else 12.0
    return out


def planner_replay(requests: list[WorkloadRequest]):
    """learning_planner.plan_openai's decisions alone, replayed as tokenpak savings replays them
    (its own memory, the file's clock, the simulated usage fed back): (placements, cost)."""
    from tokenpak_mitm.cli.savings import State, _usage_counts, build_turns, plan_cost, turn_cost
    from tokenpak_mitm.core.plan import learning_planner

    turns = build_turns(requests)
    memory, state, placements = learning_planner.Memory(), State(), []
    for i, turn in enumerate(turns):
        plan, ticket = learning_planner.plan_openai(turn.request.body, turn.request.api, memory, turn.request.t)
        placement = (plan.positions, plan.explicit_only) if plan.decision == "inserted" else ((), False)
        placements.append(placement)
        _, usage = turn_cost(state, turns, i, placement)
        assert ticket is not None
        memory.index.response_began(ticket.recorded)
        read, write, prompt = _usage_counts(turn, usage)
        learning_planner.observe_usage(memory, ticket, prompt_tokens=prompt, read_tokens=read, write_tokens=write)
    return placements, plan_cost(turns, placements), turns


def test_the_live_openai_splice_places_and_costs_exactly_what_the_planner_decides():
    """The savings a user is shown are what the proxy does: replaying a workload through the
    proxy's own path (insert_openai_breakpoint with one memory, as addon.py calls it; the savings
    tool's replay) gives, request by request, the breakpoint positions plan_openai chose (read
    back from the spliced bytes) and the same simulated cost, tool-result breakpoints included."""
    from tokenpak_mitm.cli.savings import learning_plan, plan_cost

    for requests in (responses_agent(), chat_agent()):
        decided, decided_cost, turns = planner_replay(requests)
        live, _notes = learning_plan(turns)
        assert live == decided
        assert plan_cost(turns, live) == decided_cost
        result = evaluate(requests, search=False)
        assert result.planner == decided_cost < result.none
        api = requests[0].api
        items = "input" if api == "openai_responses" else "messages"
        tool_marked = False
        for turn, (positions, _only) in zip(turns, live, strict=True):
            bounds = boundaries(turn.request.body, api)
            for p in positions:
                item = turn.request.body[items][bounds[p].message]
                assert item.get("role") != "assistant"
                tool_marked |= item.get("type") == "function_call_output" or item.get("role") == "tool"
        assert tool_marked, "the planner never used tool-result content on an agent loop"


def test_each_request_of_the_replay_is_traced_and_the_trace_adds_up_to_the_cost():
    """The bench writes these traces so a loss can be found request by request: per request, the
    tokens read, written (5m, 1h) and uncached, and its cost; they add up to the plan's cost."""
    requests = [WorkloadRequest(float(i), r["path"], r["body"], r.get("wave"), r.get("output_tokens"))
                for i, r in enumerate(json.loads(line) for line in batch_lines(waves=2, size=2))]
    result = evaluate(requests)
    for plan, cost in (("planner", result.planner), ("best", result.best)):
        rows = result.traces[plan]
        assert len(rows) == result.requests
        assert abs(sum(r["usd"] for r in rows) - cost) < 1e-5
        assert all(r["read"] + r["write_5m"] + r["write_1h"] + r["uncached"] > 0 for r in rows)
    assert any(r["read"] > 0 for r in result.traces["planner"][1:])


def test_the_text_output_says_when_the_stateless_planner_would_cost_more_than_no_markers(tmp_path: Path):
    """A slow batch (waves 10 minutes apart): the stateless rules write the document for 5m every
    wave and it lapses before the next, so they cost more than no markers; the output says so."""
    lines = []
    for wave in range(3):
        for i in range(3):
            body = {"model": "claude-sonnet-4-6", "max_tokens": 50, "system": DOC,
                    "messages": [{"role": "user", "content": f"question {wave}.{i}?"}]}
            lines.append(json.dumps({"t": wave * 600.0, "path": "/v1/messages", "body": body, "wave": wave, "output_tokens": 20}))
    workload = tmp_path / "slow.jsonl"
    workload.write_text("\n".join(lines) + "\n")
    done = run_cli(str(workload), "--no-search")
    assert done.returncode == 0, done.stderr
    assert "the stateless planner (tokenpak_cache_history=false) costs $" in done.stdout
    assert "the planner costs" not in done.stdout
