"""The one way to plan a request's cache markers (pure but for the planner's memory).

``plan(body, encoding, api, opts, memory, now)`` is the planner's single entry: Anthropic Messages
bodies get block markers (``cache_insert.insert_markers``), OpenAI Chat Completions / Responses
bodies the explicit breakpoint (``openai_cache.insert_openai_breakpoint``), both spliced into the
raw bytes by the one splicer (``cache_insert.splice_checked``) and never re-serialized.
``memory`` (the learning planner's; None: fixed rules) is read and recorded into.

Where it runs is decided once, by ``placement``: ``inline`` on the caller's thread, ``worker``
(the whole call in a worker process: it is then a pure function of its arguments), ``split``
(the learning planner's pure part in the worker, ``plan_in_worker`` against a snapshot of the
memory, which the caller reads and records into; see ``split_plan``), or not at all
(``too_large``: over the planning bounds). The proxy's runner (``proxy/planning.run_plan``)
carries that choice out.
"""

from __future__ import annotations

from typing import Literal

from tokenpak_mitm.core.plan.cache_insert import InsertResult, insert_markers, plan_where
from tokenpak_mitm.core.plan.cache_planner import CacheOptions
from tokenpak_mitm.core.plan.learning_planner import Memory
from tokenpak_mitm.core.plan.openai_cache import insert_openai_breakpoint
from tokenpak_mitm.core.plan.split_plan import RecordCall, Snapshot, plan_openai_with_snapshot, plan_with_snapshot

__all__ = ["Api", "Placement", "placement", "plan", "plan_in_worker", "unchanged"]

Api = Literal["anthropic", "openai_chat", "openai_responses"]
Placement = Literal["inline", "worker", "split", "too_large"]


def plan(body: bytes, encoding: str | None, api: Api, opts: CacheOptions, memory: Memory | None, now: float) -> InsertResult:
    """The request with its cache markers spliced in (the body object itself when none were); never raises."""
    if api == "anthropic":
        return insert_markers(body, encoding, opts, memory, now)
    if opts.mode == "off":  # OpenAI's breakpoints know only on and off
        return unchanged(body, "off")
    return insert_openai_breakpoint(body, encoding, api, memory=memory, now=now)


def plan_in_worker(body: bytes, encoding: str | None, api: Api, opts: CacheOptions, snapshot: Snapshot,
                   now: float) -> tuple[InsertResult, RecordCall | None]:
    """``plan`` with the learning planner answering from ``snapshot`` (the worker's half of a split plan)."""
    if api == "anthropic":
        return plan_with_snapshot(body, encoding, opts, snapshot, now)
    return plan_openai_with_snapshot(body, encoding, api, snapshot, now)


def placement(body: bytes, encoding: str | None, api: Api, opts: CacheOptions, learning: bool) -> Placement:
    """Where planning this body runs: on the event loop when it takes a few milliseconds at most,
    else in the worker process, whole when it is stateless, split when the learning planner's
    memory (which stays in the proxy) is read and recorded into; not at all over the bounds."""
    if api != "anthropic" and opts.mode == "off":
        return "inline"  # nothing to read
    where = plan_where(body, encoding)
    if where == "too_large":
        return "too_large"
    if where == "here":
        return "inline"
    return "split" if learning else "worker"


def unchanged(body: bytes, decision: Literal["off", "too_large"]) -> InsertResult:
    """The result of a request planning leaves as it came."""
    return InsertResult(body=body, spans=(), decision=decision, markers_inserted=0, client_markers=0, client_ttls=(),
                        prefix_tokens_est=None, model=None, content_encoding=None)
