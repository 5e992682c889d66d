"""A pure, deterministic model of provider prompt caching (no I/O).

Why: the proxy's value is the cache reads it causes and the writes it avoids.
Tests and the savings benchmark need a provider stand-in that applies the
documented rules (Anthropic's prompt-caching guide and OpenAI's, summarised in
as read in November 2026; see core/plan/cache_facts.py for the sources) so they can
assert exact usage figures without a network or an API key. Per-model facts
(minimums, TTLs, multipliers, lookback) come from ``tokenpak_mitm.core.plan.cache_facts``.

Model of an Anthropic request
    The prompt is a sequence of *blocks* in prefix order tools → system →
    messages: every tool definition, every system block (a string system is
    one text block) and every message content block (a string content is one
    text block). Each block has

    * a token count — the tokenizer stand-in is
      ``ceil(len(canonical_block_json(block)) / 4)``: compact JSON with sorted
      keys, ``cache_control`` removed (also from nested ``tool_result`` /
      ``document`` content), and the ``input`` of ``tool_use`` blocks kept in
      client key order (the docs warn that order matters there);
    * a cumulative prefix hash over the model, each earlier block (with its
      section and message role) and the parameters the docs' invalidation
      table lists, folded in where they take effect: ``speed`` and whether
      citations are enabled on any document at the start of ``system`` (they
      invalidate system and messages); ``tool_choice`` (which carries
      ``disable_parallel_tool_use``), ``thinking``, ``output_config.effort`` and
      whether any image is present at the start of ``messages`` (they
      invalidate messages). Tool definitions, the web-search tool included,
      are the tools section itself, so changing them invalidates everything.

    Markers therefore never change token counts or hashes.

Caching rules honoured
    breakpoints = blocks with ``cache_control`` (no ttl = 5m) + the top-level
    automatic marker (last eligible block); at most 4; no 1h after 5m; none on
    thinking / empty text blocks. Reads: per breakpoint, look back at most 20
    positions (the breakpoint itself first) for a live entry; A = highest hit.
    Writes: every breakpoint beyond A whose prefix reaches the model minimum;
    billing A/B/C (B = highest writing 1h breakpoint after A, C = last writing
    breakpoint): 1h = B−A, 5m = C−B, ``input_tokens`` = total − max(A, C).
    A read refreshes the entry with its own TTL, counted from the request start.
    An entry is readable only once the response that writes it has begun: with
    ``apply(..., pending=[...])`` the writes are held back until
    ``commit(pending)`` (requests sent concurrently, e.g. one wave of a batch,
    cannot read each other's writes); without it they are visible to every
    later call.

OpenAI (``handle_openai``), GPT-5.6 and later (``cache_facts.OPENAI_GPT56``)
    Blocks are ``prefix_index.boundaries`` of the request (tools, then
    ``instructions`` / messages / input items) with tokens = bytes / 4. Breakpoints: every
    block carrying ``prompt_cache_breakpoint``, plus the implicit one at the
    end of the newest message unless ``prompt_cache_options.mode`` is
    ``explicit``; at most 4 writes per request (the latest ones). A read is the
    deepest position whose prefix was written at a breakpoint and is live (no
    lookback limit; an exact match at a breakpoint, no fallback to a shorter
    unmarked prefix). Writes at 1.25x for breakpoints past the read, from 1,024
    tokens; TTL 30 minutes. Usage in the API's shape (``prompt_tokens`` /
    ``input_tokens`` include cached and written tokens). Earlier models: the
    implicit breakpoint only, writes free, ``cached_tokens`` rounded down to 128.

Assumptions (not documented, chosen to match the docs' examples):
    * a string ``content`` / ``system`` caches like the equivalent one-block
      list, so a proxy that rewrites one into the other keeps its cache;
    * thinking settings invalidate only ``messages`` (the docs say tools and
      system too "on some models", without naming them);
    * OpenAI's block order (tools before instructions and messages) and that
      its implicit breakpoint sits exactly at the end of the newest message;
    * the 80-breakpoint matching window of OpenAI is not modelled (all live
      entries match).

Output tokens: ``min(max_tokens, CacheSimulator.output_tokens)`` (default 50).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenpak_mitm.core.plan import cache_facts
from tokenpak_mitm.core.plan.openai_eligibility import breakpoint_eligible
from tokenpak_mitm.core.plan.prefix_index import Api, Boundary, boundaries, part_at

MAX_BREAKPOINTS = cache_facts.MAX_BREAKPOINTS
LOOKBACK_WINDOW = cache_facts.LOOKBACK_BLOCKS
DEFAULT_OUTPUT_TOKENS = 50
TTL_SECONDS: dict[str, float] = {ttl: cache_facts.TTL_SECONDS[ttl] for ttl in ("5m", "1h")}

UNMARKABLE_BLOCK_TYPES = frozenset({"thinking", "redacted_thinking"})
ORDER_SENSITIVE_INPUT_TYPES = frozenset({"tool_use", "server_tool_use"})


class InvalidRequest(Exception):
    """A request the real API would answer with HTTP 400 invalid_request_error."""


def min_cacheable_tokens(model: str) -> int:
    """Minimum prefix length that can be cached for `model` (the shared table, `cache_facts`)."""
    return cache_facts.minimum_tokens(model, "anthropic")


def error_body(message: str, error_type: str = "invalid_request_error") -> dict[str, Any]:
    """Anthropic's error body shape (the server adds ``request_id``)."""
    return {"type": "error", "error": {"type": error_type, "message": message}}


# ---------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """One cacheable unit of the prompt, with its cumulative prefix."""

    index: int
    path: str  # API error path, e.g. "messages.3.content.1"
    section: str  # "tools" | "system" | "messages"
    block_type: str
    tokens: int
    prefix_tokens: int  # tokens of all blocks up to and including this one
    prefix_hash: str
    marker_ttl: str | None  # TTL of an explicit marker on this block
    markable: bool  # may be a breakpoint (not thinking, not empty text; string form needs a list rewrite)


@dataclass(frozen=True)
class Breakpoint:
    index: int
    ttl: str
    automatic: bool = False


@dataclass(frozen=True)
class RequestAnalysis:
    """Everything the cache decision depends on; reusable by the benchmark."""

    model: str
    blocks: tuple[Block, ...]
    breakpoints: tuple[Breakpoint, ...]

    @property
    def total_tokens(self) -> int:
        return self.blocks[-1].prefix_tokens if self.blocks else 0


def _sorted_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_tree(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_tree(item) for item in value]
    return value


def _strip_markers(block: dict[str, Any]) -> dict[str, Any]:
    clean = {key: value for key, value in block.items() if key != "cache_control"}
    if isinstance(clean.get("content"), list):
        clean["content"] = [_drop_key(item) for item in clean["content"]]
    source = clean.get("source")
    if isinstance(source, dict) and isinstance(source.get("content"), list):
        clean["source"] = {**source, "content": [_drop_key(item) for item in source["content"]]}
    return clean


def _drop_key(item: Any) -> Any:
    if isinstance(item, dict):
        return {key: value for key, value in item.items() if key != "cache_control"}
    return item


def canonical_block_json(block: dict[str, Any]) -> str:
    """The text the tokenizer stand-in and the prefix hash see for one block."""
    clean = _strip_markers(block)
    keep_input_order = clean.get("type") in ORDER_SENSITIVE_INPUT_TYPES
    tree = {
        key: clean[key] if (key == "input" and keep_input_order) else _sorted_tree(clean[key])
        for key in sorted(clean)
    }
    return json.dumps(tree, ensure_ascii=False, separators=(",", ":"))


def block_tokens(block: dict[str, Any]) -> int:
    """Tokenizer stand-in: one token per 4 characters of canonical JSON."""
    return math.ceil(len(canonical_block_json(block)) / 4)


def _as_blocks(value: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(value, str):
        return [(path, {"type": "text", "text": value})]  # string = one block, not markable
    if isinstance(value, list):
        blocks = []
        for position, item in enumerate(value):
            if not isinstance(item, dict):
                raise InvalidRequest(f"{path}.{position}: Input should be a valid dictionary")
            blocks.append((f"{path}.{position}", item))
        return blocks
    if value is None:
        return []
    raise InvalidRequest(f"{path}: Input should be a valid list")


def _marker_ttl(marker: Any, path: str) -> str:
    field_path = f"{path}.cache_control" if path else "cache_control"
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
        raise InvalidRequest(f"{field_path}.type: Input should be 'ephemeral'")
    ttl = marker.get("ttl") or "5m"
    if ttl not in TTL_SECONDS:
        raise InvalidRequest(f"{field_path}.ttl: Input should be '5m' or '1h'")
    return ttl


def _is_empty_text(block: dict[str, Any]) -> bool:
    return block.get("type") == "text" and not str(block.get("text", "")).strip()


def _explicit_marker_ttl(block: dict[str, Any], path: str) -> str | None:
    """TTL of the block's marker, validated like the API (None = no marker)."""
    block_type = str(block.get("type", ""))
    ttl = None
    if "cache_control" in block and block["cache_control"] is not None:
        if block_type in UNMARKABLE_BLOCK_TYPES:
            raise InvalidRequest(f"{path}.{block_type}.cache_control: Extra inputs are not permitted")
        if _is_empty_text(block):
            raise InvalidRequest(f"{path}.text: cache_control cannot be set for empty text blocks")
        ttl = _marker_ttl(block["cache_control"], path)
    nested, nested_path = block.get("content"), f"{path}.content"
    if block_type == "document" and isinstance(block.get("source"), dict):
        nested, nested_path = block["source"].get("content"), f"{path}.source.content"
    if block_type in ("tool_result", "document") and isinstance(nested, list):
        for position, item in enumerate(nested):
            if not isinstance(item, dict) or item.get("cache_control") is None:
                continue
            if position != len(nested) - 1:  # the API only lifts the last one to the parent
                raise InvalidRequest(
                    f"{nested_path}.{position}.cache_control: cache_control is only allowed on "
                    f"the parent {block_type} block"
                )
            ttl = ttl or _marker_ttl(item["cache_control"], f"{nested_path}.{position}")
    return ttl


def _flatten(request: dict[str, Any], model: str) -> list[Block]:
    parts: list[tuple[str, str, str, dict[str, Any], bool]] = []  # section, role, path, block, is list form
    for path, tool in _as_blocks(request.get("tools"), "tools"):
        parts.append(("tools", "", path, tool, True))
    system = request.get("system")
    for path, block in _as_blocks(system, "system"):
        parts.append(("system", "", path, block, not isinstance(system, str)))
    messages = request.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: Field required")
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or "content" not in message:
            raise InvalidRequest(f"messages.{number}: Field required")
        content = message["content"]
        for path, block in _as_blocks(content, f"messages.{number}.content"):
            parts.append(("messages", str(message.get("role", "")), path, block, not isinstance(content, str)))

    digest = hashlib.sha256(f"model\0{model}".encode()).digest()
    params = _section_params(request)
    blocks: list[Block] = []
    total = 0
    entered: set[str] = set()
    for index, (section, role, path, block, list_form) in enumerate(parts):
        for start in ("system", "messages"):
            if start not in entered and _SECTION_ORDER.index(section) >= _SECTION_ORDER.index(start):
                digest = hashlib.sha256(digest + f"\0params\0{start}\0".encode() + params[start].encode()).digest()
                entered.add(start)
        canonical = canonical_block_json(block)
        tokens = math.ceil(len(canonical) / 4)
        total += tokens
        digest = hashlib.sha256(digest + f"\0{section}\0{role}\0{canonical}".encode()).digest()
        block_type = str(block.get("type", "tool" if section == "tools" else ""))
        blocks.append(
            Block(
                index=index,
                path=path,
                section=section,
                block_type=block_type,
                tokens=tokens,
                prefix_tokens=total,
                prefix_hash=digest.hex(),
                marker_ttl=_explicit_marker_ttl(block, path) if list_form else None,
                markable=block_type not in UNMARKABLE_BLOCK_TYPES and not _is_empty_text(block),
            )
        )
    return blocks


_SECTION_ORDER = ("tools", "system", "messages")


def _section_params(request: dict[str, Any]) -> dict[str, str]:
    """The invalidating parameters of each section as canonical JSON (see the module docstring)."""
    def any_block(node: Any, kind: str, test: Callable[[dict[str, Any]], bool]) -> bool:
        pending = [node]
        while pending:
            item = pending.pop()
            if isinstance(item, list):
                pending.extend(item)
            elif isinstance(item, dict):
                if item.get("type") == kind and test(item):
                    return True
                pending.extend(v for k, v in item.items() if k in ("content", "source") and isinstance(v, (list, dict)))
        return False

    citations = any_block([request.get("system"), request.get("messages")], "document",
                          lambda b: isinstance(b.get("citations"), dict) and bool(b["citations"].get("enabled")))
    output_config = request.get("output_config")
    system = {"speed": request.get("speed"), "citations": citations}
    messages = {
        "tool_choice": request.get("tool_choice"), "thinking": request.get("thinking"),
        "effort": output_config.get("effort") if isinstance(output_config, dict) else None,
        "images": any_block(request.get("messages"), "image", lambda b: True),
    }
    return {name: json.dumps(_sorted_tree(values), separators=(",", ":")) for name, values in
            (("system", system), ("messages", messages))}


def _breakpoints(request: dict[str, Any], blocks: list[Block]) -> list[Breakpoint]:
    points = [Breakpoint(block.index, block.marker_ttl) for block in blocks if block.marker_ttl]
    if len(points) > MAX_BREAKPOINTS:
        raise InvalidRequest(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(points)}.")
    automatic = request.get("cache_control")
    if automatic is not None:
        ttl = _marker_ttl(automatic, "")
        target = next((block for block in reversed(blocks) if block.markable), None)
        if target is not None and target.marker_ttl is not None:
            if target.marker_ttl != ttl:
                raise InvalidRequest(
                    f"cache_control.ttl: the automatic cache_control ttl='{ttl}' conflicts with "
                    f"ttl='{target.marker_ttl}' on the last cacheable block {target.path}"
                )
        elif target is not None:
            if len(points) >= MAX_BREAKPOINTS:
                raise InvalidRequest(
                    f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(points) + 1}."
                )
            points.append(Breakpoint(target.index, ttl, automatic=True))
            points.sort(key=lambda point: point.index)
    seen_short = False
    for point in points:
        if point.ttl == "5m":
            seen_short = True
        elif seen_short:
            raise InvalidRequest(
                f"{blocks[point.index].path}.cache_control.ttl: a ttl='1h' cache_control block must not come "
                "after a ttl='5m' cache_control block. Note that blocks are processed in the following "
                "order: `tools`, `system`, `messages`."
            )
    return points


def analyse_request(request: Any) -> RequestAnalysis:
    """Flatten and validate a Messages request; raises InvalidRequest like the API."""
    if not isinstance(request, dict):
        raise InvalidRequest("Input should be a valid dictionary")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required")
    blocks = _flatten(request, model)
    return RequestAnalysis(model=model, blocks=tuple(blocks), breakpoints=tuple(_breakpoints(request, blocks)))


# ---------------------------------------------------------------- simulator


@dataclass(frozen=True)
class CacheEntry:
    expires_at: float
    ttl: str


@dataclass(frozen=True)
class PendingWrite:
    """A write held back until the response that makes it has begun (see ``commit``)."""

    prefix_hash: str
    entry: CacheEntry


@dataclass(frozen=True)
class SimResult:
    """Outcome of one request: Anthropic ``usage`` JSON, or a 400 error body."""

    status: int
    usage: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    stop_reason: str | None = None
    hit_index: int | None = None  # block index of the cache read, if any

    @property
    def prompt_tokens(self) -> int:
        """All input tokens: read + written + uncached."""
        return sum(self.usage.get(key, 0) for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))


def usage_json(*, input_tokens: int, read: int, write_5m: int, write_1h: int, output_tokens: int) -> dict[str, Any]:
    """Usage object in the field order the API sends it."""
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": write_5m + write_1h,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


class CacheSimulator:
    """Stateful provider-side cache shared by all requests sent to it.

    ``clock`` returns seconds (default ``time.monotonic``); ``handle(..., now=)``
    overrides it for one request.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> None:
        self.clock = clock
        self.output_tokens = output_tokens
        self.entries: dict[str, CacheEntry] = {}

    def copy(self) -> CacheSimulator:
        """Independent snapshot of the cache state (for what-if searches)."""
        clone = CacheSimulator(self.clock, self.output_tokens)
        clone.entries = dict(self.entries)  # entries are replaced, never mutated
        return clone

    def clear(self) -> None:
        self.entries.clear()

    def count_tokens(self, request: Any) -> SimResult:
        """``/v1/messages/count_tokens``: total prompt tokens, no cache effect."""
        try:
            analysis = analyse_request(request)
        except InvalidRequest as exc:
            return SimResult(status=400, error=error_body(str(exc)))
        return SimResult(status=200, usage={"input_tokens": analysis.total_tokens})

    def handle(self, request: Any, now: float | None = None) -> SimResult:
        """Process one ``/v1/messages`` request and update the cache."""
        try:
            analysis = analyse_request(request)
            max_tokens = request.get("max_tokens")
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
                raise InvalidRequest("max_tokens: Field required")
            if max_tokens == 0 and request.get("stream"):
                raise InvalidRequest("max_tokens: cache pre-warming (max_tokens=0) is not supported with stream=true")
        except InvalidRequest as exc:
            return SimResult(status=400, error=error_body(str(exc)))
        started = self.clock() if now is None else now
        usage, hit_index = self.apply(analysis, started)
        output = min(max_tokens, self.output_tokens)
        usage["output_tokens"] = output
        stop_reason = "max_tokens" if output >= max_tokens else "end_turn"
        return SimResult(status=200, usage=usage, stop_reason=stop_reason, hit_index=hit_index)

    def _live(self, prefix_hash: str, now: float) -> CacheEntry | None:
        entry = self.entries.get(prefix_hash)
        return entry if entry is not None and entry.expires_at > now else None

    def commit(self, pending: list[PendingWrite]) -> None:
        """The responses of held-back writes have begun: their entries become readable."""
        for write in pending:
            self.entries[write.prefix_hash] = write.entry
        pending.clear()

    def apply(self, analysis: RequestAnalysis, now: float, pending: list[PendingWrite] | None = None) -> tuple[dict[str, Any], int | None]:
        """Cache effect of an analysed request: (usage without output, hit block index).

        Public so searches can try breakpoint sets on a pre-analysed request
        (``dataclasses.replace(analysis, breakpoints=...)``) without re-hashing;
        the caller is then responsible for the 4-marker and TTL-order rules.
        With `pending`, writes are appended there instead of stored (see ``commit``).
        """
        blocks, total = analysis.blocks, analysis.total_tokens
        hit_index = -1
        for point in analysis.breakpoints:
            for position in range(point.index, max(-1, point.index - LOOKBACK_WINDOW), -1):
                if self._live(blocks[position].prefix_hash, now):
                    hit_index = max(hit_index, position)
                    break
        read = blocks[hit_index].prefix_tokens if hit_index >= 0 else 0
        minimum = min_cacheable_tokens(analysis.model)
        writers = [
            point for point in analysis.breakpoints
            if point.index > hit_index and blocks[point.index].prefix_tokens >= minimum
        ]
        long_end = max((blocks[p.index].prefix_tokens for p in writers if p.ttl == "1h"), default=read)
        written_end = blocks[writers[-1].index].prefix_tokens if writers else read
        if hit_index >= 0:  # a read refreshes the entry's lifetime from the request start
            key = blocks[hit_index].prefix_hash
            self.entries[key] = CacheEntry(now + TTL_SECONDS[self.entries[key].ttl], self.entries[key].ttl)
        for point in writers:  # written after all reads: only later requests can see them
            write = PendingWrite(blocks[point.index].prefix_hash, CacheEntry(now + TTL_SECONDS[point.ttl], point.ttl))
            if pending is None:
                self.entries[write.prefix_hash] = write.entry
            else:
                pending.append(write)
        usage = usage_json(
            input_tokens=total - written_end,
            read=read,
            write_5m=written_end - long_end,
            write_1h=long_end - read,
            output_tokens=0,
        )
        return usage, (hit_index if hit_index >= 0 else None)

    # ------------------------------------------------------------ OpenAI

    def handle_openai(self, request: Any, api: Api = "openai_chat", now: float | None = None,
                      pending: list[PendingWrite] | None = None) -> SimResult:
        """One Chat Completions (``api="openai_chat"``) or Responses (``"openai_responses"``) request."""
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            return SimResult(status=400, error={"error": {"message": "model: Field required", "type": "invalid_request_error"}})
        analysis = analyse_openai(request, api)
        started = self.clock() if now is None else now
        usage, hit = self.apply_openai(analysis, started, pending=pending)
        max_tokens = request.get("max_output_tokens") or request.get("max_completion_tokens") or request.get("max_tokens")
        output = min(max_tokens, self.output_tokens) if isinstance(max_tokens, int) else self.output_tokens
        if api == "openai_responses":
            usage["output_tokens"] = output
            usage["total_tokens"] = usage["input_tokens"] + output
        else:
            usage["completion_tokens"] = output
            usage["total_tokens"] = usage["prompt_tokens"] + output
        return SimResult(status=200, usage=usage, hit_index=hit)

    def apply_openai(self, analysis: OpenAIAnalysis, now: float, *, pending: list[PendingWrite] | None = None,
                     points: Sequence[int] | None = None, explicit_only: bool | None = None) -> tuple[dict[str, Any], int | None]:
        """Cache effect of an analysed OpenAI request (usage without output, hit position).

        `points` / `explicit_only` override the request's own breakpoints and mode (for searches).
        """
        facts, tokens, keys = analysis.facts, analysis.tokens, analysis.keys
        total = tokens[-1] if tokens else 0
        hit = -1
        for i in range(len(keys) - 1, -1, -1):
            if self._live(keys[i], now):
                hit = i
                break
        chosen = list(analysis.explicit if points is None else points)
        only = analysis.explicit_only if explicit_only is None else explicit_only
        if not facts.explicit_markers:
            chosen, only = [], False
        if not only and keys and len(keys) - 1 not in chosen:
            chosen.append(len(keys) - 1)  # the implicit breakpoint: the end of the newest message
        chosen = sorted(set(chosen))
        if facts.max_breakpoints:
            chosen = chosen[-facts.max_breakpoints:]
        read = tokens[hit] if hit >= 0 else 0
        writers = [p for p in chosen if p > hit and tokens[p] >= facts.minimum_tokens]
        ttl = facts.ttls[0] if facts.ttls[0] in cache_facts.TTL_SECONDS else "5m"  # legacy in-memory retention: "5 to 10 minutes"
        if hit >= 0:
            entry = self.entries[keys[hit]]
            self.entries[keys[hit]] = CacheEntry(now + cache_facts.TTL_SECONDS[entry.ttl], entry.ttl)
        for p in writers:
            write = PendingWrite(keys[p], CacheEntry(now + cache_facts.TTL_SECONDS[ttl], ttl))
            if pending is None:
                self.entries[write.prefix_hash] = write.entry
            else:
                pending.append(write)
        written = (tokens[writers[-1]] - read) if writers and facts.write else 0
        if facts.cached_granularity > 1:
            read -= read % facts.cached_granularity
        if analysis.api == "openai_responses":
            usage: dict[str, Any] = {"input_tokens": total, "input_tokens_details": {"cached_tokens": read, "cache_write_tokens": written}}
        else:
            usage = {"prompt_tokens": total, "prompt_tokens_details": {"cached_tokens": read, "cache_write_tokens": written}}
        return usage, (hit if hit >= 0 else None)


@dataclass(frozen=True)
class OpenAIAnalysis:
    """What an OpenAI request's cache effect depends on (see the module docstring)."""

    model: str
    api: str
    facts: cache_facts.CacheFacts
    tokens: tuple[int, ...]  # cumulative tokens at each block boundary
    keys: tuple[str, ...]  # cache keys (prefix digests) at each boundary
    markable: tuple[bool, ...]  # may carry prompt_cache_breakpoint (system, user and tool content)
    explicit: tuple[int, ...]  # positions carrying prompt_cache_breakpoint
    explicit_only: bool  # prompt_cache_options.mode == "explicit"


def analyse_openai(request: dict[str, Any], api: Api) -> OpenAIAnalysis:
    facts = cache_facts.facts_for(request.get("model"), "openai")
    bounds = boundaries(request, api, 4.0)
    options = request.get("prompt_cache_options")
    return OpenAIAnalysis(
        model=str(request.get("model")), api=api, facts=facts,
        tokens=tuple(b.tokens_est for b in bounds), keys=tuple(f"openai\0{b.digest.hex()}" for b in bounds),
        markable=tuple(breakpoint_eligible(request, api, b) for b in bounds),
        explicit=tuple(b.position for b in bounds if _has_openai_breakpoint(request, api, b)),
        explicit_only=isinstance(options, dict) and options.get("mode") == "explicit",
    )


def _has_openai_breakpoint(request: dict[str, Any], api: Api, b: Boundary) -> bool:
    """Does the block at `b` carry ``prompt_cache_breakpoint``? (system, user and tool content; not assistant output)"""
    if b.role == "assistant":
        return False
    block = part_at(request, api, b)
    return isinstance(block, dict) and block.get("prompt_cache_breakpoint") is not None


# ---------------------------------------------------------------- cache diagnostics (Anthropic)
# The documented semantics (platform.claude.com build-with-claude/cache-diagnostics, read
# 2026-12-06; docs/sessions.md "The provider's verdict"): with the beta header the API keeps a
# fingerprint of each request keyed by its response id; a request naming that id in
# ``diagnostics.previous_message_id`` gets back the first point where the two diverged, in prefix
# order (model, tools, system, messages), with an estimate of the input tokens after it; nothing
# diverged, or the first turn: ``cache_miss_reason`` null. The comparison is about structure, not
# about what was read. Assumptions (not documented): markers are not part of the fingerprint (they
# never change the prefix hash), and history that only grew (the previous request's messages are a
# prefix of this one's) is no divergence.

DIAGNOSTICS_BETA = "cache-diagnosis-2026-04-07"
DIAGNOSTIC_REASONS = ("model_changed", "tools_changed", "system_changed", "messages_changed",
                      "previous_message_not_found", "unavailable")


@dataclass(frozen=True)
class Fingerprint:
    """What the API keeps of one request for cache diagnostics: hashes and token estimates."""

    model: str
    # (section, hash, tokens) per tool, per system block and per message, in prefix order
    items: tuple[tuple[str, str, int], ...]

    @property
    def total_tokens(self) -> int:
        return sum(tokens for _, _, tokens in self.items)


def fingerprint(request: dict[str, Any]) -> Fingerprint:
    """The fingerprint of a valid Messages request (see ``analyse_request``), markers removed."""
    items: list[tuple[str, str, int]] = []

    def add(section: str, value: Any) -> None:
        blocks = [block for _, block in _as_blocks(value, section)] if not isinstance(value, dict) else [value]
        text = "\0".join(canonical_block_json(block) for block in blocks)
        items.append((section, hashlib.sha256(text.encode()).hexdigest(), sum(block_tokens(b) for b in blocks)))

    for _, tool in _as_blocks(request.get("tools"), "tools"):
        add("tools", tool)
    for _, block in _as_blocks(request.get("system"), "system"):
        add("system", block)
    for message in request.get("messages") or []:
        role = str(message.get("role", "")) if isinstance(message, dict) else ""
        content = message.get("content") if isinstance(message, dict) else None
        blocks = [block for _, block in _as_blocks(content, "messages")]
        text = role + "\0" + "\0".join(canonical_block_json(block) for block in blocks)
        items.append(("messages", hashlib.sha256(text.encode()).hexdigest(), sum(block_tokens(b) for b in blocks)))
    return Fingerprint(str(request.get("model")), tuple(items))


def diagnose_against(previous: Fingerprint | None, current: Fingerprint) -> dict[str, Any] | None:
    """The ``cache_miss_reason`` object for ``current`` against ``previous`` (None: no divergence).

    ``previous`` None: the id was not found. ``cache_missed_input_tokens``: the tokens of
    ``current`` from the first differing item on (only for the ``*_changed`` types).
    """
    if previous is None:
        return {"type": "previous_message_not_found", "cache_missed_input_tokens": None}
    if previous.model != current.model:
        return {"type": "model_changed", "cache_missed_input_tokens": current.total_tokens}
    before = 0
    for section in ("tools", "system", "messages"):
        prev = [item for item in previous.items if item[0] == section]
        cur = [item for item in current.items if item[0] == section]
        grown = section == "messages" and len(cur) >= len(prev)
        for i, item in enumerate(cur):
            if i >= len(prev):
                break
            if item[1] != prev[i][1]:
                return {"type": f"{section}_changed", "cache_missed_input_tokens": current.total_tokens - before}
            before += item[2]
        if (section != "messages" and len(cur) != len(prev)) or (section == "messages" and not grown):
            return {"type": f"{section}_changed", "cache_missed_input_tokens": current.total_tokens - before}
        before += sum(item[2] for item in cur[len(prev):])
    return None


# ---------------------------------------------------------------- prompt-cache diagnostics (OpenAI)
# developers.openai.com guides/prompt-caching/diagnostics (read 2026-12-06): a Responses request
# (GPT-5.6+) with ``prompt_cache_options.comparison_response_id`` gets ``prompt_cache_diagnostics``
# on its Response: ``cache_hit``, ``comparison_response_not_found``, ``unavailable``, or
# ``cache_miss`` with a ``reason`` and ``cache_missed_tokens``. Assumptions (the reason words are not
# listed on a page we could read): ``model_changed``, ``tools_changed``, ``instructions_changed``,
# ``input_changed``; a request that continues the baseline with ``previous_response_id`` has the
# baseline's prefix by construction (only model, tools and instructions are compared).

_OPENAI_REASONS = {"model_changed": "model_changed", "tools_changed": "tools_changed",
                   "system_changed": "instructions_changed", "messages_changed": "input_changed"}


def openai_fingerprint(request: dict[str, Any]) -> Fingerprint:
    """A Responses request as a fingerprint: tools, instructions (as system), input items (as messages)."""
    items: list[tuple[str, str, int]] = []

    def add(section: str, value: Any) -> None:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        items.append((section, hashlib.sha256(text.encode()).hexdigest(), math.ceil(len(text) / 4)))

    for tool in request.get("tools") or []:
        add("tools", tool)
    if request.get("instructions") is not None:
        add("system", request.get("instructions"))
    value = request.get("input")
    for item in value if isinstance(value, list) else ([] if value is None else [value]):
        add("messages", item)
    return Fingerprint(str(request.get("model")), tuple(items))


def openai_diagnose(baseline: Fingerprint | None, current: Fingerprint, continues: bool) -> dict[str, Any]:
    """The ``prompt_cache_diagnostics`` object of a Responses reply (see above)."""
    if baseline is None:
        return {"type": "comparison_response_not_found"}
    if continues:  # previous_response_id = the baseline: the input only adds to its conversation
        baseline = Fingerprint(baseline.model, tuple(i for i in baseline.items if i[0] != "messages"))
        current = Fingerprint(current.model, tuple(i for i in current.items if i[0] != "messages"))
    found = diagnose_against(baseline, current)
    if found is None:
        return {"type": "cache_hit"}
    return {"type": "cache_miss", "reason": _OPENAI_REASONS.get(found["type"], "input_changed"),
            "cache_missed_tokens": found.get("cache_missed_input_tokens") or 0}
