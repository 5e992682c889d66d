"""Gemini ``generateContent`` / ``streamGenerateContent`` (SSE or JSON array): usage and state.

Rules (docs/dialects.md has the field-to-bucket table):

* ``usageMetadata`` repeats on chunks with running totals, so the LAST one replaces all earlier
  ones (never summed). Fields are proto3 JSON: an absent count means 0.
* ``promptTokenCount`` INCLUDES ``cachedContentTokenCount`` -> fresh input = prompt - cached.
* ``toolUsePromptTokenCount`` (results of Google-run tools such as search or code execution fed
  back to the model) is NOT part of ``promptTokenCount`` (recorded totals are prompt +
  candidates + thoughts + tool-use) and is billed as input, so it is added to fresh input and
  priced at the model's input rate.
* ``candidatesTokenCount`` EXCLUDES ``thoughtsTokenCount`` -> output = candidates + thoughts,
  reasoning = thoughts (thoughts are billed as output).
* Prompt modalities: ``promptTokensDetails`` splits the whole prompt (cached included) by
  modality, ``cacheTokensDetails`` the cached part, ``toolUsePromptTokensDetails`` the tool-use
  part; fresh audio = prompt audio - cached audio + tool-use audio (clamped to fresh input).
  ``DOCUMENT`` counts as image, as genai-prices' own Gemini extractor maps it. Audio is priced
  at its own rate on most models.
* ``serviceTier`` (when sent) is recorded lower-cased, without a ``service_tier_`` prefix.
* There is no terminal event: a chunk with a ``finishReason`` (or a ``promptFeedback``
  ``blockReason``) ends generation. Usage is final when it came with or after that chunk.
* The model comes from the URL (the route's ``model_hint``); ``modelVersion`` refines it.
* Without ``alt=sse`` the stream is a JSON array; the tap hands over the whole body, which may be
  cut short when the connection broke — every complete element still counts.
* Hot path: SSE frames are decoded only when they carry usage, a finish reason or an error (or
  before the model is known); otherwise one byte regex decides whether they carry content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from tokenpak_mitm.core.dialects.replies import Reply, split_text, sse_data
from tokenpak_mitm.core.dialects.spec import Dialect, Endpoint, PromptLayout, Renderer
from tokenpak_mitm.core.dialects.view import Assembled, ToolCall
from tokenpak_mitm.core.observe.tracker import Extract, decode_json, feed_sse_body, frame_json, looks_like_sse
from tokenpak_mitm.core.observe.usage import Usage, as_count

__all__ = ["DIALECT", "GeminiTracker", "error_json", "gemini_usage", "iter_array_elements"]

_NEEDS_DECODE = re.compile(rb'"(?:usageMetadata|finishReason|blockReason|error)"')
_CONTENT = re.compile(
    rb'"(?:text"\s*:\s*"(?!")'
    rb'|(?:functionCall|inlineData|fileData|executableCode|codeExecutionResult)"\s*:)'
)
_CONTENT_PARTS = ("functionCall", "inlineData", "fileData", "executableCode", "codeExecutionResult")
_DECODER = json.JSONDecoder()


class GeminiTracker:
    __slots__ = ("extract", "_identified", "_finished")

    def __init__(self) -> None:
        self.extract = Extract()
        self._identified = False
        self._finished = False  # a finishReason / blockReason has been seen

    # -- streaming ----------------------------------------------------------------------------
    def feed_frame(self, raw: bytes) -> bool:
        if b"data:" not in raw:
            return False
        if self._identified and not _NEEDS_DECODE.search(raw):
            if _CONTENT.search(raw):
                self.extract.content_frames += 1
                return True
            return False
        return self._on_chunk(frame_json(raw))

    # -- buffered -------------------------------------------------------------------------------
    def feed_body(self, body: bytes, status: int) -> None:
        if looks_like_sse(body):
            feed_sse_body(self, body)
            return
        if body.lstrip()[:1] == b"[":
            elements = iter_array_elements(body)
        else:
            obj = decode_json(body)
            elements = [obj] if obj is not None else []
        for obj in elements:
            if status >= 400:
                err = obj.get("error") if isinstance(obj, dict) else None
                self._on_error(err if isinstance(err, dict) else {})
                return
            self._on_chunk(obj)

    # -- shared ---------------------------------------------------------------------------------
    def _on_chunk(self, obj: Any) -> bool:
        """One ``GenerateContentResponse``; True when it carries generated content."""
        if not isinstance(obj, dict):
            return False
        x = self.extract
        err = obj.get("error")
        if isinstance(err, dict):
            x.stream_error = True
            self._on_error(err)
            return False
        self._identified = True
        if isinstance(obj.get("modelVersion"), str) and obj["modelVersion"]:
            x.model = obj["modelVersion"]
        if isinstance(obj.get("responseId"), str) and obj["responseId"]:
            x.response_id = obj["responseId"]
        content = False
        candidates = obj.get("candidates")
        if isinstance(candidates, list):
            for cand in candidates:
                if isinstance(cand, dict):
                    content = self._on_candidate(cand) or content
        feedback = obj.get("promptFeedback")
        if isinstance(feedback, dict) and isinstance(feedback.get("blockReason"), str):
            x.stop_reason = feedback["blockReason"]
            self._finish()
        meta = obj.get("usageMetadata")
        if isinstance(meta, dict):
            x.usage = gemini_usage(meta)
            x.usage_final = self._finished
            tier = meta.get("serviceTier", obj.get("serviceTier"))
            if isinstance(tier, str) and tier:
                x.service_tier = tier.lower().removeprefix("service_tier_")
        if content:
            x.content_frames += 1
        return content

    def _on_candidate(self, cand: dict[str, Any]) -> bool:
        reason = cand.get("finishReason")
        if isinstance(reason, str) and reason:
            self.extract.stop_reason = reason
            self._finish()
        body = cand.get("content")
        parts = body.get("parts") if isinstance(body, dict) else None
        if not isinstance(parts, list):
            return False
        for part in parts:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str) and part["text"]:
                return True
            if any(k in part for k in _CONTENT_PARTS):
                return True
        return False

    def _finish(self) -> None:
        self._finished = True
        self.extract.terminal_seen = True

    def _on_error(self, err: dict[str, Any]) -> None:
        x = self.extract
        status = err.get("status")
        x.error_type = status if isinstance(status, str) and status else "error"
        msg = err.get("message")
        x.error_message = msg if isinstance(msg, str) else None


def iter_array_elements(body: bytes) -> list[Any]:
    """The complete elements of a (possibly truncated) JSON array: ``[{...},\\r\\n{...}``."""
    try:
        text = body.decode("utf-8", "replace")
    except Exception:
        return []
    out: list[Any] = []
    pos = text.find("[") + 1
    end = len(text)
    while pos < end:
        while pos < end and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= end or text[pos] == "]":
            break
        try:
            obj, pos = _DECODER.raw_decode(text, pos)
        except (ValueError, RecursionError):
            break  # truncated (or garbled) element: keep what was complete
        out.append(obj)
    return out


_USAGE_KEYS = ("promptTokenCount", "cachedContentTokenCount", "toolUsePromptTokenCount", "candidatesTokenCount", "thoughtsTokenCount")


def gemini_usage(meta: dict[str, Any]) -> Usage:
    """``usageMetadata`` -> exclusive buckets.

    An absent count is a proto3 zero; a present but malformed one makes its buckets unknown.
    """
    if not any(k in meta for k in _USAGE_KEYS):
        return Usage()
    prompt, cached, tool_use, candidates, thoughts = (_count(meta, k) for k in _USAGE_KEYS)
    fresh = None if prompt is None or cached is None or tool_use is None else max(0, prompt - cached) + tool_use
    whole, cache, tool = (_modalities(meta.get(k)) for k in ("promptTokensDetails", "cacheTokensDetails", "toolUsePromptTokensDetails"))
    parts: dict[str, int | None] = {}
    for modality in ("audio", "image", "video"):
        cached_part = min(cache.get(modality, 0), cached or 0)
        fresh_part = max(0, whole.get(modality, 0) - cached_part) + tool.get(modality, 0)
        parts[f"input_{modality}_tokens"] = min(fresh_part, fresh) if fresh_part and fresh is not None else None
        parts[f"cache_read_{modality}_tokens"] = cached_part or None
    return Usage(
        input_tokens=fresh,
        cache_read_tokens=cached,
        output_tokens=None if candidates is None or thoughts is None else candidates + thoughts,
        reasoning_tokens=thoughts,
        **parts,
    )


_MODALITY = {"AUDIO": "audio", "IMAGE": "image", "DOCUMENT": "image", "VIDEO": "video"}


def _modalities(details: object) -> dict[str, int]:
    """``[{"modality": "AUDIO", "tokenCount": 9000}, ...]`` -> {"audio": 9000}; TEXT and junk skipped."""
    out: dict[str, int] = {}
    if not isinstance(details, list):
        return out
    for item in details:
        if not isinstance(item, dict):
            continue
        name = _MODALITY.get(str(item.get("modality")))
        count = as_count(item.get("tokenCount"))
        if name is not None and count:
            out[name] = out.get(name, 0) + count
    return out


def _count(meta: dict[str, Any], key: str) -> int | None:
    return as_count(meta[key]) if key in meta else 0


# -- mitmweb's view -------------------------------------------------------------------------------
def assemble(objs: Iterable[Any], out: Assembled) -> None:
    for o in objs:
        if not isinstance(o, dict):
            continue
        if isinstance(o.get("error"), dict):
            out.errors.append(f"{o['error'].get('status') or o['error'].get('code')}: {o['error'].get('message')}")
        for cand in o.get("candidates") or []:
            parts = ((cand or {}).get("content") or {}).get("parts") if isinstance(cand, dict) else None
            for p in parts if isinstance(parts, list) else []:
                if not isinstance(p, dict):
                    continue
                if isinstance(p.get("text"), str):
                    (out.thinking if p.get("thought") else out.text).append(p["text"])
                fc = p.get("functionCall")
                if isinstance(fc, dict):
                    out.tool_calls.append(ToolCall(str(fc.get("name") or ""), json.dumps(fc.get("args") or {})))


# -- as the simulated provider writes it ----------------------------------------------------------
def _gemini_chunk(r: Reply, text: str, usage: Mapping[str, Any], finish: bool) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = "MAX_TOKENS" if r.stop == "max_tokens" else "STOP"
    return {"candidates": [candidate], "usageMetadata": dict(usage), "modelVersion": r.model, "responseId": r.id}


def _render_json(r: Reply) -> dict[str, Any]:
    return _gemini_chunk(r, r.text, r.usage, True)


def _render_frames(r: Reply) -> list[bytes]:
    """Running ``usageMetadata`` on every chunk (prompt counts only until the last one), CRLF framing."""
    pieces = split_text(r.text, r.text_deltas) or [""]
    prompt_only = {k: v for k, v in r.usage.items() if k in ("promptTokenCount", "cachedContentTokenCount")}
    return [sse_data(_gemini_chunk(r, piece, r.usage if n == len(pieces) - 1 else prompt_only, n == len(pieces) - 1), nl="\r\n")
            for n, piece in enumerate(pieces)]


_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def error_json(status: int, message: str) -> dict[str, Any]:
    """An HTTP error body as Gemini writes it."""
    return {"error": {"code": status, "message": message, "status": _GEMINI_STATUS.get(status, "UNKNOWN")}}


def _stream_error() -> bytes:
    return sse_data(error_json(503, "Overloaded"))


def _plain_usage(prompt: int, output: int) -> dict[str, Any]:
    return {"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output}


DIALECT = Dialect(
    name="gemini",
    provider="gemini",
    endpoints=(Endpoint("generate_content", pattern=re.compile(r"/v1(?:beta|alpha)?\d*/models/(?P<model>[^/:]+):(?P<verb>generateContent|streamGenerateContent)$"),
                        stream_verbs=frozenset({"streamGenerateContent"})),),
    tracker=GeminiTracker,
    layout=PromptLayout(items="contents", content="parts", system=("systemInstruction", "system_instruction"), system_parts="parts"),
    cache=None,
    session_hint=None,
    assemble=assemble,
    render=Renderer("gen", _render_json, _render_frames, error_json, _stream_error, first_delta=0, plain_usage=_plain_usage),
)
