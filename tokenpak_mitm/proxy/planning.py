"""The request side: each LLM request is classified and its cache markers planned and spliced in.

``requestheaders`` starts the flow's ``FlowState`` (its route, record and tracker); ``request``
plans with the one planner (``core.plan.plan``) where ``placement`` says (inline, the worker
process, or split between them: ``run_plan``), stashes the decision in ``flow.metadata`` for a
saved flow's replay (which reuses it instead of planning again), and fires
``tokenpak_outbound``. The learning planner's memory (``Memory``, shared with the index file
addon) stays in this process; the flow state carries its feedback for the accounting hand-off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.proxy import mode_specs

from tokenpak_mitm.core.account.pricing import request_price_hints
from tokenpak_mitm.core.account.session_id import PROJECT_HEADER, SESSION_HEADER
from tokenpak_mitm.core.account.telemetry import Outcome, RequestRecord
from tokenpak_mitm.core.observe.decoders import codings
from tokenpak_mitm.core.plan.cache_diagnostics import PreviousResponses
from tokenpak_mitm.core.plan.cache_insert import OFFLOAD_BYTES, PLAN_MAX_OBJECTS, InsertResult
from tokenpak_mitm.core.plan.cache_planner import CacheOptions
from tokenpak_mitm.core.plan.learning_planner import Memory, Ticket, observe_usage
from tokenpak_mitm.core.plan.plan import Api, placement, plan, plan_in_worker, unchanged
from tokenpak_mitm.core.plan.split_plan import Snapshot, apply_record_stepwise, prompt_digests, take_snapshot, trailer_drops
from tokenpak_mitm.core.redact import redact_query
from tokenpak_mitm.core.routes import classify, route_class, tracker_for
from tokenpak_mitm.proxy import hooks
from tokenpak_mitm.proxy.diagnostics import ask, asks, note_response, refused
from tokenpak_mitm.proxy.flowstate import KEY, META, FlowState, HeaderView, pretty_host, state_of, take_labels
from tokenpak_mitm.proxy.offload import Offloader
from tokenpak_mitm.proxy.options import Settings, parse
from tokenpak_mitm.proxy.probe import PROBE_HEADER

__all__ = ["Planning", "run_plan"]

logger = logging.getLogger("tokenpak")

SNAPSHOT_CHUNK = 2048  # prefix digests looked up per event-loop turn (~5 ms when all are known)
_INSERTING: frozenset[str] = frozenset({"anthropic", "openai_chat", "openai_responses"})

Run = Callable[..., Awaitable[Any]]  # Offloader.run: a function and its arguments, in the worker process


class Planning:
    """Classifies LLM requests and splices the planner's cache markers into them."""

    name = "tokenpak_planning"

    def __init__(self, memory: Memory, worker: Offloader) -> None:
        self.memory = memory  # the learning planner's, one per proxy (shared with the index file addon)
        self._worker = worker  # planning of heavy bodies, in a worker process
        self.settings: Settings | None = None
        self.previous_responses = PreviousResponses()  # tokenpak_cache_diagnostics: each conversation's last response
        self._scope_salt = os.urandom(16)  # credential scopes are salted hashes, never the key
        self._diagnostics = False  # tokenpak_cache_diagnostics, until an upstream refuses the field

    def configure(self, updated: set[str]) -> None:
        try:
            self.settings = parse(ctx.options, updated)  # (the configuration addon reports a bad value)
        except ValueError:
            return
        if "tokenpak_cache_diagnostics" in updated:
            self._diagnostics = self.settings.diagnostics

    # -- hooks ----------------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        view = HeaderView(flow.request.headers)
        if PROBE_HEADER in view:
            return  # `tokenpak doctor`'s probe: answered by its own addon, never sent upstream
        # On every flow: our headers never go upstream.
        labels = take_labels(flow.request.headers) if SESSION_HEADER in view or PROJECT_HEADER in view else {}
        try:
            self._start(flow, view, labels)
        except Exception:
            logger.exception("tokenpak: could not classify %s; passing it through", flow.request.host)

    async def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or self.settings is None:
            return
        st.req_headers = HeaderView.of(flow.request.headers, st.req_headers, st.labels)
        if st.route.dialect == "anthropic" and "content-encoding" not in st.req_headers:
            try:  # the response normally reports both; this is the fallback
                st.record.request_speed, st.record.request_inference_geo = request_price_hints(flow.request.raw_content)
            except Exception:
                logger.exception("tokenpak: could not read the request's price hints")
        if st.earlier is not None:
            _reuse_decision(st.record, st.earlier)  # a recorded flow already carries our markers
        elif flow.response is None:  # a response set by another addon means nothing goes upstream
            await self._plan(flow, st, self.settings)
        st.sent_at = time.time()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is not None and st.began is not None and flow.response is not None and flow.response.status_code < 400:
            st.began()  # its cache writes are readable now

    def response(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is not None and st.conversation is not None and not st.emitted and flow.error is None:
            note_response(st, self.previous_responses)  # a stream's id is known by now: before the next request can come

    # -- steps ----------------------------------------------------------------------------------
    def _start(self, flow: http.HTTPFlow, headers: HeaderView, labels: dict[str, str]) -> None:
        req = flow.request
        reverse = isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)
        host = pretty_host(req, headers)
        hosts = self.settings.hosts if self.settings is not None else frozenset()
        route = classify(req.method, host, req.path, extra_hosts=hosts, any_host=reverse)
        if route is None:
            return
        tracker = tracker_for(route)
        if tracker is None:
            return
        rec = RequestRecord(
            request_key=flow.id,
            route=route,
            started_at=req.timestamp_start,
            host=host,
            path=redact_query(req.path),
            route_class=route_class(headers.get("user-agent"), "x-stainless-lang" in headers),
        )
        meta = flow.metadata.get(META)
        earlier = meta if isinstance(meta, dict) and "cache_decision" in meta else None
        flow.metadata[KEY] = FlowState(route=route, record=rec, tracker=tracker, live=flow.live, earlier=earlier, labels=labels,
                                       req_headers=headers)  # reused by `request` unless the headers changed in between

    async def _plan(self, flow: http.HTTPFlow, st: FlowState, settings: Settings) -> None:
        client_body = flow.request.raw_content
        spans: list[list[Any]] = []
        try:
            spans = await self._insert(flow, st, settings)
        except Exception:
            logger.exception("tokenpak: marker insertion failed; request sent unchanged")
            st.record.cache_decision = "error"
        asked: dict[str, Any] | None = None
        if self._diagnostics and asks(st):
            try:
                asked = await ask(flow, st, spans, self.previous_responses, self._scope_salt, self._worker.run)
                st.asked = asked is not None
            except Exception:
                logger.exception("tokenpak: could not ask for cache diagnostics; request sent without them")
        if st.ticket is not None or st.conversation is not None or st.asked:
            st.answered = self._answered(st)
        rec = st.record
        flow.metadata[META] = {
            "cache_decision": rec.cache_decision,
            "markers_inserted": rec.markers_inserted,
            "client_markers": rec.client_markers,
            "prefix_tokens_est": rec.prefix_tokens_est,
            "cache_reasons": rec.cache_reasons,
            "spans": spans,
        }
        if asked is not None:
            flow.metadata[META]["diagnostics"] = asked  # our change, besides the spans: the header
        if hooks.wanted(flow, hooks.OUTBOUND):
            inserted = [(int(offset), text.encode("utf-8")) for offset, text in spans]
            hooks.fire(hooks.TokenpakOutboundHook(flow, client_body or b"", inserted))

    def _answered(self, st: FlowState) -> Callable[[Outcome | None, RequestRecord], None]:
        """What the response teaches planning, once it is read: the learning planner's calibration
        and lost cache entries, and the diagnostics' previous response."""
        memory, ticket = self.memory, st.ticket

        def answered(ended: Outcome | None, rec: RequestRecord) -> None:
            if ticket is not None:
                try:
                    usage = rec.extract.usage
                    if ended is None or (ended.state != "completed" and not usage.input_tokens):
                        memory.index.forget(ticket.recorded)  # nothing was written upstream
                    else:
                        read, write, fresh = usage.cache_read_tokens, usage.cache_write_tokens, usage.input_tokens
                        prompt = None if fresh is None else fresh + (read or 0) + (write or 0)
                        observe_usage(memory, ticket, prompt_tokens=prompt, read_tokens=read, write_tokens=write)
                except Exception:
                    logger.exception("tokenpak: could not feed usage back to the cache planner")
            if st.conversation is not None:
                note_response(st, self.previous_responses)
            if st.asked and rec.status_code == 400 and self._diagnostics and refused(st):
                self._diagnostics = False  # asking stops for this process

        return answered

    async def _insert(self, flow: http.HTTPFlow, st: FlowState, settings: Settings) -> list[list[Any]]:
        """Splice cache markers into the request; returns the inserted spans for the metadata."""
        rec = st.record
        if not st.route.inserts or st.route.dialect not in _INSERTING:
            return []
        body = flow.request.raw_content
        if body is None:
            rec.cache_decision = "request_streamed"  # stream_large_bodies sent it already
            return []
        encoding = (st.req_headers or HeaderView(flow.request.headers)).get("content-encoding")
        api: Api = st.route.dialect  # type: ignore[assignment]  # checked above
        memory = self.memory if settings.history else None
        result = await run_plan(body, encoding, api, settings.cache, memory, flow.request.timestamp_start, self._worker.run)
        if result.ticket is not None:
            st.ticket, st.began = result.ticket, _began(self.memory, result.ticket)
        rec.cache_reasons = result.reasons_json()
        # An OpenAI model without explicit breakpoints has no planner: NULL, as before (and as Gemini).
        rec.cache_decision = None if result.decision == "not_supported" else result.decision
        rec.request_model = result.model
        rec.markers_inserted = result.markers_inserted
        rec.client_markers = result.client_markers
        rec.prefix_tokens_est = result.prefix_tokens_est
        if result.spans and result.body is not body:
            flow.request.raw_content = result.body
            if "content-length" in flow.request.headers:
                flow.request.headers["content-length"] = str(len(result.body))
        return [[s.offset, s.text.decode("utf-8", "replace")] for s in result.spans]


async def run_plan(body: bytes, encoding: str | None, api: Api, opts: CacheOptions, memory: Memory | None, now: float,
                   run: Run) -> InsertResult:
    """``plan`` where ``placement`` says. Planning a big or many-block prompt would stall every other
    connection on mitmproxy's single event-loop thread (and, in a thread, hold the GIL it needs);
    in the worker process only this flow waits. The learning planner's memory stays in this
    process: the worker fingerprints and decides, this process only looks up and records. Over the
    planning bounds (PLAN_MAX_BYTES, PLAN_MAX_OBJECTS) planning would cost more than a marker
    saves: the request goes upstream exactly as it came (``too_large``)."""
    where = placement(body, encoding, api, opts, memory is not None)
    if where in ("worker", "split") and len(body) > OFFLOAD_BYTES and not codings(encoding) and await _objects(body, PLAN_MAX_OBJECTS) > PLAN_MAX_OBJECTS:
        where = "too_large"  # counted here in slices: no worker round trip (and body copy) to learn it
    if where == "too_large":
        return unchanged(body, "too_large")
    if where == "inline":
        return plan(body, encoding, api, opts, memory, now)
    if where == "worker":
        result: InsertResult = await run(plan, body, encoding, api, opts, None, now)
        return result
    assert memory is not None
    digests = await run(prompt_digests, body, encoding, api)
    known: list[bytes] = []
    bpt = memory.calibration.bytes_per_token(digests.model if digests is not None else None)
    ds = digests.split() if digests is not None else []
    for start in range(0, len(ds), SNAPSHOT_CHUNK):  # a turn of the event loop between slices
        known.append(take_snapshot(memory, ds[start:start + SNAPSHOT_CHUNK], now))
        await asyncio.sleep(0)
    snapshot = Snapshot(b"".join(known), bpt, trailer_drops(memory, ds))
    split, call = await run(plan_in_worker, body, encoding, api, opts, snapshot, now)
    for done in apply_record_stepwise(memory, ds, split, call, SNAPSHOT_CHUNK):
        if done is not None:
            return done
        await asyncio.sleep(0)
    raise AssertionError("unreachable")  # pragma: no cover


COUNT_SLICE = 256 << 10  # bytes counted per turn of the event loop (~0.6 ms on the shared 2-core VM)


async def _objects(body: bytes, limit: int) -> int:
    """The JSON objects (``{`` bytes) in ``body``, counted in slices with a turn of the event loop
    between them (no copy), stopping once past ``limit``: a big body never holds the loop."""
    n = 0
    for start in range(0, len(body), COUNT_SLICE):
        n += body.count(b"{", start, start + COUNT_SLICE)
        if n > limit:
            break
        await asyncio.sleep(0)
    return n


def _reuse_decision(rec: RequestRecord, meta: dict[str, Any]) -> None:
    rec.cache_decision = meta.get("cache_decision")
    rec.markers_inserted = int(meta.get("markers_inserted") or 0)
    rec.client_markers = int(meta.get("client_markers") or 0)
    rec.prefix_tokens_est = meta.get("prefix_tokens_est")
    rec.cache_reasons = meta.get("cache_reasons")


def _began(memory: Memory, ticket: Ticket) -> Callable[[], None]:
    return lambda: memory.index.response_began(ticket.recorded)
