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
from typing import Any

from tokenpak_mitm.core.dialects import dialect as dialect_of
from tokenpak_mitm.core.dialects.view import Assembled
from tokenpak_mitm.core.observe.sse import SSEParser, parse_event
from tokenpak_mitm.core.observe.tracker import decode_json, feed_sse_body, looks_like_sse
from tokenpak_mitm.core.routes import Route, tracker_for

__all__ = ["Assembled", "assemble", "describe_response", "describe_request"]

MAX_TEXT = 20_000  # characters of text shown per section


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


def assemble(dialect: str, body: bytes) -> Assembled:
    out = Assembled()
    d = dialect_of(dialect)
    if d is None or not body:
        return out
    try:
        d.assemble(_objects(body), out)
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
