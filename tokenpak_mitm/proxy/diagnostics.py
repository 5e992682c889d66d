"""``tokenpak_cache_diagnostics=on``: ask Anthropic for its own cache-miss verdict (the planning
addon's second splice, after the markers; see ``core/plan/cache_diagnostics``).

A Messages request that lacks them gets ``diagnostics.previous_message_id`` (the conversation's
previous response, remembered per credential scope) and the cache-diagnosis beta header; the
response's id is remembered once it is known, for the conversation's next request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import http

from tokenpak_mitm.core.plan.cache_diagnostics import PreviousResponses, beta_header, prepare, splice
from tokenpak_mitm.proxy.flowstate import FlowState, HeaderView, credential_scope

__all__ = ["SHAPE_OFFLOAD_BYTES", "ask", "note_response"]

SHAPE_OFFLOAD_BYTES = 32 << 10  # request bodies above this are read in the worker process


async def ask(flow: http.HTTPFlow, st: FlowState, spans: list[list[Any]], previous: PreviousResponses, salt: bytes,
              run: Callable[..., Awaitable[Any]]) -> dict[str, Any] | None:
    """Splice ``diagnostics.previous_message_id`` (and the beta header) into an Anthropic request
    that lacks it (see cache_diagnostics); returns what was added, None when nothing was."""
    req = flow.request
    body = req.raw_content
    if body is None or "content-encoding" in req.headers or st.record.cache_decision == "too_large":
        return None  # streamed upstream already, compressed (never re-encode for this), or over the planning bounds
    # ~9 ms for a 200 KB body (json.loads and one digest per message): past 32 KB in the worker
    # process, so only this flow waits, never the event loop's other streams
    prepared = await run(prepare, body) if len(body) > SHAPE_OFFLOAD_BYTES else prepare(body)
    if prepared is None or not prepared.keys:
        return None
    scope = credential_scope(req, st.req_headers or HeaderView(req.headers), salt)
    st.conversation = (scope, prepared.keys[-1])
    if prepared.client_sent:
        return None  # the client asked itself: its request goes as it wrote it
    earlier = previous.lookup(scope, prepared.keys)
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


def note_response(st: FlowState, previous: PreviousResponses) -> None:
    """Remember the response id of a conversation's request."""
    rid = st.tracker.extract.response_id
    if st.conversation is not None and rid:
        previous.note(*st.conversation, rid)
        st.conversation = None
