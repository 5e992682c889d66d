"""OpenAI explicit prompt-cache breakpoints (GPT-5.6 and later): where, and the byte splice.

Why: from GPT-5.6 on OpenAI bills cache writes (1.25x input) and accepts explicit breakpoints,
but its implicit breakpoint sits near the latest message, so a long stable prefix followed by a
changing suffix (one document, many questions; an agent's system prompt and tools) can miss
entirely. Clients such as Codex cannot emit the field. This module places ONE explicit breakpoint
at the stable boundary and, so requests sharing that prefix are routed together, a
``prompt_cache_key`` derived from it.

Pure: bytes / JSON / an optional ``PrefixIndex`` and the time in, an ``InsertResult`` out; never
raises. Every change is a byte INSERTION into the client's body (the same splicing as Anthropic's
``cache_insert``): ``remove_spans(decoded_output, result.spans) == decoded_input``.

Where the breakpoint goes:

* With history (a ``PrefixIndex``): the deepest block boundary whose prefix digest
  (``prefix_index.boundaries``) was seen in an earlier request, that may carry a breakpoint and
  whose estimated prefix reaches the model's minimum (``cache_facts``: 1,024 tokens for GPT-5.6+).
  The whole prompt recurring (a retry) does not count: the boundary must leave a suffix.
* Without history, or when nothing recurs yet: the stateless rule, the end of the last
  non-assistant block before the final user turn (the system prompt and shared document before a
  new question; the conversation so far before the newest turn), if it reaches the minimum.

Which blocks may carry it (provider-facts-2026-11.md: "system, user and tool-result content; not
assistant output"): text parts (``text`` in Chat Completions, ``input_text`` in Responses) of
messages whose role is not ``assistant``, non-blank. A string ``content`` is wrapped into a
one-part list carrying the field (the part type the API uses for that message kind).

Stand-down: if the client set ANY cache field (``prompt_cache_key``, ``prompt_cache_options``,
``prompt_cache_retention``, a ``prompt_cache_breakpoint`` anywhere, or a ``cache_control``
anywhere) the body goes upstream byte-identical: the client manages caching.

Field shapes (ASSUMPTIONS, derived from the research notes; the exact schema is not on disk):
``"prompt_cache_breakpoint": {"mode": "explicit"}`` as a member of the content part, the form the
notes quote for ``input_text`` blocks (protocols.md §3.2), taken to be the same on Chat
Completions ``text`` parts; ``prompt_cache_key`` a top-level string ("tpk-" + 24 hex digits of the
prefix digest, well under the key's documented use as a short routing key).
``prompt_cache_options`` is NOT added: its ``mode`` switches implicit caching, and "an implicit
breakpoint uses one of the four slots" says the default mode already honours explicit ones.
Cost: marking the stable boundary adds no write premium of its own on the assumption that, as
on Anthropic, written tokens are counted once per request (OpenAI's ``cache_write_tokens`` is a
part of ``input_tokens``); the implicit breakpoint writes the whole prompt at 1.25x anyway.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from .cache_facts import MAX_BREAKPOINTS, OPENAI_GPT56, facts_for
from .cache_insert import (
    _CODECS,
    _NOT_JSON,
    MAX_BODY_BYTES,
    InsertResult,
    Span,
    _normalize_encoding,
    _parse,
    _splice,
    _TooLarge,
)
from .cache_planner import DECISIONS
from .jsonscan import BodyMap, Loc, agrees_with, scan
from .prefix_index import Boundary, PrefixIndex, boundaries
from .row import CacheDecision

__all__ = [
    "BREAKPOINT",
    "KEY_PREFIX",
    "OPENAI_DECISIONS",
    "Api",
    "Decide",
    "OpenAIPlan",
    "cache_key",
    "client_cache_fields",
    "insert_openai_breakpoint",
    "learning_decide",
    "plan_openai",
    "plan_positions",
    "supports_breakpoints",
]

# The Anthropic planner's decisions, plus one: a model that takes no explicit breakpoints.
OPENAI_DECISIONS: Final[Mapping[CacheDecision, str]] = {
    **DECISIONS,
    "not_supported": "the model takes no explicit breakpoints (before GPT-5.6): its caching is automatic",
}

Api = Literal["openai_chat", "openai_responses"]
BREAKPOINT: Final[Mapping[str, str]] = {"mode": "explicit"}
KEY_PREFIX: Final = "tpk-"
_BREAKPOINT_MEMBER: Final = b'"prompt_cache_breakpoint":' + json.dumps(dict(BREAKPOINT), separators=(",", ":")).encode()
_TOP_LEVEL_FIELDS: Final = ("prompt_cache_key", "prompt_cache_options", "prompt_cache_retention")
_EXPLICIT_ONLY: Final[dict[str, str]] = {"mode": "explicit"}  # prompt_cache_options, learning planner only
_TEXT_PART: Final[Mapping[str, str]] = {"openai_chat": "text", "openai_responses": "input_text"}
_ITEMS_KEY: Final[Mapping[str, str]] = {"openai_chat": "messages", "openai_responses": "input"}


@dataclass(frozen=True, slots=True)
class OpenAIPlan:
    """decision: a row.CacheDecision. targets: (item index, part index) per breakpoint in prefix
    order (part None = wrap a string content). reason: recurring_prefix | stateless | learning.
    digest: the deepest breakpoint's prefix digest (the prompt_cache_key). explicit_only: also send
    ``prompt_cache_options: {"mode": "explicit"}`` (only when a learning planner asks for it)."""

    decision: CacheDecision
    targets: tuple[tuple[int, int | None], ...] = ()
    reason: str | None = None
    prefix_tokens_est: int | None = None
    digest: bytes | None = None
    positions: tuple[int, ...] = ()
    explicit_only: bool = False
    client_fields: int = 0
    digests: tuple[bytes, ...] = ()  # every boundary's digest, for recording in the index


# A learning planner's answer for one parsed request: (boundary positions, explicit_only), or
# None to leave the request alone (e.g. learning_planner.plan_openai, which records by itself).
Decide = Callable[[dict[str, Any]], "tuple[Sequence[int], bool] | None"]


def supports_breakpoints(model: object) -> bool:
    """GPT-5.6 and later take explicit breakpoints (cache_facts: the GPT-5.6+ entry)."""
    return isinstance(model, str) and facts_for(model, "openai") is OPENAI_GPT56


def client_cache_fields(request: Mapping[str, Any]) -> int:
    """How many cache fields the client set: top-level options plus every breakpoint / cache_control
    anywhere in the body (tool schemas included: conservative, a false positive only stands down)."""
    found = sum(1 for key in _TOP_LEVEL_FIELDS if key in request)
    pending: list[Any] = [v for k, v in request.items() if k not in _TOP_LEVEL_FIELDS]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            found += sum(1 for k in node if k in ("prompt_cache_breakpoint", "cache_control"))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found


def _eligible(item: object, part: object, api: Api) -> bool:
    if not isinstance(item, dict) or item.get("role") == "assistant" or not isinstance(item.get("role"), str):
        return False
    if api == "openai_responses" and item.get("type", "message") != "message":
        return False
    if isinstance(part, str):
        return bool(part.strip())
    return (isinstance(part, dict) and part.get("type") == _TEXT_PART[api]
            and isinstance(part.get("text"), str) and bool(part["text"].strip()))


def plan_openai(request: object, api: Api, index: PrefixIndex | None = None, now: float = 0.0) -> OpenAIPlan:
    """Decide the breakpoint for one request (see the module docstring). Does not record."""
    if not isinstance(request, dict):
        return OpenAIPlan("not_messages")
    if not supports_breakpoints(request.get("model")):
        return OpenAIPlan("not_supported")
    fields = client_cache_fields(request)
    if fields:
        return OpenAIPlan("stood_down", client_fields=fields)
    items = request.get(_ITEMS_KEY[api])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return OpenAIPlan("not_messages")
    bounds = boundaries(request, api)
    if not bounds:
        return OpenAIPlan("no_eligible_block")
    digests = tuple(b.digest for b in bounds)
    minimum = facts_for(request.get("model"), "openai").minimum_tokens

    def eligible(b: Boundary) -> bool:
        return _eligible_boundary(items, b, api)

    last = len(bounds) - 1
    if index is not None:
        stats = index.stats([b.digest for b in bounds], now)
        for b in reversed(bounds[:last]):
            if stats[b.position] is not None and eligible(b) and b.tokens_est >= minimum:
                return _chosen(b, "recurring_prefix", digests)
    final_user = next((i for i in range(len(items) - 1, -1, -1) if items[i].get("role") == "user"), None)
    candidates = [b for b in bounds if final_user is not None and b.message is not None and b.message < final_user and eligible(b)]
    if not candidates:
        return OpenAIPlan("no_eligible_block", digests=digests)
    b = candidates[-1]
    if b.tokens_est < minimum:
        return OpenAIPlan("below_minimum", prefix_tokens_est=b.tokens_est, digests=digests)
    return _chosen(b, "stateless", digests)


def _chosen(b: Boundary, reason: str, digests: tuple[bytes, ...]) -> OpenAIPlan:
    assert b.message is not None
    return OpenAIPlan("inserted", ((b.message, b.block),), reason, b.tokens_est, b.digest, (b.position,), False, 0, digests)


def learning_decide(memory: Any, api: Api, now: float) -> Decide:
    """``decide`` backed by ``learning_planner.plan_openai`` (which records in ``memory`` itself).

    Its "unchanged" (nothing recurs yet, or a continuing conversation it leaves to the implicit
    breakpoint) leaves the request alone; only "inserted" is spliced.
    """
    from . import learning_planner

    def decide(request: dict[str, Any]) -> tuple[Sequence[int], bool] | None:
        plan, _ticket = learning_planner.plan_openai(request, api, memory, now)
        return (plan.positions, plan.explicit_only) if plan.decision == "inserted" else None

    return decide


def plan_positions(request: object, api: Api, positions: Sequence[int], explicit_only: bool = False) -> OpenAIPlan:
    """A plan from boundary positions another planner chose (``learning_planner.plan_openai``).

    Every position must end a part this module may mark (see ``_eligible``) or the plan is
    ``error``; at most 4 breakpoints count (the implicit one takes a slot unless explicit_only).
    The stand-down and model checks apply as in ``plan_openai``.
    """
    if not isinstance(request, dict):
        return OpenAIPlan("not_messages")
    if not supports_breakpoints(request.get("model")):
        return OpenAIPlan("not_supported")
    fields = client_cache_fields(request)
    if fields:
        return OpenAIPlan("stood_down", client_fields=fields)
    items = request.get(_ITEMS_KEY[api])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return OpenAIPlan("not_messages")
    bounds = boundaries(request, api)
    digests = tuple(b.digest for b in bounds)
    chosen = sorted(set(positions))
    if not chosen:
        return OpenAIPlan("not_worth", digests=digests)
    if len(chosen) > MAX_BREAKPOINTS - (0 if explicit_only else 1) or not all(0 <= p < len(bounds) for p in chosen):
        return OpenAIPlan("error", digests=digests)
    picked = [bounds[p] for p in chosen]
    if not all(_eligible_boundary(items, b, api) for b in picked):
        return OpenAIPlan("error", digests=digests)
    deepest = picked[-1]
    targets = tuple((b.message, b.block) for b in picked if b.message is not None)
    return OpenAIPlan("inserted", targets, "learning", deepest.tokens_est, deepest.digest, tuple(chosen), explicit_only, 0, digests)


def _eligible_boundary(items: list[dict[str, Any]], b: Boundary, api: Api) -> bool:
    if b.section != "messages" or b.message is None or b.message >= len(items):
        return False
    item = items[b.message]
    content = item.get("content")
    part = content if b.block is None else (content[b.block] if isinstance(content, list) and b.block < len(content) else None)
    return _eligible(item, part, api)


def insert_openai_breakpoint(body: bytes, content_encoding: str | None, api: Api, *,
                             index: PrefixIndex | None = None, now: float = 0.0, decide: Decide | None = None) -> InsertResult:
    """Splice the breakpoint(s) (and a prompt_cache_key) into an OpenAI request body; never raises.

    Without ``decide``, ``plan_openai`` places one breakpoint; with an index the request's
    boundaries are recorded in it (the breakpoint's prefix as written), so later requests find
    what recurs. With ``decide`` (a learning planner that records by itself), its positions are
    spliced instead (``plan_positions``).
    """
    try:
        return _insert(body, content_encoding, api, index, now, decide)
    except Exception:  # noqa: BLE001 - the contract is "never raise, never corrupt"
        return _unchanged(body, "error")


def _unchanged(body: bytes, decision: CacheDecision, **fields: Any) -> InsertResult:
    values: dict[str, Any] = {"client_markers": 0, "client_ttls": (), "prefix_tokens_est": None, "model": None, "content_encoding": None}
    values.update(fields)
    return InsertResult(body=body, spans=(), decision=decision, markers_inserted=0, **values)


def _insert(body: bytes, content_encoding: str | None, api: Api, index: PrefixIndex | None, now: float,
            decide: Decide | None) -> InsertResult:
    encoding = _normalize_encoding(content_encoding)
    if not isinstance(body, bytes) or len(body) > MAX_BODY_BYTES:
        return _unchanged(body, "too_large", content_encoding=encoding)
    codec, flavor, decoded = None, 0, body
    if encoding is not None:
        codec = _CODECS.get(encoding)
        if codec is None:
            return _unchanged(body, "encoded_unsupported", content_encoding=encoding)
        try:
            decoded, flavor = codec.decode(body)
        except _TooLarge:
            return _unchanged(body, "too_large", content_encoding=encoding)
        except Exception:  # noqa: BLE001 - any codec failure means "cannot read it"
            return _unchanged(body, "encoded_unsupported", content_encoding=encoding)
    if not _names_supported_model(decoded):
        return _unchanged(body, "not_supported", content_encoding=encoding)  # no parse for older models
    request = _parse(decoded)
    if request is _NOT_JSON:
        return _unchanged(body, "not_json", content_encoding=encoding)
    if not isinstance(request, dict):
        return _unchanged(body, "not_messages", content_encoding=encoding)
    model = request.get("model") if isinstance(request.get("model"), str) else None
    if decide is not None and supports_breakpoints(model) and not client_cache_fields(request):
        answer = decide(request)
        decided = plan_positions(request, api, *answer) if answer is not None else OpenAIPlan("not_worth")
        index = None  # the learning planner recorded the request itself
    else:
        decided = plan_openai(request, api, index, now)
    seen: dict[str, Any] = {"client_markers": decided.client_fields, "client_ttls": (), "content_encoding": encoding,
                             "model": model, "prefix_tokens_est": decided.prefix_tokens_est}
    if index is not None and decided.digests:
        index.record(decided.digests, now, writes=dict.fromkeys(decided.positions, "30m"))
    if decided.decision != "inserted":
        return _unchanged(body, decided.decision, **seen)
    key = _ITEMS_KEY[api]
    body_map = scan(decoded, messages_key=key)
    if not agrees_with(request, body_map, messages_key=key):
        return _unchanged(body, "error", **seen)
    spans = _spans(decided, body_map, api)
    spliced = _splice(decoded, spans)
    if not _landed(spliced, decided, api):
        return _unchanged(body, "error", **seen)
    out = spliced
    if codec is not None:
        out = codec.encode(spliced, flavor)
        if codec.decode(out)[0] != spliced:
            return _unchanged(body, "error", **seen)
    return InsertResult(out, spans, "inserted", len(decided.targets), **seen)


_MODEL_VALUE: Final = re.compile(rb'\s*:\s*"([^"\\]{1,200})"')


def _names_supported_model(decoded: bytes) -> bool:
    """A cheap byte test: is any ``"model": "..."`` member a GPT-5.6+ name? Skips the JSON parse for
    the (common) older models. Uses ``bytes.find`` (C speed; a 1 MB body costs microseconds); a
    false positive only costs the parse, and the planner re-checks the parsed top-level model."""
    pos = decoded.find(b'"model"')
    while pos >= 0:
        m = _MODEL_VALUE.match(decoded, pos + 7)
        if m is not None and supports_breakpoints(m[1].decode("utf-8", "replace")):
            return True
        pos = decoded.find(b'"model"', pos + 7)
    return False


def cache_key(digest: bytes) -> str:
    return KEY_PREFIX + digest.hex()[:24]


def _spans(decided: OpenAIPlan, body_map: BodyMap, api: Api) -> tuple[Span, ...]:
    assert decided.digest is not None and body_map.messages is not None
    spans: list[Span] = []
    for message, block in decided.targets:
        item = body_map.messages[message]
        if block is None:
            loc = item.content
            if loc is None or loc.kind != "string":
                raise ValueError("wrap target is not a string")
            opener = b'[{"type":' + json.dumps(_TEXT_PART[api]).encode() + b',"text":'
            spans += [Span(loc.start, opener), Span(loc.end, b"," + _BREAKPOINT_MEMBER + b"}]")]
        else:
            blocks = item.blocks
            part = blocks[block] if blocks is not None else None
            if part is None or part.kind != "object":
                raise ValueError("marker target is not an object")
            spans.append(Span(part.close, _BREAKPOINT_MEMBER if part.empty else b"," + _BREAKPOINT_MEMBER))
    root: Loc = body_map.root
    members = b'"prompt_cache_key":' + json.dumps(cache_key(decided.digest)).encode()
    if decided.explicit_only:
        members += b',"prompt_cache_options":' + json.dumps(_EXPLICIT_ONLY, separators=(",", ":")).encode()
    spans.append(Span(root.close, members if root.empty else b"," + members))
    return tuple(sorted(spans, key=lambda s: s.offset))


def _landed(spliced: bytes, decided: OpenAIPlan, api: Api) -> bool:
    """Re-parse: our breakpoints on exactly the planned parts, our key (and options), nothing else."""
    result = _parse(spliced)
    if not isinstance(result, dict) or decided.digest is None or result.get("prompt_cache_key") != cache_key(decided.digest):
        return False
    if decided.explicit_only and result.get("prompt_cache_options") != _EXPLICIT_ONLY:
        return False
    items: Sequence[Any] = result[_ITEMS_KEY[api]]
    for message, block in decided.targets:
        content = items[message]["content"]
        part = content[0] if block is None else content[block]
        if not isinstance(part, dict) or part.get("prompt_cache_breakpoint") != dict(BREAKPOINT):
            return False
    # our breakpoints, our key, and the options when asked: nothing else
    return client_cache_fields(result) == len(decided.targets) + 1 + int(decided.explicit_only)
