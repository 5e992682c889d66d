"""``tokenpak_cache_diagnostics=on``: ask the provider for its own cache-miss verdict (the planning
addon's second splice, after the markers; see ``core/plan/cache_diagnostics``).

An Anthropic Messages request that lacks them gets ``diagnostics.previous_message_id`` (the
conversation's previous response, remembered per credential scope and system prompt) and the
cache-diagnosis beta header; a GPT-5.6+ Responses request gets
``prompt_cache_options.comparison_response_id``. The response's id is remembered once it is known,
for the conversation's next request. An upstream that refuses the field stops the asking.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import http

from tokenpak_mitm.core.plan.cache_diagnostics import Prepared, PreviousResponses, beta_header, prepare, splice, splice_openai
from tokenpak_mitm.core.plan.cache_facts import facts_for
from tokenpak_mitm.core.redact import redact_text
from tokenpak_mitm.proxy.flowstate import FlowState, HeaderView, credential_scope

__all__ = ["SHAPE_OFFLOAD_BYTES", "ask", "asks", "note_response", "refused"]

logger = logging.getLogger("tokenpak")

SHAPE_OFFLOAD_BYTES = 32 << 10  # request bodies above this are read in the worker process


def asks(st: FlowState) -> bool:
    """Whether the request's API has diagnostics to ask for."""
    route = st.route
    return (route.api == "messages" and route.provider == "anthropic") or (route.dialect == "openai_responses" and route.provider == "openai")


async def ask(flow: http.HTTPFlow, st: FlowState, spans: list[list[Any]], previous: PreviousResponses, salt: bytes,
              run: Callable[..., Awaitable[Any]]) -> dict[str, Any] | None:
    """Splice the diagnostics field (and, for Anthropic, the beta header) into a request that lacks
    it; returns what was added, None when nothing was."""
    req = flow.request
    body = req.raw_content
    if body is None or "content-encoding" in req.headers or st.record.cache_decision == "too_large":
        return None  # streamed upstream already, compressed (never re-encode for this), or over the planning bounds
    # ~9 ms for a 200 KB body (json.loads and one digest per message): past 32 KB in the worker
    # process, so only this flow waits, never the event loop's other streams
    api = st.route.dialect
    prepared = await run(prepare, body, api) if len(body) > SHAPE_OFFLOAD_BYTES else prepare(body, api)
    if prepared is None or not (prepared.keys or prepared.previous_response_id):
        return None
    scope = credential_scope(req, st.req_headers or HeaderView(req.headers), salt)
    if prepared.keys:
        st.conversation = (scope, prepared.keys[-1], prepared.flavor)
    if prepared.client_sent:
        return None  # the client (or, for OpenAI, the planner) wrote that object: its request goes as it is
    earlier = previous.lookup(scope, prepared.keys, prepared.flavor)
    if api == "openai_responses":
        return _ask_openai(flow, prepared, prepared.previous_response_id or earlier, spans)
    done = splice(body, prepared, earlier)
    header = beta_header(req.headers.get("anthropic-beta"))
    req.raw_content = done.body
    if "content-length" in req.headers:
        req.headers["content-length"] = str(len(done.body))
    if header is not None:
        req.headers["anthropic-beta"] = header
    # Client-body offsets: every marker span lies inside the object, after this one.
    spans.insert(0, [done.span.offset, done.span.text.decode("utf-8")])
    return {"previous_message_id": earlier, "anthropic_beta": header}  # header: the value set, None when the client's had it


def _ask_openai(flow: http.HTTPFlow, prepared: Prepared, baseline: str | None, spans: list[list[Any]]) -> dict[str, Any] | None:
    """``prompt_cache_options.comparison_response_id`` for a GPT-5.6+ Responses request (nothing
    to compare with on a conversation's first request: left alone)."""
    if baseline is None or not facts_for(prepared.model, "openai").write:
        return None  # diagnostics are for GPT-5.6 and later (developers.openai.com)
    done = splice_openai(flow.request.raw_content or b"", prepared, baseline)
    flow.request.raw_content = done.body
    if "content-length" in flow.request.headers:
        flow.request.headers["content-length"] = str(len(done.body))
    spans.insert(0, [done.span.offset, done.span.text.decode("utf-8")])
    return {"comparison_response_id": baseline}


def refused(st: FlowState) -> bool:
    """Whether the upstream refused the field the proxy added (a 400 naming it: a gateway, a model
    or platform without diagnostics); said once, with the upstream's message redacted."""
    x = st.record.extract
    said = f"{x.error_type or ''} {x.error_message or ''}".lower()
    if not any(word in said for word in ("diagnostics", "cache-diagnosis", "prompt_cache_options", "comparison_response_id")):
        return False
    logger.warning("tokenpak: the upstream refused the cache-diagnostics field the proxy added (HTTP 400: %s); "
                   "tokenpak_cache_diagnostics is off for this run", redact_text((x.error_message or "")[:200], st.record.known_secrets))
    return True


def note_response(st: FlowState, previous: PreviousResponses) -> None:
    """Remember the response id of a conversation's request."""
    rid = st.tracker.extract.response_id
    if st.conversation is not None and rid:
        scope, key, flavor = st.conversation
        previous.note(scope, key, rid, flavor)
        st.conversation = None
