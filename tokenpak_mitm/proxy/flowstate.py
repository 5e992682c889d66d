"""The one per-flow state the TokenPak addons share: ``FlowState``, kept in ``flow.metadata``.

The addons (``addon.py`` lists them) cooperate only through it and mitmproxy's hooks: the planning
addon starts it when an LLM request's headers arrive, and each later step reads and fills it.
It never leaves the process: a copy of the flow (``get_state``: ``-w``, the recorder, a replay's
duplicate) holds None in its place, so a saved flow carries only the plain values stashed under
``META``, which replays reuse. The state dies with its flow (nothing else refers to it).

Also here: the header view each step reads, and the few facts of a flow the steps share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import url

from tokenpak_mitm.core.account.session_id import PROJECT_HEADER, SESSION_HEADER
from tokenpak_mitm.core.account.telemetry import Outcome, RequestRecord
from tokenpak_mitm.core.observe.tap import StreamTap
from tokenpak_mitm.core.observe.tracker import Tracker
from tokenpak_mitm.core.plan.cache_insert import PLAN_MAX_BYTES
from tokenpak_mitm.core.plan.learning_planner import Ticket
from tokenpak_mitm.core.routes import Route
from tokenpak_mitm.core.row import ClosedBy

__all__ = ["KEY", "META", "FlowState", "HeaderView", "closed_by", "closed_by_word", "credential_scope", "ms", "pretty_host", "response_headers",
           "shape_input", "state_of", "take_labels"]

KEY = "tokenpak_flow"  # flow.metadata key of the FlowState (None in any copy of the flow)
META = "tokenpak"  # flow.metadata key of the plain values a saved flow keeps: replays reuse the live decisions


@dataclass(slots=True, eq=False)
class FlowState:
    """What the addons know of one LLM request, from its headers to its hand-off to the accounting."""

    route: Route
    record: RequestRecord
    tracker: Tracker
    # Decided once, when the flow starts: do its bytes come from the network now (else it is a
    # loaded flow replayed from a file, whose stream callable never runs), and did an earlier run
    # of this addon already handle it (a recorded flow: markers in the body, timings stashed)?
    live: bool
    earlier: dict[str, Any] | None
    labels: dict[str, str] = field(default_factory=dict)  # the x-tokenpak-* headers, taken off the request
    req_headers: HeaderView | None = None  # read once when the request is complete (labels included)
    resp_headers: HeaderView | None = None  # read once when the flow ends (`response_headers`)
    sent_at: float | None = None  # when the request went upstream (after planning)
    ticket: Ticket | None = None  # planning: the learning planner's record of this request
    # Set by planning: how the request went, once its response is read (the learning planner's
    # feedback; the diagnostics' previous response); called once by the accounting hand-off.
    answered: Callable[[Outcome | None, RequestRecord], None] | None = None
    # tokenpak_cache_diagnostics: (credential scope, conversation key) under which this request's
    # response id is remembered, so the conversation's next request can name it
    conversation: tuple[str, bytes, bytes] | None = None  # (scope, conversation key, flavor)
    asked: bool = False  # tokenpak_cache_diagnostics spliced its field into this request
    began: Callable[[], None] | None = None  # planning: the response began (its cache writes are readable)
    tap: StreamTap | None = None  # observing: the stream observer in flow.response.stream
    emitted: bool = False  # the accounting hand-off ran (exactly once per request)

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None  # a copy of the flow is not this request (and must serialize: see the module)

    def __copy__(self) -> None:
        return None


def state_of(flow: http.HTTPFlow) -> FlowState | None:
    st = flow.metadata.get(KEY)
    return st if isinstance(st, FlowState) else None


class HeaderView:
    """A message's headers read in one pass: lower-cased name -> value, repeats joined with ", " as
    mitmproxy's ``Headers.get`` joins them, plus the labels taken off the request.

    ``Headers.get`` scans every field on each lookup (about 4 µs with 16 headers, more with the
    25 a provider sends back); the addons read a flow's headers about 20 times. Values are decoded
    only when read (most are never). mitmproxy's ``Headers`` keeps its fields in a tuple that any
    change replaces, so a view made earlier is still right while ``fields`` is the same object.
    """

    __slots__ = ("_map", "fields", "labelled")

    def __init__(self, headers: http.Headers, labels: dict[str, str] | None = None) -> None:
        self.fields = headers.fields  # kept: the identity `of` compares (and no new tuple can reuse its id)
        found: dict[bytes, bytes] = {}
        for raw_name, raw_value in self.fields:
            name = raw_name.lower()
            found[name] = found[name] + b", " + raw_value if name in found else raw_value
        if labels:
            for key, value in labels.items():
                found[key.encode("utf-8", "surrogateescape")] = value.encode("utf-8", "surrogateescape")
        self._map = found
        self.labelled = bool(labels)

    @classmethod
    def of(cls, headers: http.Headers, earlier: HeaderView | None, labels: dict[str, str] | None = None) -> HeaderView:
        """``earlier`` when the headers have not changed since it was made (and no labels are to be
        added), else a new view."""
        if earlier is not None and earlier.fields is headers.fields and earlier.labelled == bool(labels):
            return earlier
        return cls(headers, labels)

    def get(self, name: str, default: None = None, /) -> str | None:
        value = self._map.get(name.lower().encode("utf-8", "surrogateescape"))
        return default if value is None else value.decode("utf-8", "surrogateescape")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower().encode("utf-8", "surrogateescape") in self._map


def response_headers(resp: http.Response, st: FlowState) -> HeaderView:
    """The response's header view as the flow ends, read once for the usage and the row (after
    every addon's responseheaders: a later one may have rewritten them, which `of` notices)."""
    st.resp_headers = HeaderView.of(resp.headers, st.resp_headers)
    return st.resp_headers


def pretty_host(req: http.Request, headers: HeaderView) -> str:
    """``req.pretty_host`` (the host the client named, without port) read from the view, not by
    another scan of the headers."""
    authority = (req.authority or None) if (req.is_http2 or req.is_http3) else None
    authority = authority or headers.get("host")
    return url.parse_authority(authority, check=False)[0] if authority else req.host


def take_labels(headers: http.Headers) -> dict[str, str]:
    """Remove the proxy's own headers from a request; their values, for the session tracker."""
    labels: dict[str, str] = {}
    for name in (SESSION_HEADER, PROJECT_HEADER):
        if name in headers:
            labels[name] = headers.get(name, "")
            del headers[name]
    return labels


def shape_input(req: http.Request, headers: HeaderView) -> bytes | None:
    """The body the session tracker reads (`request_shape.parse_shape`); None when it reads none.

    Only identity-encoded bodies up to the planner's cap are read: decoding a compressed body has
    no size bound here (a small gzip bomb must not cost the proxy its memory), and clients that
    compress requests are rare; their sessions still come from the headers.
    """
    body = req.raw_content
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    if not body or encoding != "identity" or len(body) > PLAN_MAX_BYTES:
        return None  # (too big to plan is too big to fingerprint: its session comes from the headers)
    return body


def closed_by(flow: http.HTTPFlow) -> ClosedBy | None:
    """Whose connection was already closed when the flow failed ("client", "server" or None)."""
    client_closed = flow.client_conn.state is ConnectionState.CLOSED
    server_closed = flow.server_conn.state is ConnectionState.CLOSED
    if client_closed and not server_closed:
        return "client"
    if server_closed and not client_closed:
        return "server"
    return None


def closed_by_word(value: object) -> ClosedBy | None:
    return "client" if value == "client" else "server" if value == "server" else None


def credential_scope(req: http.Request, headers: HeaderView, salt: bytes) -> str:
    """An opaque scope for the request's credential: a salted hash of its key, never the key ("" without one)."""
    key = (headers.get("x-api-key") or headers.get("authorization") or headers.get("x-goog-api-key")
           or (req.query.get("key") if "?" in req.path else None) or "")
    return hashlib.blake2b(key.encode(), key=salt, digest_size=8).hexdigest() if key else ""


def ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000.0, 3)
