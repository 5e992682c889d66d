"""Turns what the addon saw of one request into exactly one telemetry row (pure, no I/O).

``RequestRecord`` is filled by the addon's hooks; ``build_row`` decides the terminal state,
usage source, cache attribution and cost. Keeping this pure means every accounting rule is unit
tested without a proxy, and replays produce the same row as the live run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tokenpak_mitm import __version__
from tokenpak_mitm.core.account.pricing import PriceFactors, price
from tokenpak_mitm.core.observe.tracker import Extract
from tokenpak_mitm.core.redact import redact_text
from tokenpak_mitm.core.routes import Route
from tokenpak_mitm.core.row import CacheDecision, CacheOrigin, CacheVerdict, ClosedBy, RouteClass, TelemetryRow, TerminalState, UsageSource
from tokenpak_mitm.core.wire import by_fields

__all__ = ["RequestRecord", "build_row", "terminal_state_for_error", "cache_verdict", "cache_origin", "error_label", "rejected_unbilled"]


@by_fields
@dataclass(slots=True)
class RequestRecord:
    request_key: str
    route: Route
    started_at: float
    host: str
    path: str
    route_class: RouteClass = "other"
    stream: bool = False
    status_code: int | None = None
    extract: Extract = field(default_factory=Extract)
    ttfb_ms: float | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    proxy_request_ms: float | None = None  # client's last request byte -> sent upstream (our own time)
    frames: int | None = None
    response_bytes: int | None = None
    upstream_request_id: str | None = None
    error_msg: str | None = None  # mitmproxy's flow.error message, when the flow failed
    closed_by: ClosedBy | None = None  # "client" / "server": whose connection was closed at the error
    terminal_override: TerminalState | None = None  # e.g. proxy_error when our own code failed
    markers_inserted: int = 0
    client_markers: int = 0
    cache_decision: CacheDecision | None = None
    prefix_tokens_est: int | None = None
    cache_reasons: str | None = None  # JSON: why each marker was placed and each candidate skipped
    conformance_violations: int | None = None
    observe_note: str | None = None  # why a response was not parsed (too large, undecodable)
    known_secrets: tuple[str, ...] = ()  # the request's own secret values, removed from the error text
    request_model: str | None = None  # the model the request asked for (used when the response names none)
    # Price factors the client asked for, used when the response does not report them.
    request_speed: str | None = None
    request_inference_geo: str | None = None


_CLIENT_GONE = ("client disconnected", "stream reset by client (cancel)", "client closed")


def terminal_state_for_error(msg: str, closed_by: ClosedBy | None = None) -> TerminalState:
    """Map mitmproxy's error text, and which side's connection had closed, to who ended the flow.

    Some texts name the side ("Client disconnected."); others do not: an HTTP/2 client that closes
    its connection and an upstream that does both read "peer closed connection". ``closed_by``
    ("client" / "server", from the connection states when the error fired) settles those.
    """
    low = msg.lower()
    if any(s in low for s in _CLIENT_GONE):
        return "client_disconnected"
    if "killed" in low:
        return "proxy_error"
    if closed_by == "client":
        return "client_disconnected"
    return "upstream_disconnected"


def cache_origin(rec: RequestRecord) -> CacheOrigin:
    """Who placed the markers. Never ``proxy`` unless the proxy inserted at least one."""
    u = rec.extract.usage
    if rec.markers_inserted > 0:
        return "proxy"
    if rec.client_markers > 0:
        return "client"
    if (u.cache_read_tokens or 0) > 0 or (u.cache_write_tokens or 0) > 0:
        return "unknown"
    return "none"


def rejected_unbilled(status_code: int | None, usage_source: str | None) -> bool:
    """A request the provider rejected (4xx) and that reported no usage: not billed, costs $0."""
    return status_code is not None and 400 <= status_code < 500 and (usage_source or "absent") == "absent"


def error_label(row: Mapping[str, Any]) -> str | None:
    """``429 rate_limit_error`` / ``stream_error overloaded_error`` / None for a completed row."""
    state = row.get("terminal_state")
    if state in (None, "completed"):
        return None
    status = row.get("status_code")
    error = row.get("error")
    parts = [str(status)] if status and status >= 400 else []
    if error and not (status and error == f"http_{status}"):
        parts.append(str(error))
    return " ".join(parts) or None


def cache_verdict(row: Mapping[str, Any]) -> CacheVerdict:
    """hit / write / miss / none, for console lines and ``tokenpak tail``."""
    if row.get("usage_source") == "absent":  # no usage reported: nothing to judge
        return "none"
    if row.get("input_tokens") is None and row.get("cache_read_tokens") is None:
        return "none"
    if (row.get("cache_read_tokens") or 0) > 0:
        return "hit"
    if (row.get("cache_write_tokens") or 0) > 0:
        return "write"
    return "miss" if (row.get("markers_inserted") or row.get("client_markers")) else "none"


class Outcome(NamedTuple):
    """How a request ended, as the row reports it (read before the row is built: the session
    tracker needs it)."""

    state: TerminalState
    source: UsageSource
    error: str | None
    model: str | None


def _delivered_in_full(rec: RequestRecord) -> bool:
    """A stream whose terminating event (``[DONE]``, ``message_stop``, ...) went through to the
    client, with no error in it: a client that closes then (the OpenAI SDK does, right after
    ``[DONE]``, before the body's last chunk) got the whole response."""
    x = rec.extract
    return rec.stream and x.terminal_seen and not x.stream_error and (rec.status_code or 0) < 400


def outcome(rec: RequestRecord) -> Outcome:
    x = rec.extract
    state: TerminalState
    if rec.terminal_override:
        state = rec.terminal_override
    elif rec.error_msg is not None:
        state = terminal_state_for_error(rec.error_msg, rec.closed_by)
        if state == "client_disconnected" and _delivered_in_full(rec):
            state = "completed"
    elif rec.status_code is not None and rec.status_code >= 400:
        state = "error_response"
    elif x.stream_error:
        state = "stream_error"
    elif rec.stream and rec.route.dialect == "anthropic" and not x.terminal_seen and not x.usage_final:
        state = "upstream_disconnected"  # the stream ended cleanly but before message_delta/message_stop
    else:
        state = "completed"
    error: str | None = None
    if state in ("error_response", "stream_error"):
        error = x.error_type or (f"http_{rec.status_code}" if rec.status_code else "error")
    elif rec.error_msg is not None and state != "completed":
        error = rec.error_msg
    elif rec.observe_note is not None:
        error = rec.observe_note
    elif state == "upstream_disconnected":
        error = "stream ended without message_delta or message_stop"
    source: UsageSource = x.usage_source
    if state in ("client_disconnected", "upstream_disconnected", "proxy_error", "proxy_shutdown") and source == "final" and not x.terminal_seen:
        source = "partial"
    return Outcome(state, source, error, x.model or rec.route.model_hint or rec.request_model)


def build_row(rec: RequestRecord, ended: Outcome | None = None, extra: Mapping[str, Any] | None = None) -> TelemetryRow:
    """The row for `rec`; `extra`: columns filled by others (the session tracker's)."""
    x = rec.extract
    state, source, error, model = ended if ended is not None else outcome(rec)
    usage = x.usage
    factors = PriceFactors(x.service_tier, x.speed or rec.request_speed, x.inference_geo or rec.request_inference_geo)
    cost = price(rec.route.provider, model, usage, factors, x.extras) if rec.route.billable else None
    # $0, not unknown: rejected without usage, or never reached the provider at all.
    unbilled = rec.route.billable and (rejected_unbilled(rec.status_code, source) or state == "upstream_unreachable")
    return TelemetryRow(
        request_key=rec.request_key,
        started_at=rec.started_at,
        provider=rec.route.provider,
        api=rec.route.api,
        route_class=rec.route_class,
        host=rec.host,
        path=rec.path,
        model=model,
        stream=int(rec.stream),
        billable=int(rec.route.billable),
        status_code=rec.status_code,
        terminal_state=state,
        stop_reason=x.stop_reason,
        input_tokens=usage.input_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cache_write_5m_tokens=usage.cache_write_5m_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        web_search_requests=usage.web_search_requests,
        input_audio_tokens=usage.input_audio_tokens,
        input_image_tokens=usage.input_image_tokens,
        input_video_tokens=usage.input_video_tokens,
        cache_read_audio_tokens=usage.cache_read_audio_tokens,
        cache_read_image_tokens=usage.cache_read_image_tokens,
        cache_read_video_tokens=usage.cache_read_video_tokens,
        extra_iterations=usage.extra_iterations,
        extra_input_tokens=usage.extra_input_tokens,
        extra_output_tokens=usage.extra_output_tokens,
        usage_source=source,
        ttfb_ms=rec.ttfb_ms,
        ttft_ms=rec.ttft_ms,
        duration_ms=rec.duration_ms,
        proxy_request_ms=rec.proxy_request_ms,
        frames=rec.frames,
        response_bytes=rec.response_bytes,
        response_id=x.response_id,
        upstream_request_id=rec.upstream_request_id,
        error=redact_text(error, rec.known_secrets),
        cache_origin=cache_origin(rec),
        markers_inserted=rec.markers_inserted,
        client_markers=rec.client_markers,
        cache_decision=rec.cache_decision,
        prefix_tokens_est=rec.prefix_tokens_est,
        cache_reasons=rec.cache_reasons,
        cost_usd=0.0 if unbilled else cost.cost_usd if cost else None,
        savings_usd=0.0 if unbilled else cost.savings_usd if cost else None,
        price_version="unbilled" if unbilled else cost.price_version if cost else None,
        service_tier=factors.service_tier,
        speed=factors.speed,
        inference_geo=factors.inference_geo,
        price_multiplier=cost.multiplier if cost else None,
        unpriced_reason=None if unbilled else cost.unpriced_reason if cost else None,
        conformance_violations=rec.conformance_violations,
        proxy_version=__version__,
        provider_miss_reason=x.provider_miss_reason,
        provider_missed_tokens=x.provider_missed_tokens,
        **(extra or {}),
    )
