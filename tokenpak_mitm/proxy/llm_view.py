"""A readable summary of one LLM request or response, for mitmweb's content view (pure, no I/O).

A streamed LLM response in mitmweb is a wall of ``data:`` lines. This module assembles what they
say: the generated text, the reasoning text, the tool calls with their arguments, the stop
reason, the usage in the proxy's exclusive buckets, the cost from the price table, and the cache
verdict. It reads Anthropic Messages, OpenAI Chat Completions and Responses, and Gemini
generateContent, streamed (SSE, or Gemini's JSON array) or not. Usage, model and cost come from
the same dialect trackers and price table as the telemetry row, so the view and the row agree.
Malformed input gives whatever could be read, never an exception.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenpak_mitm.core.observe.sse import SSEParser, parse_event
from tokenpak_mitm.core.observe.tracker import decode_json, feed_sse_body, looks_like_sse
from tokenpak_mitm.core.routes import Route, tracker_for

__all__ = ["Assembled", "assemble", "describe_response", "describe_request"]

MAX_TEXT = 20_000  # characters of text shown per section


@dataclass(slots=True)
class ToolCall:
    name: str = ""
    arguments: str = ""
    id: str | None = None


@dataclass(slots=True)
class Assembled:
    text: list[str] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _streamed: dict[str, ToolCall] = field(default_factory=dict)  # stream index -> call

    def call(self, key: Any) -> ToolCall:
        """The streamed tool call at index ``key`` (created on first use)."""
        k = str(key)
        if k not in self._streamed:
            self._streamed[k] = ToolCall()
            self.tool_calls.append(self._streamed[k])
        return self._streamed[k]


def _objects(body: bytes) -> Iterable[Any]:
    """The JSON payloads of an SSE body, or the elements of a JSON array body, or the one object."""
    if looks_like_sse(body):
        parser = SSEParser()
        frames = parser.feed(body)
        more, rest = parser.close()
        for raw in [*frames, *more, *([rest] if rest.strip() else [])]:
            ev = parse_event(raw)
            if ev is None:
                continue
            obj = decode_json(ev.data)
            if obj is not None:
                yield obj
        return
    obj = decode_json(body)
    if isinstance(obj, list):
        yield from obj
    elif obj is not None:
        yield obj


# -- per dialect --------------------------------------------------------------------------------
def _anthropic(objs: Iterable[Any], out: Assembled) -> None:
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


def _openai_chat(objs: Iterable[Any], out: Assembled) -> None:
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


def _openai_responses(objs: Iterable[Any], out: Assembled) -> None:
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


def _gemini(objs: Iterable[Any], out: Assembled) -> None:
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


_DIALECTS = {"anthropic": _anthropic, "openai_chat": _openai_chat, "openai_responses": _openai_responses, "gemini": _gemini}


def assemble(dialect: str, body: bytes) -> Assembled:
    out = Assembled()
    fn = _DIALECTS.get(dialect)
    if fn is None or not body:
        return out
    try:
        fn(_objects(body), out)
    except Exception:  # noqa: BLE001 - a view shows what it could read
        out.errors.append("(the rest of the body could not be read)")
    return out


# -- rendering ----------------------------------------------------------------------------------
def _block(text: str) -> list[str]:
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + f"\n… ({len(text) - MAX_TEXT:,} more characters)"
    return ["  " + line for line in text.splitlines()] or ["  "]


def _pretty_args(arguments: str) -> str:
    obj = decode_json(arguments) if arguments else None
    return json.dumps(obj, indent=2, ensure_ascii=False) if obj is not None else arguments


def describe_response(route: Route, body: bytes, status: int, meta: Mapping[str, Any] | None = None,
                      request_model: str | None = None) -> str:
    """The response summary: model, stop reason, usage, cost, cache verdict, text, tool calls."""
    from tokenpak_mitm.core.account.pricing import price
    from tokenpak_mitm.core.account.telemetry import cache_verdict

    meta = meta or {}
    tracker = tracker_for(route)
    x = None
    if tracker is not None:
        if looks_like_sse(body):
            feed_sse_body(tracker, body)
        else:
            tracker.feed_body(body, status)
        x = tracker.extract
    model = (x.model if x else None) or route.model_hint or request_model
    a = assemble(route.dialect, body)
    lines = [f"tokenpak: {route.provider} {route.api}, HTTP {status}", f"model: {model or '?'}"]
    if x is not None:
        if x.stop_reason:
            lines.append(f"stop reason: {x.stop_reason}")
        u = x.usage
        if x.usage_source == "absent":
            lines.append("usage: not reported")
        else:
            lines.append(f"usage ({x.usage_source}): input {u.input_tokens or 0:,} (fresh), cache read {u.cache_read_tokens or 0:,}, "
                         f"cache write {u.cache_write_tokens or 0:,}, output {u.output_tokens or 0:,}"
                         + (f" (reasoning {u.reasoning_tokens:,})" if u.reasoning_tokens else ""))
        cost = price(route.provider, model, u) if route.billable and x.usage_source != "absent" else None
        if not route.billable:
            lines.append("cost: not billed (free endpoint)")
        elif status >= 400 and x.usage_source == "absent":
            lines.append("cost: $0 (rejected, not billed)" if status < 500 else "cost: unknown (no usage reported)")
        elif cost is None or cost.cost_usd is None:
            lines.append("cost: unknown" + (f" ({cost.unpriced_reason})" if cost is not None and cost.unpriced_reason else ""))
        else:
            saved = cost.savings_usd or 0.0
            lines.append(f"cost: ${cost.cost_usd:.6f} (caching {'saved' if saved >= 0 else 'cost'} ${abs(saved):.6f}; price table {cost.price_version})")
        row = {"input_tokens": u.input_tokens, "cache_read_tokens": u.cache_read_tokens, "cache_write_tokens": u.cache_write_tokens,
               "markers_inserted": meta.get("markers_inserted"), "client_markers": meta.get("client_markers")}
        verdict = cache_verdict(row)
        markers = f"; markers: {meta.get('markers_inserted') or 0} inserted by the proxy, {meta.get('client_markers') or 0} from the client" if meta else ""
        decision = f"; planner: {meta['cache_decision']}" if meta.get("cache_decision") else ""
        lines.append(f"cache: {verdict}{markers}{decision}")
        session = meta.get("session")
        ours = session.get("cache_miss_reason") if isinstance(session, Mapping) else None
        if ours:
            lines.append(f"cache miss (our diagnosis): {ours}")
        if x.provider_miss_reason:
            missed = f", {x.provider_missed_tokens:,} input tokens after the divergence" if x.provider_missed_tokens is not None else ""
            lines.append(f"cache diagnostics (the provider's verdict): {x.provider_miss_reason}{missed}")
    for err in a.errors:
        lines.append(f"error: {err}")
    if a.thinking:
        lines += ["", "reasoning:", *_block("".join(a.thinking))]
    if a.text:
        lines += ["", "text:", *_block("".join(a.text))]
    for call in a.tool_calls:
        lines += ["", f"tool call: {call.name or '?'}", *_block(_pretty_args(call.arguments))]
    if not (a.text or a.tool_calls or a.thinking or a.errors):
        lines += ["", "(no generated content)"]
    return "\n".join(lines)


def describe_request(route: Route, body: bytes) -> str:
    """The request summary: model, stream, messages and the last user turn, tools, cache markers."""
    obj = decode_json(body)
    lines = [f"tokenpak: {route.provider} {route.api} request"]
    if not isinstance(obj, dict):
        return "\n".join([*lines, "(not a JSON object)"])
    model = obj.get("model") or route.model_hint
    lines.append(f"model: {model or '?'}")
    stream = obj.get("stream") if "stream" in obj else ("stream" in route.api)
    lines.append(f"stream: {bool(stream)}")
    turns = obj.get("messages") or obj.get("input") or obj.get("contents")
    if isinstance(turns, list):
        lines.append(f"messages: {len(turns)}")
        mid = [i for i, t in enumerate(turns) if isinstance(t, dict) and t.get("role") == "system"]
        if mid and route.dialect == "anthropic":
            lines.append(f"mid-conversation system messages: {len(mid)} (at {', '.join(f'#{i}' for i in mid)})")
    diagnostics = obj.get("diagnostics")
    if isinstance(diagnostics, dict) and "previous_message_id" in diagnostics:
        lines.append(f"cache diagnostics asked, against: {diagnostics.get('previous_message_id') or '(first turn)'}")
    tools = obj.get("tools")
    if isinstance(tools, list) and tools:
        names = [str(t.get("name") or (t.get("function") or {}).get("name") or t.get("type") or "?") for t in tools if isinstance(t, dict)]
        lines.append(f"tools: {', '.join(names)}")
    markers = body.count(b'"cache_control"')
    lines.append(f"cache_control markers in the body: {markers}")
    last = _last_user_text(turns)
    if last:
        lines += ["", "last user message:", *_block(last)]
    return "\n".join(lines)


def _last_user_text(turns: Any) -> str | None:
    if isinstance(turns, str):
        return turns
    for turn in reversed(turns if isinstance(turns, list) else []):
        if not isinstance(turn, dict) or turn.get("role") not in ("user", None):
            continue
        content = turn.get("content", turn.get("parts"))
        if isinstance(content, str):
            return content
        texts = [str(c.get("text")) for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)] if isinstance(content, list) else []
        if texts:
            return "\n".join(texts)
    return None
