"""Anthropic Messages: usage, ids and terminal state from SSE frames or a JSON body.

Rules (docs/dialects.md has the field-to-bucket table):

* ``input_tokens`` already excludes cache reads and writes, so it maps to fresh input directly.
* ``message_start`` carries a full usage object; every ``message_delta`` carries *cumulative*
  figures that override it field by field when non-null (real streams grow input from 2685 to
  9911 this way). Usage counts as final once a ``message_delta`` with usage has arrived, even if
  ``message_stop`` never does.
* The 5m/1h write split only exists in ``message_start`` (``cache_creation``); when the final
  write total exceeds the split, the difference is 5m (server-tool breakpoints are always 5m).
* ``usage.iterations`` (compaction, advisor calls): each sampling step the request billed. The
  top-level figures are the ``message`` iteration(s) only ("top-level input_tokens/output_tokens
  reflect only the final message iteration"; compaction docs), so every iteration of another type
  is added to the buckets once, and ``message`` iterations are not (the top level already holds
  them). The list is cumulative like the rest of the usage: the last one seen replaces earlier
  ones. An advisor iteration names its own ``model`` and is priced at that model's rates.
* ``usage.service_tier`` / ``speed`` / ``inference_geo`` say how the request was billed (priority
  or batch tier, fast mode, a pinned region): recorded as the provider said them.
* ``diagnostics`` (cache diagnostics, on the message or on ``message_start``'s message): the
  provider's ``cache_miss_reason.type`` and ``cache_missed_input_tokens``; a ``null`` reason (or
  ``"diagnostics": null``) is ``none``: the first turn, nothing diverged, or the comparison was
  still running when the response was written (the docs: inconclusive). See ``provider_verdict``.
* JSON is decoded only for ``message_start``, ``message_delta``, ``message_stop`` and ``error``;
  deltas are recognised from their ``event:`` line without decoding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from tokenpak_mitm.core.dialects.identity import Headers, Hint, clean_id, hashed
from tokenpak_mitm.core.dialects.replies import Reply, split_text, sse_event
from tokenpak_mitm.core.dialects.spec import Dialect, Endpoint, PromptLayout, Renderer
from tokenpak_mitm.core.dialects.view import Assembled, ToolCall
from tokenpak_mitm.core.observe.sse import event_name
from tokenpak_mitm.core.observe.tracker import Extract, decode_json, frame_json
from tokenpak_mitm.core.observe.usage import ExtraIteration, Usage, as_count, with_extras

__all__ = [
    "ANTHROPIC_ERROR_TYPES", "CLAUDE_CODE_SESSION_HEADER", "DIALECT", "AnthropicTracker", "anthropic_block_start", "anthropic_block_stop",
    "anthropic_message_delta", "anthropic_message_start", "anthropic_message_stop", "anthropic_ping", "anthropic_text_delta",
    "PROVIDER_MISS_REASONS", "error_json", "provider_verdict", "session_hint",
]
# cache_miss_reason.type values the Claude API documents (build-with-claude/cache-diagnostics), and
# "none": diagnostics came back without a reason (first turn, no divergence, or still running).
PROVIDER_MISS_REASONS = ("model_changed", "system_changed", "tools_changed", "messages_changed",
                         "previous_message_not_found", "unavailable", "none")
_REASON_MAX = 64  # an unknown future type is kept as sent, bounded

_CONTENT_EVENTS = frozenset({"content_block_delta", "content_block_start"})
_DECODE_EVENTS = frozenset({"message_start", "message_delta", "message_stop", "error"})
_TYPE_HINTS = (b'"message_start"', b'"message_delta"', b'"message_stop"', b'"error"')
# event_name() of a frame starting with this line is "content_block_delta" (the line ends at the
# first LF and holds no CR), so the fast path in feed_frame cannot change what is counted.
_DELTA_LINE = b"event: content_block_delta\n"


class AnthropicTracker:
    __slots__ = ("extract", "_split_5m", "_split_1h", "_raw_usage", "_extras", "_extras_malformed")

    def __init__(self) -> None:
        self.extract = Extract()
        self._split_5m: int | None = None
        self._split_1h: int | None = None
        self._raw_usage: dict[str, Any] = {}
        self._extras: tuple[ExtraIteration, ...] = ()
        self._extras_malformed: frozenset[str] = frozenset()

    # -- streaming ----------------------------------------------------------------------------
    def feed_frame(self, raw: bytes) -> bool:
        if raw.startswith(_DELTA_LINE):  # most frames: one C call instead of decoding the name
            self.extract.content_frames += 1
            return True
        name = event_name(raw)
        if name is not None:
            if name in _CONTENT_EVENTS:
                self.extract.content_frames += 1
                return True
            if name not in _DECODE_EVENTS:
                return False
        elif not any(raw.find(h) >= 0 for h in _TYPE_HINTS):  # find(): see sse.py on `in`
            # No event line (some compatible servers): a content frame still names its type.
            if raw.find(b'"content_block_delta"') >= 0 or raw.find(b'"content_block_start"') >= 0:
                self.extract.content_frames += 1
                return True
            return False
        obj = frame_json(raw)
        if isinstance(obj, dict):
            self._on_event(obj, name)
        return False

    def _on_event(self, obj: dict[str, Any], event: str | None = None) -> None:
        # Some compatible upstreams name the kind only in the SSE `event:` line.
        kind = obj.get("type") if isinstance(obj.get("type"), str) else event
        x = self.extract
        if kind == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                # Arriving after a message_delta (a reordered stream), its placeholder figures
                # (output_tokens: 1) must not override the cumulative final ones.
                self._on_message(msg, override=not x.usage_final)
        elif kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                x.stop_reason = delta["stop_reason"]
            usage = obj.get("usage")
            if isinstance(usage, dict):
                self._merge_usage(usage)
                x.usage_final = True
        elif kind == "message_stop":
            x.terminal_seen = True
        elif kind == "error":
            x.stream_error = True
            self._on_error(obj)

    # -- buffered -------------------------------------------------------------------------------
    def feed_body(self, body: bytes, status: int) -> None:
        obj = decode_json(body)
        if not isinstance(obj, dict):
            return
        if status >= 400 or obj.get("type") == "error":
            self._on_error(obj)
            return
        self._on_message(obj)
        if "input_tokens" in obj and "usage" not in obj:  # /v1/messages/count_tokens
            return
        self.extract.terminal_seen = True
        if isinstance(obj.get("usage"), dict):
            self.extract.usage_final = True

    # -- shared ---------------------------------------------------------------------------------
    def _on_message(self, msg: dict[str, Any], override: bool = True) -> None:
        x = self.extract
        if isinstance(msg.get("id"), str):
            x.response_id = msg["id"]
        if isinstance(msg.get("model"), str):
            x.model = msg["model"]
        if isinstance(msg.get("stop_reason"), str):
            x.stop_reason = msg["stop_reason"]
        if "diagnostics" in msg:
            x.provider_miss_reason, x.provider_missed_tokens = provider_verdict(msg["diagnostics"])
        usage = msg.get("usage")
        if isinstance(usage, dict):
            split = usage.get("cache_creation")
            if isinstance(split, dict):
                self._split_5m = as_count(split.get("ephemeral_5m_input_tokens"))
                self._split_1h = as_count(split.get("ephemeral_1h_input_tokens"))
            self._merge_usage(usage, override)

    def _merge_usage(self, usage: dict[str, Any], override: bool = True) -> None:
        for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens"):
            value = as_count(usage.get(key))
            if value is not None and (override or key not in self._raw_usage):
                self._raw_usage[key] = value
        details = usage.get("output_tokens_details")
        if isinstance(details, dict) and as_count(details.get("thinking_tokens")) is not None:
            self._raw_usage["thinking_tokens"] = as_count(details.get("thinking_tokens"))
        stu = usage.get("server_tool_use")
        if isinstance(stu, dict) and as_count(stu.get("web_search_requests")) is not None:
            self._raw_usage["web_search_requests"] = as_count(stu.get("web_search_requests"))
        x = self.extract
        for key in ("service_tier", "speed", "inference_geo"):
            value = usage.get(key)
            if isinstance(value, str) and value:
                setattr(x, key, value.lower())
        iterations = usage.get("iterations")
        if isinstance(iterations, list):
            self._extras, self._extras_malformed = _extra_iterations(iterations)
            x.extras = self._extras
        x.usage = self._buckets()

    def _buckets(self) -> Usage:
        raw = self._raw_usage
        writes = raw.get("cache_creation_input_tokens")
        w5, w1 = self._split_5m, self._split_1h
        if writes is not None and (w5 is not None or w1 is not None):
            w1 = w1 or 0
            w5 = (w5 or 0) + max(0, writes - (w5 or 0) - w1)
        else:
            w5 = w1 = None
        top = Usage(
            input_tokens=raw.get("input_tokens"),
            cache_read_tokens=raw.get("cache_read_input_tokens"),
            cache_write_tokens=writes,
            cache_write_5m_tokens=w5,
            cache_write_1h_tokens=w1,
            output_tokens=raw.get("output_tokens"),
            reasoning_tokens=raw.get("thinking_tokens"),
            web_search_requests=raw.get("web_search_requests"),
        )
        total = with_extras(top, self._extras)
        for name in self._extras_malformed:  # an iteration sent a bad count: unknown, never short
            setattr(total, name, None)
        return total

    def _on_error(self, obj: dict[str, Any]) -> None:
        err = obj.get("error")
        x = self.extract
        if isinstance(err, dict):
            x.error_type = err.get("type") if isinstance(err.get("type"), str) else "error"
            msg = err.get("message")
            x.error_message = msg if isinstance(msg, str) else None
        else:
            x.error_type = "error"


def provider_verdict(diagnostics: object) -> tuple[str | None, int | None]:
    """(reason, missed input tokens) from a response's ``diagnostics`` value; never raises."""
    if diagnostics is None:
        return "none", None
    if not isinstance(diagnostics, dict):
        return None, None
    reason = diagnostics.get("cache_miss_reason")
    if reason is None:
        return "none", None
    if not isinstance(reason, dict):
        return None, None
    kind = reason.get("type")
    if not isinstance(kind, str) or not kind:
        return None, None
    return kind[:_REASON_MAX], as_count(reason.get("cache_missed_input_tokens"))


# iteration key -> bucket; absent keys count 0 (compaction entries often carry only in/out).
_ITERATION_KEYS = (
    ("input_tokens", "input_tokens"),
    ("cache_read_input_tokens", "cache_read_tokens"),
    ("cache_creation_input_tokens", "cache_write_tokens"),
    ("output_tokens", "output_tokens"),
)


def _extra_iterations(iterations: list[Any]) -> tuple[tuple[ExtraIteration, ...], frozenset[str]]:
    """The iterations billed outside the top-level usage, and the buckets a malformed one spoils.

    ``message`` iterations are what the top level reports; everything else (``compaction``,
    ``advisor_message``, future kinds) is extra. An entry without a string ``type`` is treated
    as a message (the top level covers it): counting it would risk counting it twice.
    """
    extras: list[ExtraIteration] = []
    malformed: set[str] = set()
    for it in iterations:
        if not isinstance(it, dict):
            continue
        kind = it.get("type")
        if not isinstance(kind, str) or not kind or kind == "message":
            continue
        counts: dict[str, int] = {}
        for key, bucket in _ITERATION_KEYS:
            if key in it and it[key] is not None:
                value = as_count(it[key])
                if value is None:
                    malformed.add(bucket)
                    if bucket == "cache_write_tokens":
                        malformed.update(("cache_write_5m_tokens", "cache_write_1h_tokens"))
                else:
                    counts[bucket] = value
        write = counts.get("cache_write_tokens", 0)
        split = it.get("cache_creation")
        w1 = as_count(split.get("ephemeral_1h_input_tokens")) if isinstance(split, dict) else None
        w1 = min(w1 or 0, write)
        model = it.get("model")
        extras.append(ExtraIteration(kind, model if isinstance(model, str) and model else None, Usage(
            input_tokens=counts.get("input_tokens", 0),
            cache_read_tokens=counts.get("cache_read_tokens", 0),
            cache_write_tokens=write,
            cache_write_5m_tokens=write - w1,
            cache_write_1h_tokens=w1,
            output_tokens=counts.get("output_tokens", 0),
        )))
    return tuple(extras), frozenset(malformed)


# -- the session a request names (Claude Code) ----------------------------------------------------
# Claude Code's own session id: the ``x-claude-code-session-id`` header (Claude Code 2.1.86+), else
# ``metadata.user_id`` — a JSON string with ``session_id`` (2.1.78+) or the older
# ``user_<hash>_account_<id>_session_<uuid>`` form (formats as handled by coder/aibridge PR #241 and
# ding113/claude-code-hub PR #939). Its project: the last component of the working directory its
# system prompt names (``<env> ... Working directory: /path/to/repo``), never the path.
CLAUDE_CODE_SESSION_HEADER = "x-claude-code-session-id"
_LEGACY_CC = re.compile(r"_session_([0-9A-Za-z-]{8,64})$")
_LEGACY_ACCOUNT = re.compile(r"_account_([0-9A-Za-z-]{1,64})_session_")


def _user_id_field(body: Mapping[str, Any], key: str, legacy: re.Pattern[str]) -> str | None:
    """One field of Claude Code's ``metadata.user_id``: a JSON object now, ``user_..._account_..._session_...`` before."""
    meta = body.get("metadata")
    user_id = meta.get("user_id") if isinstance(meta, dict) else None
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            parsed = json.loads(user_id)
        except ValueError:
            return None
        return clean_id(parsed.get(key)) if isinstance(parsed, dict) else None
    m = legacy.search(user_id)
    return clean_id(m.group(1)) if m else None


def _claude_code_account(body: Mapping[str, Any]) -> str | None:
    """The account id Claude Code's ``metadata.user_id`` carries (stable across OAuth token refreshes)."""
    return _user_id_field(body, "account_uuid", _LEGACY_ACCOUNT)


def _claude_code_session(headers: Headers, body: Mapping[str, Any]) -> str | None:
    return clean_id(headers.get(CLAUDE_CODE_SESSION_HEADER)) or _user_id_field(body, "session_id", _LEGACY_CC)


_WORKING_DIRECTORY = "Working directory: "


def _claude_code_project(system: object) -> str | None:
    """The name of the working directory Claude Code's system prompt names, if it names one."""
    texts = [system] if isinstance(system, str) else [b.get("text") for b in system if isinstance(b, dict)] if isinstance(system, list) else []
    for text in texts:
        if not isinstance(text, str):
            continue
        at = text.find(_WORKING_DIRECTORY)
        if at < 0 or "<env>" not in text[:at]:
            continue
        line = text[at + len(_WORKING_DIRECTORY):].split("\n", 1)[0].strip().rstrip("/\\")
        name = line.replace("\\", "/").rsplit("/", 1)[-1]
        return clean_id(name)
    return None


def session_hint(headers: Headers, request: Mapping[str, Any], project: str | None, credential: str) -> Hint | None:
    """Claude Code's session, scoped by its account when it names one (its OAuth token is refreshed
    every few hours; its account id is not, and the provider's cache belongs to the account)."""
    sid = _claude_code_session(headers, request)
    if not sid:
        return None
    account = _claude_code_account(request)
    scope = f"account:{hashed(account)}" if account else credential
    return Hint(sid, "claude-code", project or _claude_code_project(request.get("system")), scope=scope)


# -- mitmweb's view -------------------------------------------------------------------------------
def assemble(objs: Iterable[Any], out: Assembled) -> None:
    for o in objs:
        if not isinstance(o, dict):
            continue
        kind = o.get("type")
        if kind == "message":  # a whole (non-streamed) response
            _anthropic_blocks(o.get("content"), out)
        elif kind == "content_block_start":
            block = o.get("content_block") or {}
            if block.get("type") in ("tool_use", "server_tool_use"):
                call = out.call(o.get("index"))
                call.name = str(block.get("name") or "")
                if block.get("input"):
                    call.arguments = json.dumps(block["input"])
            elif block.get("type") == "text" and block.get("text"):
                out.text.append(str(block["text"]))
        elif kind == "content_block_delta":
            delta = o.get("delta") or {}
            dt = delta.get("type")
            if dt == "text_delta":
                out.text.append(str(delta.get("text") or ""))
            elif dt == "thinking_delta":
                out.thinking.append(str(delta.get("thinking") or ""))
            elif dt == "input_json_delta":
                out.call(o.get("index")).arguments += str(delta.get("partial_json") or "")
        elif kind == "error":
            err = o.get("error") or {}
            out.errors.append(f"{err.get('type')}: {err.get('message')}")


def _anthropic_blocks(blocks: Any, out: Assembled) -> None:
    for b in blocks if isinstance(blocks, list) else []:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "text":
            out.text.append(str(b.get("text") or ""))
        elif b.get("type") == "thinking":
            out.thinking.append(str(b.get("thinking") or ""))
        elif b.get("type") in ("tool_use", "server_tool_use"):
            out.tool_calls.append(ToolCall(str(b.get("name") or ""), json.dumps(b.get("input") or {}), b.get("id")))


# -- as the simulated provider writes it ----------------------------------------------------------
def anthropic_message_start(message_id: str, model: str, usage: Mapping[str, Any], diagnostics: Mapping[str, Any] | None = None) -> bytes:
    start: dict[str, Any] = {"id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": dict(usage)}
    if diagnostics is not None:
        start["diagnostics"] = dict(diagnostics)
    return sse_event("message_start", {"type": "message_start", "message": start})


def anthropic_block_start(index: int = 0) -> bytes:
    return sse_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})


def anthropic_ping() -> bytes:
    return sse_event("ping", {"type": "ping"})


def anthropic_text_delta(text: str, index: int = 0) -> bytes:
    return sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})


def anthropic_block_stop(index: int = 0) -> bytes:
    return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})


def anthropic_message_delta(stop: str, usage: Mapping[str, Any]) -> bytes:
    return sse_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": dict(usage)})


def anthropic_message_stop() -> bytes:
    return sse_event("message_stop", {"type": "message_stop"})


def _render_json(r: Reply) -> dict[str, Any]:
    content = [{"type": "text", "text": r.text}] if r.usage.get("output_tokens") else []
    body = {"id": r.id, "type": "message", "role": "assistant", "model": r.model, "content": content,
            "stop_reason": r.stop, "stop_sequence": None, "usage": dict(r.usage)}
    if r.diagnostics is not None:
        body["diagnostics"] = dict(r.diagnostics)
    return body


def _render_frames(r: Reply) -> list[bytes]:
    output = r.usage.get("output_tokens", 0)
    delta_usage: dict[str, Any] = {"output_tokens": output}
    if r.cumulative_delta_usage:  # newer streams repeat cumulative input/cache counts (§2.3), no 5m/1h split
        delta_usage = {key: r.usage[key] for key in
                       ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")}
    frames = [anthropic_message_start(r.id, r.model, {**r.usage, "output_tokens": min(1, output)}, r.diagnostics), anthropic_block_start(), anthropic_ping()]
    frames += [anthropic_text_delta(piece) for piece in split_text(r.text, r.text_deltas)]
    return [*frames, anthropic_block_stop(), anthropic_message_delta(r.stop, delta_usage), anthropic_message_stop()]


ANTHROPIC_ERROR_TYPES = {  # protocols.md §2.5
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 409: "conflict_error", 413: "request_too_large", 429: "rate_limit_error",
    500: "api_error", 504: "timeout_error", 529: "overloaded_error",
}


def error_json(status: int, message: str) -> dict[str, Any]:
    """An HTTP error body as Anthropic writes it (the ``request_id`` is the caller's to add)."""
    return {"type": "error", "error": {"type": ANTHROPIC_ERROR_TYPES.get(status, "api_error"), "message": message}}


def _stream_error() -> bytes:
    """What Anthropic sends when it fails mid-stream: an overloaded ``error`` event."""
    return sse_event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


DIALECT = Dialect(
    name="anthropic",
    provider="anthropic",
    endpoints=(Endpoint("messages", suffix="/v1/messages", inserts=True),
               Endpoint("messages.count_tokens", suffix="/v1/messages/count_tokens", billable=False)),
    tracker=AnthropicTracker,
    layout=PromptLayout(items="messages", system=("system",)),
    cache="anthropic",
    session_hint=session_hint,
    assemble=assemble,
    render=Renderer("msg", _render_json, _render_frames, error_json, _stream_error, first_delta=3, request_id_in_errors=True),
)
