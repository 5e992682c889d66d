"""OpenAI Chat Completions (and compatible servers): usage, ids and terminal state.

Rules (docs/dialects.md has the field-to-bucket table):

* Streamed usage exists only when the client sent ``stream_options.include_usage``: one extra
  chunk with empty (or, on compatible servers, null/missing) ``choices`` just before
  ``data: [DONE]``. Without it the row says ``usage_source = absent`` with every token field
  None — never zeros, which would make the request look free.
* ``prompt_tokens`` INCLUDES ``prompt_tokens_details.cached_tokens`` and ``cache_write_tokens``;
  both are subtracted to get fresh input (adding them on top is the classic double count).
  DeepSeek-style servers report the cached part as ``prompt_cache_hit_tokens`` instead.
* ``completion_tokens`` INCLUDES ``completion_tokens_details.reasoning_tokens``, so output is
  ``completion_tokens`` as is and reasoning is only reported beside it.
* ``prompt_tokens_details.audio_tokens`` / ``image_tokens`` are the prompt's non-text parts; as
  genai-prices does, they are taken to be fresh input (the details do not split them by cache
  state) and clamped to it. The top-level ``service_tier`` the response reports is recorded.
* Usage on a chunk that still carries choices (servers streaming running totals) is kept but
  only counts as final once ``[DONE]`` confirms the stream finished.
* Hot path: plain delta chunks are classified with one byte regex; JSON is decoded only for the
  first chunk (model, id), chunks with a non-null ``usage``/``finish_reason``, and errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from tokenpak_mitm.core.dialects.identity import Headers, Hint, clean_id, hashed
from tokenpak_mitm.core.dialects.replies import CREATED, Reply, split_text, sse_data
from tokenpak_mitm.core.dialects.spec import Dialect, Endpoint, PromptLayout, Renderer
from tokenpak_mitm.core.dialects.view import Assembled
from tokenpak_mitm.core.observe.sse import event_name, parse_event
from tokenpak_mitm.core.observe.tracker import Extract, body_object, frame_json
from tokenpak_mitm.core.observe.usage import Usage, as_count

__all__ = ["DIALECT", "OpenAIChatTracker", "chat_usage", "error_json", "openai_error_type", "session_hint"]

# Key followed by a non-empty string, a non-empty tool-call list or an object. Escaped quotes
# inside string values (\") can never match the unescaped key pattern. The shared leading quote
# is factored out so the regex engine scans each frame about twice as fast.
_CONTENT = re.compile(
    rb'"(?:(?:content|refusal|reasoning_content|reasoning)"\s*:\s*"(?!")'
    rb'|tool_calls"\s*:\s*\[\s*\{'
    rb'|(?:function_call|audio)"\s*:\s*\{)'
)
_NEEDS_DECODE = re.compile(rb'"(?:usage"\s*:\s*\{|finish_reason"\s*:\s*"|error"\s*:\s*\{)')
_TEXT_KEYS = ("content", "refusal", "reasoning_content", "reasoning")


def openai_error_type(err: dict[str, Any]) -> str:
    """``code`` when it is a string (``rate_limit_exceeded`` says more than type ``tokens``),
    else ``type``, else the generic ``error``."""
    for key in ("code", "type"):
        value = err.get(key)
        if isinstance(value, str) and value:
            return value
    return "error"


class OpenAIChatTracker:
    __slots__ = ("extract", "_identified", "_usage_on_choices")

    def __init__(self) -> None:
        self.extract = Extract()
        self._identified = False  # a chunk has been decoded for model and id
        self._usage_on_choices = False  # usage seen on a chunk that still had choices

    # -- streaming ----------------------------------------------------------------------------
    def feed_frame(self, raw: bytes) -> bool:
        if b"data:" not in raw:
            return False  # comment / keep-alive / id-only frame
        x = self.extract
        is_error_event = raw.startswith(b"event:") and event_name(raw) == "error"
        if not is_error_event and b"[DONE]" in raw:
            ev = parse_event(raw)
            if ev is not None and ev.data.strip() == "[DONE]":
                self._on_done()
                return False
        if is_error_event or not self._identified or _NEEDS_DECODE.search(raw):
            return self._decoded(raw, is_error_event)
        if _CONTENT.search(raw):
            x.content_frames += 1
            return True
        return False

    def _decoded(self, raw: bytes, is_error_event: bool) -> bool:
        obj = frame_json(raw)
        if not isinstance(obj, dict):
            return False
        x = self.extract
        if is_error_event or isinstance(obj.get("error"), dict):
            x.stream_error = True
            err = obj.get("error")
            self._on_error(err if isinstance(err, dict) else obj)
            return False
        self.extract.note_identity(obj)
        self._identified = True
        content = False
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    content = self._on_choice(choice) or content
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._on_usage(usage)
            if isinstance(choices, list) and choices:
                self._usage_on_choices = True
                x.usage_final = False
            else:
                x.usage_final = True
        if content:
            x.content_frames += 1
        return content

    def _on_choice(self, choice: dict[str, Any]) -> bool:
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self.extract.stop_reason = reason
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return False
        if any(isinstance(delta.get(k), str) and delta[k] for k in _TEXT_KEYS):
            return True
        calls = delta.get("tool_calls")
        return (isinstance(calls, list) and bool(calls)) or isinstance(delta.get("function_call"), dict) or isinstance(delta.get("audio"), dict)

    def _on_done(self) -> None:
        x = self.extract
        x.terminal_seen = True
        if self._usage_on_choices and not x.usage.is_empty():
            x.usage_final = True  # running totals: the last one before [DONE] is the total

    # -- buffered -------------------------------------------------------------------------------
    def feed_body(self, body: bytes, status: int) -> None:
        obj = body_object(self, body)
        if obj is None:
            return
        x = self.extract
        err = obj.get("error")
        if status >= 400 or isinstance(err, dict):
            if status < 400:
                x.stream_error = True  # an error object inside a 2xx body is still a failure
            self._on_error(err if isinstance(err, dict) else obj)
            return
        self.extract.note_identity(obj)
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                    x.stop_reason = choice["finish_reason"]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self._on_usage(usage)
            x.usage_final = True
        x.terminal_seen = True

    # -- shared ---------------------------------------------------------------------------------

    def _on_usage(self, usage: dict[str, Any]) -> None:
        self.extract.usage = chat_usage(usage)

    def _on_error(self, err: dict[str, Any]) -> None:
        x = self.extract
        x.error_type = openai_error_type(err)
        msg = err.get("message")
        x.error_message = msg if isinstance(msg, str) else None


def chat_usage(usage: dict[str, Any]) -> Usage:
    """``CompletionUsage`` -> exclusive buckets (cached and written tokens leave the input)."""
    prompt = as_count(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = as_count(details.get("cached_tokens"))
    if cached is None:
        cached = as_count(usage.get("prompt_cache_hit_tokens"))  # DeepSeek: prompt = hit + miss
    written = as_count(details.get("cache_write_tokens"))
    out_details = usage.get("completion_tokens_details")
    reasoning = as_count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else None
    fresh = None if prompt is None else max(0, prompt - (cached or 0) - (written or 0))
    return Usage(
        input_tokens=fresh,
        cache_read_tokens=cached,
        cache_write_tokens=written,
        output_tokens=as_count(usage.get("completion_tokens")),
        reasoning_tokens=reasoning,
        input_audio_tokens=_part(details.get("audio_tokens"), fresh),
        input_image_tokens=_part(details.get("image_tokens"), fresh),
    )


def _part(value: object, whole: int | None) -> int | None:
    """A reported sub-count, clamped to the bucket it splits; 0 and absent both mean none."""
    count = as_count(value)
    if not count or whole is None:
        return None
    return min(count, whole)


# -- the session a request names (OpenAI) ---------------------------------------------------------
def session_hint(headers: Headers, request: Mapping[str, Any], project: str | None, credential: str) -> Hint | None:
    """``prompt_cache_key`` (the client's own cache/conversation key), ``conversation`` (a Responses
    conversation object), ``previous_response_id`` (the session of the response it continues;
    resolved by the tracker). ``user`` / ``safety_identifier`` name an end user, not a
    conversation: they only scope lineage inference (hashed: they can be e-mail addresses)."""
    key = clean_id(request.get("prompt_cache_key"))
    if key:
        return Hint(key, "prompt_cache_key", project, scope=credential)
    conv = request.get("conversation")
    conv_id = clean_id(conv.get("id") if isinstance(conv, dict) else conv)
    if conv_id:
        return Hint(conv_id, "conversation", project, scope=credential)
    prev = clean_id(request.get("previous_response_id"))
    user = hashed(request.get("safety_identifier") or request.get("user"))
    if prev:
        return Hint(None, None, project, previous_response_id=prev, scope=f"{credential}/{user}")
    return Hint(None, None, project, scope=f"{credential}/{user}" if user else credential)


# -- mitmweb's view -------------------------------------------------------------------------------
def assemble(objs: Iterable[Any], out: Assembled) -> None:
    for o in objs:
        if not isinstance(o, dict):
            continue
        if isinstance(o.get("error"), dict):
            out.errors.append(f"{o['error'].get('type') or o['error'].get('code')}: {o['error'].get('message')}")
        for choice in o.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            part = choice.get("delta") or choice.get("message") or {}
            if isinstance(part.get("content"), str):
                out.text.append(part["content"])
            if isinstance(part.get("reasoning_content"), str):
                out.thinking.append(part["reasoning_content"])
            for i, tc in enumerate(part.get("tool_calls") or []):
                if not isinstance(tc, dict):
                    continue
                fn = tc.get("function") or {}
                call = out.call(tc.get("index", i))
                call.name += str(fn.get("name") or "")
                call.arguments += str(fn.get("arguments") or "")


# -- as the simulated provider writes it ----------------------------------------------------------
def _finish_reason(r: Reply) -> str:
    return "length" if r.stop == "max_tokens" else "stop"


def _render_json(r: Reply) -> dict[str, Any]:
    return {"id": r.id, "object": "chat.completion", "created": CREATED, "model": r.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": _finish_reason(r)}],
            "usage": dict(r.usage)}


def _render_frames(r: Reply) -> list[bytes]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse_data({"id": r.id, "object": "chat.completion.chunk", "created": CREATED, "model": r.model, "choices": choices, **extra})

    frames = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    frames += [chunk([{"index": 0, "delta": {"content": piece}, "finish_reason": None}]) for piece in split_text(r.text, r.text_deltas)]
    frames.append(chunk([{"index": 0, "delta": {}, "finish_reason": _finish_reason(r)}]))
    if r.include_usage:
        frames.append(chunk([], usage=dict(r.usage)))
    return [*frames, sse_data("[DONE]")]


_OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
                       429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}


def error_json(status: int, message: str) -> dict[str, Any]:
    """An HTTP error body as OpenAI writes it."""
    return {"error": {"message": message, "type": _OPENAI_ERROR_TYPES.get(status, "server_error"), "param": None, "code": None}}


def _stream_error() -> bytes:
    return sse_data(error_json(503, "Overloaded"))


DIALECT = Dialect(
    name="openai_chat",
    provider="openai",
    endpoints=(Endpoint("chat.completions", suffix="/chat/completions", inserts=True),),
    tracker=OpenAIChatTracker,
    layout=PromptLayout(items="messages"),
    cache="openai",
    session_hint=session_hint,
    assemble=assemble,
    render=Renderer("chatcmpl", _render_json, _render_frames, error_json, _stream_error, first_delta=1),
)
