"""offload: the worker process runs pure work; a worker that dies costs no call (a thread takes over).

Fail-open for split planning rests on this: a dead worker never loses the request's plan.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import os

from tokenpak_mitm.core.plan.cache_insert import CacheOptions, insert_markers
from tokenpak_mitm.core.plan.learning_planner import Memory
from tokenpak_mitm.core.plan.split_plan import Snapshot, apply_record, plan_with_snapshot, prompt_digests
from tokenpak_mitm.proxy.offload import Offloader


def where() -> str:
    return "worker" if multiprocessing.parent_process() is not None else "proxy"


def die_in_worker() -> str:
    if multiprocessing.parent_process() is not None:
        os._exit(3)  # the worker process dies mid-call
    return "thread"


def test_split_planning_runs_in_the_worker_and_a_dead_worker_falls_back_to_a_thread():
    body = json.dumps({"model": "claude-opus-5", "max_tokens": 1, "messages": [{"role": "user", "content": "x" * 9000}]}).encode()

    async def scenario() -> tuple[str, object, object, str, str]:
        off = Offloader()
        try:
            first = await off.run(where)
            digests = await off.run(prompt_digests, body, None)
            result, call = await off.run(plan_with_snapshot, body, None, CacheOptions(), Snapshot(b"", 3.0), 1.0)
            assert digests is not None
            result = apply_record(Memory(), digests, result, call)
            died = await off.run(die_in_worker)
            after = await off.run(where)
            return first, digests, result, died, after
        finally:
            off.close()

    first, digests, result, died, after = asyncio.run(scenario())
    assert first == "worker"
    assert digests == prompt_digests(body, None)
    assert result == insert_markers(body, None, CacheOptions(), Memory(), 1.0)
    assert died == "thread" and after == "proxy"  # the call completed; later calls stay in this process
