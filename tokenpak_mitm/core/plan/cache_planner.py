"""Decide WHERE prompt-cache markers go in an Anthropic Messages request (pure: no I/O).

Input: the `json.loads` view of the request, the options, and (optionally) the byte size
of each block so prefix lengths can be estimated. Output: a `Plan` naming the blocks to
mark; `cache_insert` turns it into byte splices.

Placement (at most 4 markers, the provider's limit, all with one TTL):
  1. the last tool definition: caches the tools prefix on its own;
  2. the last system block: tools + system survive a change of conversation;
  3. the final breakpoint: the last eligible block of the conversation. It writes the
     entry the NEXT request reads;
  4. an intermediate breakpoint, only when this turn added 20+ blocks. Reads look back
     at most 20 block positions from a breakpoint (the breakpoint itself counts as the
     first). Last turn's final breakpoint was the last eligible block of the previous
     user message (the one before the latest assistant turn): the planner is stateless
     and that message was the conversation's tail then. If this turn's final breakpoint
     is 20 or more blocks past it, the read would not reach it, so we mark that exact
     position again; that read then hits, and the final marker writes the new entry.
     Blocks are counted as the provider counts them: every content block of every
     message in order, a string `content` being one block.

Never marked: `thinking`/`redacted_thinking` (the API rejects the field), empty or
whitespace-only text (400 "cannot be set for empty text blocks"), block types we do not
know to accept the field (an unknown type could 400), and blocks inside a tool_result's
or document's `content` (the tool_result block itself is marked). We walk back to the
nearest eligible block instead.

Volatile blocks (timestamps, a time of day, UUIDs, request ids): in `tools` and `system`
the section is re-rendered every request, so a marker on a changing block writes an entry
nobody ever reads; we move it to the nearest earlier stable block when one exists.
Messages are history, frozen once sent, so the rule does not apply there. A date alone
("today's date is 2026-12-06") is stable within the day and marked; when the last system
block carries one, the system block before it is marked too (free, while a slot is left),
so the day turning costs only what follows the date.

Per-turn trailers (`per_turn_trailer`): a conversation ending with a trailing system message
or a trailing text block after the user's content (a coding agent's per-turn reminder, which
the next request drops) gets its final breakpoint on the block before the trailer.

Stand-down: if the client wrote ANY `cache_control` (on a tool, system block, message,
message block, a block nested in a block's `content`/`source.content`, or the top-level
field; even `null`), the client owns caching. Adding ours could exceed 4 markers or put
a 5m marker before a client 1h one (both 400), so we change nothing. This also makes
insertion idempotent: a body we already spliced is left alone.

Top-level mode adds the provider's automatic-caching field instead; it is sized like the
final breakpoint. It gets no intermediate breakpoint (the provider's 20-block lookback
applies to it too), which is why `auto` is the default.

Minimum length: each breakpoint must cover at least the model's minimum cacheable prefix
(below it the API silently does not cache). See `estimate_tokens` for the estimator.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, NamedTuple

from tokenpak_mitm.core.plan.cache_facts import LOOKBACK_BLOCKS, MAX_BREAKPOINTS, facts_for
from tokenpak_mitm.core.row import CacheDecision

__all__ = [
    "CacheOptions", "Breakpoint", "Plan", "Note", "Sizes", "marker_for", "DECISIONS", "MAX_MARKERS", "LOOKBACK_BLOCKS",
    "BYTES_PER_TOKEN", "plan", "count_markers", "has_client_cache_control", "minimum_cacheable_tokens",
    "estimate_tokens", "is_eligible_block", "is_volatile_text", "marker_slots", "per_turn_trailer", "is_daily_text",
]

MAX_MARKERS = MAX_BREAKPOINTS  # "A maximum of 4 blocks with cache_control may be provided." (cache_facts)

DECISIONS: Mapping[CacheDecision, str] = {  # every row.CacheDecision the planner can return
    "inserted": "one or more markers (or the top-level field) were spliced in",
    "stood_down": "the client already uses cache_control somewhere; its bytes go upstream untouched",
    "below_minimum": "eligible breakpoints exist but every estimated prefix is below the model's minimum",
    "off": "mode is off; the body is not even parsed",
    "not_json": "the (decoded) body is not strict UTF-8 JSON that Python's json can parse",
    "not_messages": "JSON, but not a well-formed Messages request (no messages array, wrong shapes)",
    "no_eligible_block": "nothing in tools, system or messages may carry a marker",
    "not_worth": "the learning planner found no marker expected to pay (each candidate's reason is on the row)",
    "encoded_unsupported": "Content-Encoding unknown, stacked, or the body does not decode",
    "too_large": "the body (raw or decoded) is over the size cap",
    "error": "an internal failure or scanner/parser disagreement; the original body is returned",
}

BYTES_PER_TOKEN = 3
# Block types whose request schema carries `cache_control` (protocols.md 1.2). `text` is
# handled separately (it must be non-blank).
MARKABLE_TYPES = frozenset({
    "image", "document", "search_result", "tool_use", "tool_result", "server_tool_use",
    "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
    "tool_search_tool_result", "tool_reference", "container_upload",
})
# Things that change on every request: a clock (ISO date-time, hh:mm:ss), UUIDs, request ids, "current
# time" / "the time is". A date alone ("2026-08-21", "today's date is 2026-08-21", "today is Friday")
# changes at most once a day: it is stable, and marked (docs/caching.md, "Stable within a day"); a
# date phrase becomes volatile only with a time of day (hh:mm) in the same text.
# Volatile content, split by the character each kind needs so most text is ruled out by a
# C-level `in` test before any regex runs (one case-insensitive alternation cost ~7 ms on a
# 40 KB system prompt; agents resend that prompt every turn, hence also the memo below).
_CLOCK = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}|\b\d{1,2}:\d{2}:\d{2}\b")  # ISO date-time, hh:mm:ss
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
_PHRASE = re.compile(r"\b(?:current\s+time|the\s+time\s+is)\b|\brequest[-_ ]?id\b")  # matched against lower-cased text
_PHRASE_WORDS = ("time", "request")
_DAY_PHRASE = re.compile(r"\b(?:today\s+is|today's\s+date|current\s+date|the\s+date\s+is)\b")  # a date: stable for a day
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_HOUR_MINUTE = re.compile(r"\b\d{1,2}:\d{2}\b")  # ... unless a time of day comes with it


@dataclass(frozen=True)
class CacheOptions:
    """mode: auto | off | top-level; ttl: 5m | 1h | auto.

    A fixed ttl is shared by every marker we insert. `auto` lets the learning planner choose per
    marker from the gaps it has observed (1h only where 2x-write-once beats 1.25x-rewrite-each-
    time, and never after a 5m marker); with no history it is 5m.
    """

    mode: str = "auto"
    ttl: str = "5m"

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "off", "top-level"):
            raise ValueError(f"mode must be auto, off or top-level, not {self.mode!r}")
        if self.ttl not in ("5m", "1h", "auto"):
            raise ValueError(f"ttl must be 5m, 1h or auto, not {self.ttl!r}")

    @property
    def fixed_ttl(self) -> str:
        """The TTL used when nothing was learned: the option itself, or 5m for auto."""
        return "5m" if self.ttl == "auto" else self.ttl

    @property
    def marker(self) -> dict[str, str]:
        """The cache_control value for `fixed_ttl` (see `marker_for`)."""
        return marker_for(self.fixed_ttl)


def marker_for(ttl: str) -> dict[str, str]:
    """The cache_control value: no `ttl` key for 5m, the API default, so bytes stay minimal."""
    return {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": ttl}


@dataclass(frozen=True)
class Breakpoint:
    """A block to mark. section: tools | system | messages.

    tools: `index` is the tool. system: `index` is the block (0 for a string system).
    messages: `index` is the message, `block` the content block (None: string content).
    `wraps_string` means the target is a JSON string that must become a one-block list.
    purpose: tools | system | final | intermediate (stateless rules), or the learning planner's
    reason (see `learning_planner.REASONS`). ttl: this marker's TTL; None = the option's.
    """

    section: str
    index: int
    block: int | None
    wraps_string: bool
    purpose: str
    prefix_tokens_est: int
    ttl: str | None = None


@dataclass(frozen=True)
class Plan:
    decision: CacheDecision
    breakpoints: tuple[Breakpoint, ...] = ()
    top_level: bool = False
    prefix_tokens_est: int | None = None  # largest estimated prefix among candidate breakpoints
    model: str | None = None
    minimum_tokens: int | None = None
    notes: tuple[Note, ...] = ()  # why each marker was placed and each candidate skipped (learning planner)


@dataclass(frozen=True)
class Note:
    """One decision about one candidate position: placed (ttl set) or skipped (ttl None)."""

    at: str  # e.g. "messages.3.content.1", "system.0", "tools.9"
    reason: str
    tokens_est: int
    ttl: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"at": self.at, "why": self.reason, "tokens": self.tokens_est}
        if self.ttl is not None:
            out["ttl"] = self.ttl
        else:
            out["skipped"] = True
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class Sizes:
    """Byte size of each tool, system block and message content block (string content = 1 block)."""

    tools: tuple[int, ...] = ()
    system: tuple[int, ...] = ()
    messages: tuple[tuple[int, ...], ...] = field(default_factory=tuple)

    @classmethod
    def measure(cls, request: Mapping[str, Any]) -> Sizes:
        """Sizes from compact re-serialization: for callers that have no original bytes."""

        def size(value: object) -> int:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            return len(text.encode("utf-8", "surrogatepass"))

        tools, system = request.get("tools"), request.get("system")
        return cls(
            tools=tuple(map(size, tools)) if isinstance(tools, list) else (),
            system=(size(system),) if isinstance(system, str) else tuple(map(size, system or ())),
            messages=tuple(
                (size(m["content"]),) if isinstance(m["content"], str) else tuple(map(size, m["content"]))
                for m in request["messages"]
            ),
        )


def estimate_tokens(prefix_bytes: int) -> int:
    """Tokens in a prefix of `prefix_bytes` JSON bytes: ceil(bytes / 3).

    Errs HIGH on purpose. The estimate only decides whether to skip; a wrong skip forfeits
    a 90% read discount, while a marker on a too-short prefix costs nothing (the API
    silently does not cache it: no error, no write premium). Claude tokenizers average
    ~3.5-4 bytes per token on English prose, and JSON bytes exceed the text they carry
    (quotes, keys, escapes; base64 images are far fewer tokens than bytes), so /3
    over-counts typical content. It can under-count only token-dense text (code-golf,
    hex, CJK at ~3 bytes per token) near the threshold. The hidden tool-use system prompt
    (a few hundred tokens when tools are present) is not counted.
    """
    return math.ceil(prefix_bytes / BYTES_PER_TOKEN)


def minimum_cacheable_tokens(model: object) -> int:
    """The model's minimum cacheable prefix, from the shared table (`cache_facts`).

    An unknown model gets the table's fallback (1,024): a marker on a prefix below the real
    minimum costs nothing (the API silently does not cache it), so the fallback only decides
    which short prefixes we do not bother marking.
    """
    return facts_for(model, "anthropic").minimum_tokens


def is_eligible_block(block: object) -> bool:
    """May this content block carry cache_control? (A string content is an implied text block.)"""
    if isinstance(block, str):
        return bool(block.strip())
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return isinstance(text, str) and bool(text.strip())
    return kind in MARKABLE_TYPES


def is_volatile_text(text: object) -> bool:
    return isinstance(text, str) and _volatile(text)


def is_daily_text(text: object) -> bool:
    """A date without a time of day ("today's date is 2026-12-06"): stable, but it changes when the day turns."""
    if not isinstance(text, str) or is_volatile_text(text):
        return False
    if "-" in text and _DATE.search(text) is not None:
        return True
    low = text.lower()
    return ("date" in low or "today" in low) and _DAY_PHRASE.search(low) is not None


@lru_cache(maxsize=256)
def _volatile(text: str) -> bool:
    if ":" in text and _CLOCK.search(text):
        return True
    if "-" in text and _UUID.search(text):
        return True
    low = text.lower()
    if any(w in low for w in _PHRASE_WORDS) and _PHRASE.search(low) is not None:
        return True
    return ":" in text and _HOUR_MINUTE.search(text) is not None and _DAY_PHRASE.search(low) is not None


def marker_slots(request: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every object that can carry a block marker, in the provider's order.

    Tools, then system blocks, then each message's content blocks; a block's nested
    `content` / `source.content` blocks follow it (tool_result, document, search_result).
    Iterative, depth-first, document order. Tool input schemas and tool_use inputs are
    never entered: a `cache_control` there is user data, not a marker.
    """
    tools, messages = request.get("tools"), request.get("messages")
    if isinstance(tools, list):
        yield from (tool for tool in tools if isinstance(tool, dict))
    sections = [request.get("system")]
    if isinstance(messages, list):
        sections += [m.get("content") for m in messages if isinstance(m, dict)]
    for section in sections:
        pending = [iter(section)] if isinstance(section, list) else []
        while pending:
            block = next(pending[-1], _END)
            if block is _END:
                pending.pop()
                continue
            if not isinstance(block, dict):
                continue
            yield block
            source = block.get("source")
            nested = [block.get("content"), source.get("content") if isinstance(source, dict) else None]
            pending += [iter(n) for n in reversed(nested) if isinstance(n, list)]


def has_client_cache_control(request: Mapping[str, Any]) -> bool:
    """True if the client wrote a `cache_control` key (even null): top level, a marker slot, or a message.

    (A message-level field is not a documented marker place, but a client writing one is
    managing caching itself.)
    """
    if "cache_control" in request or any("cache_control" in slot for slot in marker_slots(request)):
        return True
    messages = request.get("messages")
    return isinstance(messages, list) and any(isinstance(m, dict) and "cache_control" in m for m in messages)


def count_markers(request: object) -> tuple[int, tuple[str, ...]]:
    """Client markers and their TTLs in the provider's order: tools, system, messages, top-level.

    Counts every non-null `cache_control` on a marker slot (see `marker_slots`); the
    top-level field counts as one slot, placed last (it lands on the last cacheable
    block). A marker without `ttl` is "5m", the API default.
    """
    if not isinstance(request, dict):
        return 0, ()
    ttls = []
    for node in (*marker_slots(request), request):
        marker = node.get("cache_control")
        if isinstance(marker, dict):
            ttl = marker.get("ttl")
            ttls.append(ttl if isinstance(ttl, str) else "5m")
    return len(ttls), tuple(ttls)


_END = object()


def plan(request: object, opts: CacheOptions, sizes: Sizes | Callable[[], Sizes] | None = None) -> Plan:
    """Decide the markers for one request.

    `sizes` may be a zero-argument callable: it is called only once a breakpoint has to be
    sized, so requests that stand down never pay for measuring (e.g. scanning the bytes).
    None measures by re-serializing.
    """
    if opts.mode == "off":
        return Plan("off")
    if not _is_messages_request(request):
        return Plan("not_messages")
    assert isinstance(request, dict)
    model = request.get("model") if isinstance(request.get("model"), str) else None
    if has_client_cache_control(request):
        return Plan("stood_down", model=model)
    candidates = _candidates(request, opts.mode)
    if not candidates:
        return Plan("no_eligible_block", model=model)
    if sizes is None:
        sizes = Sizes.measure(request)
    elif callable(sizes):
        sizes = sizes()
    minimum = minimum_cacheable_tokens(model)
    prefix = _PrefixBytes(sizes)
    sized = [
        Breakpoint(sec, idx, blk, wraps, purpose, estimate_tokens(prefix.at(sec, idx, blk)))
        for sec, idx, blk, wraps, purpose in candidates
    ]
    largest = max(bp.prefix_tokens_est for bp in sized)
    kept = tuple(bp for bp in sized if bp.prefix_tokens_est >= minimum)
    if not kept:
        return Plan("below_minimum", prefix_tokens_est=largest, model=model, minimum_tokens=minimum)
    if opts.mode == "top-level":
        return Plan("inserted", top_level=True, prefix_tokens_est=largest, model=model, minimum_tokens=minimum)
    if len(kept) > MAX_MARKERS:  # the extra system marker before a dated block goes first
        extra = [bp for bp in kept if bp.purpose == "system"][:-1]
        kept = tuple(bp for bp in kept if bp not in extra[: len(kept) - MAX_MARKERS])
    return Plan("inserted", kept[:MAX_MARKERS], prefix_tokens_est=largest, model=model, minimum_tokens=minimum)


StatelessPurpose = Literal["tools", "system", "final", "intermediate"]


class _Candidate(NamedTuple):
    """A breakpoint position before the minimum-length filter."""

    section: str  # tools | system | messages
    idx: int  # tool, system block or message index
    block: int | None
    wraps: bool  # a string that must become a one-block list to carry a marker
    purpose: StatelessPurpose


def _candidates(request: dict[str, Any], mode: str) -> list[_Candidate]:
    """Breakpoint positions before the minimum-length filter, in tools -> system -> messages order."""
    tools, system, messages = request.get("tools") or [], request.get("system"), request["messages"]
    blocks = _message_blocks(messages)
    final = _last_eligible(blocks, len(blocks))
    trailer = per_turn_trailer(messages)
    if trailer is not None and mode != "top-level":  # never the last breakpoint: the next request drops it
        start = next((g for g, (msg, blk, _) in enumerate(blocks) if msg == trailer[0] and (trailer[1] is None or blk == trailer[1])),
                     len(blocks))
        final = _last_eligible(blocks, start) if _last_eligible(blocks, start) is not None else final
    if mode == "top-level":
        # The provider places the automatic breakpoint itself; we only need its prefix to size it.
        if final is not None:
            msg, blk, block = blocks[final]
            return [_Candidate("messages", msg, blk, isinstance(block, str), "final")]
        sys_idx = _system_target(system)
        if sys_idx is not None:
            return [_Candidate("system", sys_idx, None, isinstance(system, str), "system")]
        return [_Candidate("tools", len(tools) - 1, None, False, "tools")] if tools else []
    found: list[_Candidate] = []
    if tools:
        stable = [i for i, t in enumerate(tools) if not is_volatile_text(t.get("description"))]
        found.append(_Candidate("tools", _stable_or_last(stable, len(tools) - 1), None, False, "tools"))
    sys_idx = _system_target(system)
    if sys_idx is not None:
        dated = isinstance(system, list) and is_daily_text(system[sys_idx].get("text"))
        before = _system_target(system[:sys_idx]) if dated and isinstance(system, list) and sys_idx > 0 else None
        if before is not None:  # the day turning then costs only what follows the date (free: before the final)
            found.append(_Candidate("system", before, None, False, "system"))
        found.append(_Candidate("system", sys_idx, None, isinstance(system, str), "system"))
    if final is not None:
        previous = _previous_breakpoint(messages, blocks)
        if previous is not None and final - previous >= LOOKBACK_BLOCKS:
            msg, blk, block = blocks[previous]
            found.append(_Candidate("messages", msg, blk, isinstance(block, str), "intermediate"))
        msg, blk, block = blocks[final]
        found.append(_Candidate("messages", msg, blk, isinstance(block, str), "final"))
    return found


def per_turn_trailer(messages: object) -> tuple[int, int | None] | None:
    """Where a per-turn trailer starts, if the conversation ends with one: (message, block; None: the whole message).

    Coding agents end each request with a short block that the next request does not repeat (a
    reminder with the time and the to-do list): the next request drops it and adds the reply, the
    new turn and a new reminder, so an entry written on it is never read. Two shapes: a trailing
    mid-conversation system message (``{"role": "system"}`` as the last of ``messages``, Anthropic),
    and a trailing text block after other content in the last user message. Only a shape: the
    learning planner confirms it per client from the traffic (``learning_planner.Trailers``).
    """
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = len(messages) - 1
    if messages[-1].get("role") == "system":
        return (last, None) if last > 0 else None
    return _trailing_block(messages, last)


def _trailing_block(messages: list[Any], index: int) -> tuple[int, int | None] | None:
    message = messages[index]
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list) or len(content) < 2:
        return None
    tail = content[-1]
    if isinstance(tail, dict) and tail.get("type") == "text" and any(is_eligible_block(b) for b in content[:-1]):
        return (index, len(content) - 1)
    return None


def _message_blocks(messages: list[Any]) -> list[tuple[int, int | None, object]]:
    """Every message block in provider order: (message index, block index or None, block)."""
    flat: list[tuple[int, int | None, object]] = []
    append = flat.append
    for i, message in enumerate(messages):
        content = message["content"]
        if isinstance(content, str):
            append((i, None, content))
        else:
            for j, block in enumerate(content):
                append((i, j, block))
    return flat


def _last_eligible(blocks: Sequence[tuple[int, int | None, object]], stop: int) -> int | None:
    """Index (into `blocks`) of the last eligible block before `stop`, walking backwards."""
    for g in range(stop - 1, -1, -1):
        if is_eligible_block(blocks[g][2]):
            return g
    return None


def _previous_breakpoint(messages: list[Any], blocks: list[tuple[int, int | None, object]]) -> int | None:
    """Where the previous turn's final marker went: see the module docstring, point 4."""
    last = len(messages) - 1
    assistant = next((i for i in range(last - 1, -1, -1) if messages[i].get("role") == "assistant"), None)
    if assistant is None:
        return None
    user = next((i for i in range(assistant - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if user is None:
        return None
    end = next((g for g, (msg, _, _) in enumerate(blocks) if msg > user), len(blocks))
    return _last_eligible(blocks, end)


def _system_target(system: object) -> int | None:
    if isinstance(system, str):
        return 0 if is_eligible_block(system) else None
    if not isinstance(system, list):
        return None
    eligible = [i for i, block in enumerate(system) if is_eligible_block(block)]
    if not eligible:
        return None
    stable = [i for i in eligible if not is_volatile_text(system[i].get("text"))]
    return _stable_or_last(stable, eligible[-1])


def _stable_or_last(stable: list[int], last: int) -> int:
    """The last block if it is stable, else the nearest earlier stable one, else the last anyway."""
    earlier = [i for i in stable if i <= last]
    return earlier[-1] if earlier else last


def _is_messages_request(request: object) -> bool:
    """The shapes the Messages API accepts and we can address (anything else: leave it alone)."""
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return False
    tools, system = request.get("tools"), request.get("system")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        return False
    if system is not None and not isinstance(system, str):
        if not (isinstance(system, list) and all(isinstance(b, dict) for b in system)):
            return False
    for message in request["messages"]:
        if not isinstance(message, dict):
            return False
        content = message.get("content")
        if not isinstance(content, str) and not (isinstance(content, list) and all(isinstance(b, dict) for b in content)):
            return False
    return True


class _PrefixBytes:
    """Bytes of tools + system + messages up to and including a block (the provider's prefix order)."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.tools_total = sum(sizes.tools)
        self.system_total = sum(sizes.system)
        self.message_starts: list[int] = []  # bytes before each message's first block
        running = self.tools_total + self.system_total
        for blocks in sizes.messages:
            self.message_starts.append(running)
            running += sum(blocks)

    def at(self, section: str, index: int, block: int | None) -> int:
        if section == "tools":
            return sum(self.sizes.tools[: index + 1])
        if section == "system":
            return self.tools_total + sum(self.sizes.system[: index + 1])
        blocks = self.sizes.messages[index]
        return self.message_starts[index] + sum(blocks[: (block if block is not None else 0) + 1])
