"""OpenAI Responses API (``POST /v1/responses``): usage, ids and terminal state.

Rules (docs/dialects.md has the field-to-bucket table):

* Every event has an ``event:`` line equal to its JSON ``type`` and there is no ``[DONE]``; the
  terminal events ``response.completed``, ``response.incomplete`` and ``response.failed`` carry the
  whole Response object, whose ``usage`` is the final figure.
* ``usage.input_tokens`` INCLUDES ``input_tokens_details.cached_tokens`` and
  ``cache_write_tokens`` (subtracted for fresh input); ``output_tokens`` INCLUDES
  ``output_tokens_details.reasoning_tokens``.
* Errors: ``event: error`` comes in two shapes — recorded streams nest ``{"error": {...}}``, the
  SDK type is flat (``code``/``message``) — and is followed by ``response.failed`` whose
  ``response.error`` holds ``code``/``message``. Either marks ``stream_error``.
* ``stop_reason``: ``incomplete_details.reason`` (``max_output_tokens``, ``content_filter``) when
  present, else the Response ``status``; this API has no per-choice finish reason.
* ``prompt_cache_diagnostics`` on the Response (asked for with
  ``prompt_cache_options.comparison_response_id``; developers.openai.com guides/prompt-caching/diagnostics,
  GPT-5.6+): its ``type`` (``cache_miss``, ``cache_hit``, ``comparison_response_not_found``,
  ``unavailable``) or, for a miss, its ``reason`` -> ``provider_miss_reason``; ``cache_missed_tokens``
  -> ``provider_missed_tokens``.
* Hot path: ``*.delta`` events are content (TTFT) and never decoded; only created/terminal/error
  events are. The JSON ``type`` is authoritative when both exist (compatible servers may omit
  the ``event:`` line).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenpak_mitm.core.dialects.openai_chat import error_json, openai_error_type, session_hint
from tokenpak_mitm.core.dialects.replies import CREATED, Reply, split_text, sse_event
from tokenpak_mitm.core.dialects.spec import Dialect, Endpoint, PromptLayout, Renderer
from tokenpak_mitm.core.dialects.view import Assembled, ToolCall
from tokenpak_mitm.core.observe.sse import event_name
from tokenpak_mitm.core.observe.tracker import Extract, body_object, frame_json
from tokenpak_mitm.core.observe.usage import Usage, as_count

__all__ = ["DIALECT", "OpenAIResponsesTracker", "responses_usage"]

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_DECODE_EVENTS = _TERMINAL | {"response.created", "error"}
_TYPE_HINTS = tuple(f'"{name}"'.encode() for name in sorted(_DECODE_EVENTS))


class OpenAIResponsesTracker:
    __slots__ = ("extract",)

    def __init__(self) -> None:
        self.extract = Extract()

    # -- streaming ----------------------------------------------------------------------------
    def feed_frame(self, raw: bytes) -> bool:
        name = event_name(raw)
        if name is not None:
            if name.endswith(".delta"):
                self.extract.content_frames += 1
                return True
            if name not in _DECODE_EVENTS:
                return False
        elif not any(h in raw for h in _TYPE_HINTS):
            if b'.delta"' in raw:  # no event line: the type still names a delta
                self.extract.content_frames += 1
                return True
            return False
        obj = frame_json(raw)
        if isinstance(obj, dict):
            kind = obj.get("type")
            self._on_event(kind if isinstance(kind, str) else (name or ""), obj)
        return False

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        x = self.extract
        if kind == "error":
            x.stream_error = True
            nested = obj.get("error")
            self._on_error(nested if isinstance(nested, dict) else obj, overwrite=True)
            return
        response = obj.get("response")
        if not isinstance(response, dict):
            return
        if kind == "response.created":
            self.extract.note_identity(response)
        elif kind in _TERMINAL:
            self._on_response(response)
            x.terminal_seen = True
            if kind == "response.failed":
                x.stream_error = True
                if x.error_type is None:
                    x.error_type = "response_failed"

    # -- buffered -------------------------------------------------------------------------------
    def feed_body(self, body: bytes, status: int) -> None:
        obj = body_object(self, body)
        if obj is None:
            return
        x = self.extract
        err = obj.get("error")
        if status >= 400:
            self._on_error(err if isinstance(err, dict) else obj, overwrite=True)
            return
        self._on_response(obj)
        state = obj.get("status")
        if state == "failed" or (isinstance(err, dict) and state is None):
            x.stream_error = True
            if x.error_type is None:
                x.error_type = "response_failed"
        if state in ("completed", "incomplete", "failed", "cancelled") or (state is None and isinstance(obj.get("usage"), dict)):
            x.terminal_seen = True

    # -- shared ---------------------------------------------------------------------------------

    def _on_response(self, response: dict[str, Any]) -> None:
        """A whole Response object (terminal event or buffered body)."""
        x = self.extract
        self.extract.note_identity(response)
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        if isinstance(reason, str) and reason:
            x.stop_reason = reason
        elif isinstance(response.get("status"), str) and response["status"]:
            x.stop_reason = response["status"]
        usage = response.get("usage")
        if isinstance(usage, dict):
            x.usage = responses_usage(usage)
            x.usage_final = True
        if "prompt_cache_diagnostics" in response:
            x.provider_miss_reason, x.provider_missed_tokens = cache_diagnostics(response["prompt_cache_diagnostics"])
        err = response.get("error")
        if isinstance(err, dict):
            self._on_error(err, overwrite=False)

    def _on_error(self, err: dict[str, Any], *, overwrite: bool) -> None:
        """``overwrite=False`` keeps the more specific ``event: error`` seen before ``failed``."""
        x = self.extract
        if x.error_type is not None and x.error_type != "response_failed" and not overwrite:
            return
        x.error_type = openai_error_type(err)
        msg = err.get("message")
        x.error_message = msg if isinstance(msg, str) else x.error_message


_REASON_MAX = 64  # an unknown value is kept as sent, bounded


def cache_diagnostics(value: object) -> tuple[str | None, int | None]:
    """(reason, missed tokens) from a Response's ``prompt_cache_diagnostics``; never raises."""
    if not isinstance(value, dict):
        return None, None
    kind = value.get("type")
    if kind == "cache_miss":
        reason = value.get("reason")
        if isinstance(reason, dict):
            reason = reason.get("type")
        word = reason if isinstance(reason, str) and reason else "cache_miss"
        return word[:_REASON_MAX], as_count(value.get("cache_missed_tokens"))
    return (kind[:_REASON_MAX], None) if isinstance(kind, str) and kind else (None, None)


def responses_usage(usage: dict[str, Any]) -> Usage:
    """``ResponseUsage`` -> exclusive buckets (cached and written tokens leave the input)."""
    total_in = as_count(usage.get("input_tokens"))
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = as_count(details.get("cached_tokens"))
    written = as_count(details.get("cache_write_tokens"))
    out_details = usage.get("output_tokens_details")
    reasoning = as_count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else None
    return Usage(
        input_tokens=None if total_in is None else max(0, total_in - (cached or 0) - (written or 0)),
        cache_read_tokens=cached,
        cache_write_tokens=written,
        output_tokens=as_count(usage.get("output_tokens")),
        reasoning_tokens=reasoning,
    )


# -- mitmweb's view -------------------------------------------------------------------------------
def assemble(objs: Iterable[Any], out: Assembled) -> None:
    final: dict[str, Any] | None = None
    streamed = False
    for o in objs:
        if not isinstance(o, dict):
            continue
        kind = o.get("type")
        if kind == "response.output_text.delta":
            streamed = True
            out.text.append(str(o.get("delta") or ""))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            streamed = True
            out.thinking.append(str(o.get("delta") or ""))
        elif kind == "response.output_item.added" and (o.get("item") or {}).get("type") == "function_call":
            streamed = True
            out.call(o.get("output_index")).name = str(o["item"].get("name") or "")
        elif kind == "response.function_call_arguments.delta":
            streamed = True
            out.call(o.get("output_index")).arguments += str(o.get("delta") or "")
        elif kind in ("response.failed", "error"):
            err = (o.get("response") or {}).get("error") or o.get("error") or o
            out.errors.append(f"{err.get('code') or err.get('type')}: {err.get('message')}")
        elif kind is None and o.get("object") == "response":
            final = o
        elif isinstance(o.get("error"), dict) and kind is None:
            out.errors.append(f"{o['error'].get('type') or o['error'].get('code')}: {o['error'].get('message')}")
    if final is not None and not streamed:
        for item in final.get("output") or []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "message":
                for c in item.get("content") or []:
                    if isinstance(c, dict) and c.get("type") == "output_text":
                        out.text.append(str(c.get("text") or ""))
            elif item.get("type") == "function_call":
                out.tool_calls.append(ToolCall(str(item.get("name") or ""), str(item.get("arguments") or ""), item.get("call_id")))
            elif item.get("type") == "reasoning":
                for s in item.get("summary") or []:
                    if isinstance(s, dict):
                        out.thinking.append(str(s.get("text") or ""))


# -- as the simulated provider writes it ----------------------------------------------------------
def _message_item(r: Reply, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"id": f"msg_{r.id}", "type": "message", "status": status, "role": "assistant", "content": content}


def _render_json(r: Reply, *, status: str = "completed", with_output: bool = True) -> dict[str, Any]:
    body = {"id": r.id, "object": "response", "created_at": CREATED, "status": status, "model": r.model,
            "output": [_message_item(r, r.text, "completed")] if with_output else [],
            "usage": dict(r.usage) if status == "completed" else None}
    if r.diagnostics is not None and status == "completed":
        body["prompt_cache_diagnostics"] = dict(r.diagnostics)  # asked with prompt_cache_options.comparison_response_id
    return body


def _render_frames(r: Reply) -> list[bytes]:
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": _render_json(r, status="in_progress", with_output=False)}),
        ("response.output_item.added", {"output_index": 0, "item": _message_item(r, "", "in_progress")}),
        ("response.content_part.added", {"item_id": f"msg_{r.id}", "output_index": 0, "content_index": 0,
                                         "part": {"type": "output_text", "text": "", "annotations": []}}),
    ]
    events += [("response.output_text.delta", {"item_id": f"msg_{r.id}", "output_index": 0, "content_index": 0, "delta": piece})
               for piece in split_text(r.text, r.text_deltas)]
    events += [
        ("response.output_text.done", {"item_id": f"msg_{r.id}", "output_index": 0, "content_index": 0, "text": r.text}),
        ("response.output_item.done", {"output_index": 0, "item": _message_item(r, r.text, "completed")}),
        ("response.completed", {"response": _render_json(r)}),
    ]
    return [sse_event(name, {"type": name, "sequence_number": n, **body}) for n, (name, body) in enumerate(events)]


def _stream_error() -> bytes:
    return sse_event("error", {"type": "error", "sequence_number": 99, "error": {"type": "server_error", "code": "server_error", "message": "Overloaded", "param": None}})


DIALECT = Dialect(
    name="openai_responses",
    provider="openai",
    endpoints=(Endpoint("responses", suffix="/responses", inserts=True),),
    tracker=OpenAIResponsesTracker,
    layout=PromptLayout(items="input", system=("instructions",), string_items=True, output_parts=True),
    cache="openai",
    session_hint=session_hint,
    assemble=assemble,
    render=Renderer("resp", _render_json, _render_frames, error_json, _stream_error, first_delta=3),
)
