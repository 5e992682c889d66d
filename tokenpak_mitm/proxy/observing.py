"""The response side: the stream observer, and reading a buffered body, for the tracker.

``responseheaders`` makes a ``tap.StreamTap`` the response's stream callable for SSE (or Gemini's
JSON-array stream) and fires ``tokenpak_stream``; the tap returns every chunk unchanged and feeds
the flow's tracker. Error statuses and non-streams stay buffered: ``read_body`` feeds them to the
tracker once the flow ends (the accounting hand-off calls it; ``inline`` on the event loop it
raises ``Heavy`` for a body that would take more than a few milliseconds, to be read in a thread).
"""

from __future__ import annotations

import logging

from mitmproxy import http

from tokenpak_mitm.core.observe.decoders import DecodeError, DecodeLimit, decode_body
from tokenpak_mitm.core.observe.tap import StreamTap
from tokenpak_mitm.proxy import hooks
from tokenpak_mitm.proxy.flowstate import FlowState, HeaderView, response_headers, state_of

__all__ = ["INLINE_PARSE_BYTES", "MAX_OBSERVED_BODY", "Heavy", "Observing", "read_body"]

logger = logging.getLogger("tokenpak")

INLINE_PARSE_BYTES = 256 * 1024  # response bodies decoding to more are decoded and parsed in a worker thread
MAX_OBSERVED_BODY = 16 * 1024 * 1024  # and above this not parsed at all (the row says so)


class Heavy(Exception):
    """Raised on the event loop when a body is too big to decode or parse there."""


class Observing:
    """Attaches the stream observer to LLM responses that stream."""

    name = "tokenpak_observing"

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is None:
            return
        try:
            resp = flow.response
            headers = st.resp_headers = HeaderView(resp.headers)
            ctype = (headers.get("content-type") or "").lower()
            sse = "text/event-stream" in ctype
            array_stream = st.route.dialect == "gemini" and ":streamgeneratecontent" in flow.request.path.lower() and not sse
            if not (sse or array_stream) or resp.status_code >= 400:
                return
            st.record.stream = True
            st.tap = StreamTap(st.tracker, sse=sse, content_encoding=headers.get("content-encoding"))
            resp.stream = st.tap
            hooks.fire(hooks.TokenpakStreamHook(flow, st.tap))
        except Exception:
            logger.exception("tokenpak: could not attach the stream observer; response passes through")


def read_body(flow: http.HTTPFlow, st: FlowState, inline: bool = False) -> None:
    """Feed the buffered response to the tracker. ``inline`` (on the event loop): raise ``Heavy``
    rather than decode or parse more than a few milliseconds' worth."""
    resp = flow.response
    assert resp is not None
    tap = st.tap
    if tap is not None:
        if not tap.finished and resp.raw_content:
            tap.feed_buffered(resp.raw_content)  # replay: the callable never ran
        elif not tap.finished:
            tap.close()
        return
    body = resp.raw_content
    if body is None:
        return
    headers = response_headers(resp, st)
    ctype = (headers.get("content-type") or "").lower()
    if "text/event-stream" in ctype:  # an SSE body we did not stream (e.g. replayed error)
        tap = StreamTap(st.tracker, sse=True, content_encoding=headers.get("content-encoding"))
        tap.feed_buffered(body)
        st.tap = tap
        st.record.stream = True
        return
    if inline and len(body) > INLINE_PARSE_BYTES:
        raise Heavy
    try:
        decoded = decode_body(body, headers.get("content-encoding"), INLINE_PARSE_BYTES if inline else MAX_OBSERVED_BODY, strict=False)
    except DecodeLimit:
        if inline:
            raise Heavy from None
        logger.warning("tokenpak: a response body decodes to more than %d bytes; not parsed (usage unknown)", MAX_OBSERVED_BODY)
        st.record.observe_note = "response_body_too_large"
        return
    except DecodeError as e:
        logger.warning("tokenpak: response body not decoded (%s); usage unknown, bytes passed through unchanged", e)
        st.record.observe_note = "response_body_undecodable"
        return
    st.tracker.feed_body(decoded, resp.status_code)
