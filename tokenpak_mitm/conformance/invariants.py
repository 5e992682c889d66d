"""The ten conformance invariants as pure functions: evidence in, violations out.

Every checker takes one :class:`Evidence` (what the client sent and got, what the upstream got
and sent, what the proxy reported from inside, which rows it wrote) and returns a list of
:class:`Violation` — empty when it holds — or ``None`` when the evidence does not exercise it
(no stream, no error, no rows…). Evidence comes from a replay (``replay.py``), from a recorded
flow file alone (``flowfile.py``) or from a hand-built test case; the checkers never care which.
The statements are in ``docs/conformance.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenpak_mitm.conformance import facts
from tokenpak_mitm.conformance.wire import count_cache_markers, decode_body, header_get, remove_inserted, split_frames
from tokenpak_mitm.core.secret_scan import DEFAULT_CANARIES, scan_bytes

__all__ = ["Violation", "Evidence", "INVARIANTS", "check_all", "expected_terminal_state"] + [f"check_i{n}" for n in range(1, 11)]

Outcome = list["Violation"] | None  # None: not applicable to this evidence


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    message: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.message}"


@dataclass
class Evidence:
    """Everything known about one request. Unknown parts stay None (their checks become n.a.)."""

    dialect: str | None = None  # anthropic | openai_chat | openai_responses | gemini
    # request: what the client sent, what reached the upstream, what the proxy says it inserted
    client_request_headers: list[tuple[str, str]] | None = None
    client_request_body: bytes | None = None
    sent_request_headers: list[tuple[str, str]] | None = None
    sent_request_body: bytes | None = None
    spans: list[tuple[int, bytes]] | None = None  # offsets into the (decoded) client body
    header_changes: Mapping[str, str] = field(default_factory=dict)  # request headers the proxy says it set (lower-case name -> value sent)
    expected_host: str | None = None  # reverse mode: mitmproxy rewrites Host to the upstream authority
    # response: what the upstream sent, what the client received
    status_code: int | None = None
    upstream_response_headers: list[tuple[str, str]] | None = None
    upstream_response_body: bytes | None = None  # wire bytes (content-encoding kept, chunking removed)
    client_response_headers: list[tuple[str, str]] | None = None
    client_response_body: bytes | None = None
    path: str = "completed"  # how the exchange ended: completed | client_disconnected | upstream_disconnected | proxy_error
    # from inside the proxy
    observed_frames: list[bytes] | None = None  # frames the tap reported to its sinks, in call order
    rows: list[Mapping[str, Any]] | None = None  # every telemetry row written for this request
    timeline: list[str] | None = None  # "frame" / "terminal" / "row", in the order the proxy did them
    # at rest: everything we wrote (db, spill, flow files, log lines, traces) and the canaries used
    artifacts: dict[str, bytes] = field(default_factory=dict)
    canaries: Sequence[bytes] = DEFAULT_CANARIES

    # -- derived views ---------------------------------------------------------------------------
    @property
    def row(self) -> Mapping[str, Any] | None:
        return self.rows[0] if self.rows else None

    @property
    def request_encoding(self) -> str | None:
        return header_get(self.sent_request_headers or self.client_request_headers, "content-encoding")

    @property
    def response_encoding(self) -> str | None:
        return header_get(self.upstream_response_headers, "content-encoding")

    @property
    def is_sse(self) -> bool:
        ctype = header_get(self.upstream_response_headers, "content-type") or ""
        return "text/event-stream" in ctype.lower() and (self.status_code or 200) < 400

    def upstream_frames(self) -> list[bytes]:
        """Complete frames of what the upstream sent (decoded)."""
        if self.upstream_response_body is None:
            return []
        plain = decode_body(self.upstream_response_body, self.response_encoding)
        return split_frames(plain, final=self.path == "completed")[0]

    def client_frames(self) -> list[bytes]:
        if self.client_response_body is None:
            return []
        plain = decode_body(self.client_response_body, header_get(self.client_response_headers, "content-encoding"))
        return split_frames(plain, final=self.path == "completed")[0]


def _delivered_in_full(ev: Evidence) -> bool:
    """A 2xx stream whose end-of-response event reached the client, with no error in it."""
    if not (ev.dialect and ev.is_sse) or (ev.status_code or 0) >= 400:
        return False
    frames = ev.client_frames()
    return facts.stream_terminated(ev.dialect, frames) and not facts.stream_errors(ev.dialect, frames)


def expected_terminal_state(ev: Evidence) -> str:
    """The row's terminal_state that this exchange calls for."""
    if ev.path == "client_disconnected" and _delivered_in_full(ev):
        return "completed"  # the client closed after the terminating event (the OpenAI SDK does)
    if ev.path in ("client_disconnected", "upstream_disconnected", "proxy_error"):
        return ev.path
    if (ev.status_code or 0) >= 400:
        return "error_response"
    if ev.dialect and ev.is_sse and facts.stream_errors(ev.dialect, ev.upstream_frames()):
        return "stream_error"
    return "completed"


def _first_difference(a: bytes, b: bytes) -> str:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first difference at byte {n}: expected {a[max(0, n - 12):n + 12]!r}, got {b[max(0, n - 12):n + 12]!r} (lengths {len(a)} vs {len(b)})"


# -- I1 request byte-identity --------------------------------------------------------------------
def check_i1(ev: Evidence) -> Outcome:
    client, sent = ev.client_request_body, ev.sent_request_body
    if client is None or sent is None:
        return None
    out: list[Violation] = []
    spans = ev.spans or []
    if not spans:
        if sent != client:
            out.append(Violation("I1", "no marker inserted, yet the upstream did not get the client's exact bytes; " + _first_difference(client, sent)))
    else:
        enc = ev.request_encoding
        try:
            plain_client, plain_sent = decode_body(client, enc), decode_body(sent, enc)
            restored = remove_inserted(plain_sent, spans)
        except ValueError as e:
            return [Violation("I1", f"cannot undo the insertion: {e}")]
        if restored != plain_client:
            out.append(Violation("I1", "upstream bytes minus the inserted spans differ from the client's bytes; " + _first_difference(plain_client, restored)))
    row = ev.row
    if row is not None and (row.get("markers_inserted") or 0) > 0 and not spans:
        out.append(Violation("I1", f"the row claims {row.get('markers_inserted')} inserted markers but no inserted span was reported"))
    return out


# -- I2 cache-attribution causality --------------------------------------------------------------
def _markers_in(body: bytes | None, encoding: str | None) -> int | None:
    if body is None:
        return None
    try:
        return len(count_cache_markers(json.loads(decode_body(body, encoding))))
    except (ValueError, RecursionError):
        return None


def check_i2(ev: Evidence) -> Outcome:
    row = ev.row
    if row is None:
        return None
    out: list[Violation] = []
    inserted = int(row.get("markers_inserted") or 0)
    client = int(row.get("client_markers") or 0)
    origin = row.get("cache_origin")
    if inserted == 0 and origin == "proxy":
        out.append(Violation("I2", "cache_origin is 'proxy' although the proxy inserted no marker"))
    if inserted > 0 and origin not in ("proxy", "mixed"):
        out.append(Violation("I2", f"the proxy inserted {inserted} marker(s) but cache_origin is {origin!r}"))
    if inserted == 0 and client > 0 and origin != "client":
        out.append(Violation("I2", f"only the client placed markers ({client}) but cache_origin is {origin!r}"))
    if inserted == 0 and client == 0:
        cached = (row.get("cache_read_tokens") or 0) > 0 or (row.get("cache_write_tokens") or 0) > 0
        allowed = ("unknown", "none") if cached else ("none",)
        if origin not in allowed:
            out.append(Violation("I2", f"nobody placed a marker but cache_origin is {origin!r} (allowed: {', '.join(allowed)})"))
    if ev.dialect == "anthropic":
        in_client = _markers_in(ev.client_request_body, ev.request_encoding)
        in_sent = _markers_in(ev.sent_request_body, ev.request_encoding)
        if in_client is not None and in_client != client:
            out.append(Violation("I2", f"the client's body carries {in_client} marker(s) but the row says client_markers={client}"))
        if in_client is not None and in_sent is not None and in_sent - in_client != inserted:
            out.append(Violation("I2", f"the sent body carries {in_sent - in_client} more marker(s) than the client's, but the row says markers_inserted={inserted}"))
    return out


# -- I3 marker validity --------------------------------------------------------------------------
def _marker_problems(request: Any) -> dict[str, str]:
    """Rule -> description of how the request breaks it."""
    found = count_cache_markers(request)
    problems: dict[str, str] = {}
    if len(found) > 4:
        problems["count"] = f"{len(found)} cache markers (the API allows 4)"
    seen_5m = False
    for where, ttl, _ in found:
        if ttl == "5m":
            seen_5m = True
        elif ttl == "1h" and seen_5m:
            problems["ttl-order"] = f"a 1h marker ({where}) comes after a 5m marker"
            break
    for where, _, block in found:
        if block.get("type") in ("thinking", "redacted_thinking"):
            problems["thinking"] = f"a cache marker sits on a {block.get('type')} block ({where})"
            break
    return problems


def check_i3(ev: Evidence) -> Outcome:
    if ev.dialect != "anthropic" or ev.sent_request_body is None:
        return None
    try:
        sent = json.loads(decode_body(ev.sent_request_body, ev.request_encoding))
    except (ValueError, RecursionError):
        return None
    client_problems: dict[str, str] = {}
    if ev.client_request_body is not None:
        try:
            client_problems = _marker_problems(json.loads(decode_body(ev.client_request_body, ev.request_encoding)))
        except (ValueError, RecursionError):
            pass
    # A rule the client's own request already broke is the client's doing, not the proxy's.
    return [Violation("I3", text) for rule, text in _marker_problems(sent).items() if rule not in client_problems]


# -- I4 no secrets at rest -----------------------------------------------------------------------
def check_i4(ev: Evidence) -> Outcome:
    if not ev.artifacts:
        return None
    out: list[Violation] = []
    for name, data in ev.artifacts.items():
        out += [Violation("I4", str(leak)) for leak in scan_bytes(data, name, ev.canaries)]
    return out


# -- I5 header preservation ----------------------------------------------------------------------
_REWRITTEN = ("host", "content-length")
_REMOVED = ("x-tokenpak-session", "x-tokenpak-project")  # the proxy's own headers: taken out, never sent on


def check_i5(ev: Evidence) -> Outcome:
    out: list[Violation] = []
    applicable = False
    if ev.client_request_headers is not None and ev.sent_request_headers is not None:
        applicable = True
        changed = tuple(ev.header_changes)  # e.g. the cache-diagnostics beta header (tokenpak_cache_diagnostics)
        keep = [(k, v) for k, v in ev.client_request_headers if k.lower() not in _REWRITTEN + _REMOVED + changed]
        leaked = [k for k, _ in ev.sent_request_headers if k.lower() in _REMOVED]
        if leaked:
            out.append(Violation("I5", f"the proxy's own header {leaked[0]} reached the upstream"))
        got = [(k, v) for k, v in ev.sent_request_headers if k.lower() not in _REWRITTEN + changed]
        for name, value in ev.header_changes.items():
            if header_get(ev.sent_request_headers, name) != value:
                out.append(Violation("I5", f"the proxy says it set {name}: {value!r}, but the upstream got {header_get(ev.sent_request_headers, name)!r}"))
        if keep != got:
            out.append(Violation("I5", f"request headers changed on the way upstream: client sent {_header_diff(keep, got)}"))
        host_sent = header_get(ev.sent_request_headers, "host")
        host_expected = ev.expected_host or header_get(ev.client_request_headers, "host")
        if host_expected is not None and host_sent != host_expected:
            out.append(Violation("I5", f"Host reached the upstream as {host_sent!r}, expected {host_expected!r}"))
        cl_sent = header_get(ev.sent_request_headers, "content-length")
        if cl_sent is not None and ev.sent_request_body is not None and cl_sent != str(len(ev.sent_request_body)):
            out.append(Violation("I5", f"Content-Length {cl_sent} does not match the {len(ev.sent_request_body)}-byte body sent upstream"))
        if not ev.spans and cl_sent != header_get(ev.client_request_headers, "content-length"):
            out.append(Violation("I5", "Content-Length changed although the body was not spliced"))
    if ev.upstream_response_headers is not None and ev.client_response_headers is not None:
        applicable = True
        if ev.upstream_response_headers != ev.client_response_headers:
            out.append(Violation("I5", f"response headers changed on the way to the client: upstream sent {_header_diff(ev.upstream_response_headers, ev.client_response_headers)}"))
    return out if applicable else None


def _header_diff(want: list[tuple[str, str]], got: list[tuple[str, str]]) -> str:
    missing = [h for h in want if h not in got]
    extra = [h for h in got if h not in want]
    if not missing and not extra:
        return f"the same headers in a different order ({[k for k, _ in want]} vs {[k for k, _ in got]})"
    return f"{missing or 'nothing'} that did not arrive; arrived {extra or 'nothing'} that was not sent"


# -- I6 SSE frame ordering -----------------------------------------------------------------------
def _frame_mismatch(want: list[bytes], got: list[bytes], want_name: str, got_name: str) -> str | None:
    for i, frame in enumerate(got):
        if i >= len(want):
            return f"{got_name} has {len(got) - len(want)} frame(s) beyond the {len(want)} of {want_name} (synthesized or duplicated): {frame[:60]!r}"
        if frame == want[i]:
            continue
        if i > 0 and frame == got[i - 1]:
            return f"frame #{i} reported twice: {frame[:60]!r}"
        if frame in want[i + 1:]:
            return f"frame #{i} of {want_name} missing (dropped or reordered): {want[i][:60]!r}"
        if frame in want[:i]:
            return f"frame #{i} out of order (seen earlier in {want_name}): {frame[:60]!r}"
        return f"frame #{i} differs (changed or synthesized): {want_name} {want[i][:60]!r} vs {got_name} {frame[:60]!r}"
    return None


def check_i6(ev: Evidence) -> Outcome:
    if not ev.is_sse or ev.observed_frames is None or ev.upstream_response_body is None:
        return None
    out: list[Violation] = []
    observed = ev.observed_frames
    for i, frame in enumerate(observed):
        frames, rest = split_frames(frame)
        if len(frames) != 1 or rest:
            out.append(Violation("I6", f"reported frame #{i} is not exactly one complete frame: {frame[:60]!r}"))
    upstream = ev.upstream_frames()
    if ev.path == "completed":
        problem = _frame_mismatch(upstream, observed, "the upstream stream", "the observer") or (
            f"the observer saw {len(observed)} of {len(upstream)} frames" if len(observed) < len(upstream) else None
        )
    else:  # the stream was cut: what was reported is a prefix of what was sent
        problem = _frame_mismatch(upstream, observed, "the upstream stream", "the observer")
    if problem:
        out.append(Violation("I6", problem))
    if ev.client_response_body is not None:
        client = ev.client_frames()
        if ev.path == "completed" and client != observed:
            out.append(Violation("I6", _frame_mismatch(client, observed, "the client's frames", "the observer") or f"the client got {len(client)} frames, the observer reported {len(observed)}"))
        elif ev.path != "completed":
            problem = _frame_mismatch(observed, client, "the observer", "the client's frames")
            if problem:
                out.append(Violation("I6", "the client got a frame the observer did not report: " + problem))
    return out


# -- I7 streaming cache attribution --------------------------------------------------------------
def check_i7(ev: Evidence) -> Outcome:
    row = ev.row
    if not ev.is_sse or row is None or ev.dialect is None or ev.upstream_response_body is None:
        return None
    frames = ev.observed_frames if ev.observed_frames is not None else ev.upstream_frames()
    totals = facts.stream_cache_totals(ev.dialect, frames)
    if totals is None:
        return None
    out: list[Violation] = []
    for column, value in (("cache_read_tokens", totals.cache_read), ("cache_write_tokens", totals.cache_write), ("input_tokens", totals.input)):
        if value is not None and row.get(column) != value:
            out.append(Violation("I7", f"the stream's final {column} is {value} (message_delta overrides message_start), the row says {row.get(column)}"))
    cached = (totals.cache_read or 0) > 0 or (totals.cache_write or 0) > 0
    if cached and row.get("cache_origin") in (None, "none"):
        out.append(Violation("I7", f"the stream reports cache activity but cache_origin is {row.get('cache_origin')!r}"))
    return out


# -- I8 streaming response byte-identity ---------------------------------------------------------
def check_i8(ev: Evidence) -> Outcome:
    up, got = ev.upstream_response_body, ev.client_response_body
    if up is None or got is None:
        return None
    out: list[Violation] = []
    enc_up = header_get(ev.upstream_response_headers, "content-encoding")
    enc_got = header_get(ev.client_response_headers, "content-encoding")
    if ev.client_response_headers is not None and enc_up != enc_got:
        out.append(Violation("I8", f"content-encoding changed: upstream {enc_up!r}, client {enc_got!r}"))
    if ev.path == "completed":
        if got != up:
            out.append(Violation("I8", "the client did not receive the upstream's exact bytes; " + _first_difference(up, got)))
    elif not up.startswith(got):
        out.append(Violation("I8", "the client received bytes the upstream never sent (not a prefix); " + _first_difference(up, got)))
    return out


# -- I9 error-frame shape ------------------------------------------------------------------------
def _shape_problems(dialect: str, obj: Any) -> list[str]:
    try:
        from tokenpak_mitm.conformance.error_shapes import check_error_shape
    except ImportError:  # schemas not installed: only the mapping is checked
        return []
    if dialect == "openai_responses" and isinstance(obj, dict) and obj.get("type") == "response.failed":
        return []  # a Response object, not an error payload
    try:
        return list(check_error_shape(dialect, obj))
    except ValueError as e:
        return [str(e)]


def check_i9(ev: Evidence) -> Outcome:
    if ev.dialect is None:
        return None
    row = ev.row
    errors: list[Any] = []
    if (ev.status_code or 0) >= 400:
        if ev.upstream_response_body is None:
            return None
        try:
            body = decode_body(ev.upstream_response_body, ev.response_encoding)
        except Exception:
            body = ev.upstream_response_body
        obj = facts.body_error(body)
        errors = [obj] if obj is not None else []
        want_state = "error_response"
        if obj is None:  # a non-JSON error page (a gateway's HTML): only the mapping applies
            return [] if row is None or ev.path != "completed" or row.get("terminal_state") == want_state else [
                Violation("I9", f"HTTP {ev.status_code} maps to terminal_state {row.get('terminal_state')!r}, expected {want_state!r}")
            ]
    elif ev.is_sse:
        errors = facts.stream_errors(ev.dialect, ev.upstream_frames())
        want_state = "stream_error"
    if not errors:
        return None
    out = [Violation("I9", f"error object does not match the {ev.dialect} schema: {p}") for obj in errors for p in _shape_problems(ev.dialect, obj)]
    if row is not None and ev.path == "completed":
        if row.get("terminal_state") != want_state:
            out.append(Violation("I9", f"an error from the provider maps to terminal_state {row.get('terminal_state')!r}, expected {want_state!r}"))
        want_type = facts.error_type(ev.dialect, errors[0])
        if want_type is not None and row.get("error") != want_type:
            out.append(Violation("I9", f"the row's error is {row.get('error')!r}, the provider said {want_type!r}"))
    return out


# -- I10 telemetry completeness ------------------------------------------------------------------
def check_i10(ev: Evidence) -> Outcome:
    if ev.rows is None:
        return None
    out: list[Violation] = []
    if len(ev.rows) != 1:
        out.append(Violation("I10", f"{len(ev.rows)} telemetry rows for one request (expected exactly 1)"))
    want = expected_terminal_state(ev)
    for row in ev.rows[:1]:
        if row.get("terminal_state") != want:
            out.append(Violation("I10", f"terminal_state is {row.get('terminal_state')!r}, this exchange ({ev.path}) calls for {want!r}"))
    if ev.timeline is not None:
        rows_at = [i for i, kind in enumerate(ev.timeline) if kind == "row"]
        if len(rows_at) != 1:
            out.append(Violation("I10", f"the proxy emitted {len(rows_at)} rows for this request"))
        if rows_at:
            first_row = rows_at[0]
            late = [kind for kind in ev.timeline[first_row + 1:] if kind in ("frame", "terminal")]
            if late:
                out.append(Violation("I10", f"the row was emitted before the terminal event ({', '.join(late)} came after it)"))
            if "terminal" not in ev.timeline[:first_row]:
                out.append(Violation("I10", "the row was emitted without a terminal event (response/error) before it"))
    return out


INVARIANTS: dict[str, tuple[str, Callable[[Evidence], Outcome]]] = {
    "I1": ("request byte-identity", check_i1),
    "I2": ("cache-attribution causality", check_i2),
    "I3": ("marker validity", check_i3),
    "I4": ("no secrets at rest", check_i4),
    "I5": ("header preservation", check_i5),
    "I6": ("SSE frame ordering", check_i6),
    "I7": ("streaming cache attribution", check_i7),
    "I8": ("response byte-identity", check_i8),
    "I9": ("error-frame shape", check_i9),
    "I10": ("telemetry completeness", check_i10),
}


def check_all(ev: Evidence) -> dict[str, Outcome]:
    """Run every invariant; a checker that crashes is reported as its own violation."""
    results: dict[str, Outcome] = {}
    for name, (_, checker) in INVARIANTS.items():
        try:
            results[name] = checker(ev)
        except Exception as e:  # a malformed recording must not hide the other results
            results[name] = [Violation(name, f"checker crashed: {type(e).__name__}: {e}")]
    return results
