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

from typing import Any

from tokenpak_mitm.core.observe.sse import event_name
from tokenpak_mitm.core.observe.tracker import Extract, decode_json, frame_json
from tokenpak_mitm.core.observe.usage import ExtraIteration, Usage, as_count, with_extras

__all__ = ["AnthropicTracker", "PROVIDER_MISS_REASONS", "provider_verdict"]

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
