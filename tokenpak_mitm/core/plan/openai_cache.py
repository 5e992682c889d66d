"""OpenAI explicit prompt-cache breakpoints (GPT-5.6 and later): the byte splice of the planner's choice.

Why: from GPT-5.6 on OpenAI bills cache writes (1.25x input) and accepts explicit breakpoints,
but its implicit breakpoint sits near the latest message, so a long stable prefix followed by a
changing suffix (one document, many questions; an agent's system prompt and tools) can miss
entirely. Clients such as Codex cannot emit the field.

Where the breakpoints go is decided by ONE planner, ``learning_planner.plan_openai``, with the
proxy's prefix index (``learning_planner.Memory``, shared with the Anthropic planner) and the
request's time; ``tokenpak savings`` replays traffic through this same function, so the savings
it shows are what the proxy does. Which parts may carry one is ONE rule,
``openai_eligibility.breakpoint_eligible`` (system, developer, user and tool-result text; never
assistant output), used by the planner, by this splice and by the cache simulator.

Pure: bytes / JSON / a ``Memory`` and the time in, an ``InsertResult`` out; never raises. Every
change is a byte INSERTION into the client's body (the same splicing as Anthropic's
``cache_insert``): ``remove_spans(decoded_output, result.spans) == decoded_input``. Inserted:

* ``"prompt_cache_breakpoint": {"mode": "explicit"}`` as a member of each chosen content part (a
  string ``content`` is wrapped into a one-part list carrying the field, of the part type the API
  uses for that message kind: ``text`` in Chat Completions, ``input_text`` in Responses);
* ``prompt_cache_key`` ("tpk-" + 24 hex digits of the deepest breakpoint's prefix digest), so
  requests sharing that prefix are routed together;
* ``prompt_cache_options: {"mode": "explicit"}`` when the planner switches the implicit
  breakpoint off (its tail is never read back).

At most 4 breakpoints, the implicit one counting unless it is switched off.

Stand-down: if the client set ANY cache field (``prompt_cache_key``, ``prompt_cache_options``,
``prompt_cache_retention``, a ``prompt_cache_breakpoint`` anywhere, or a ``cache_control``
anywhere) the body goes upstream byte-identical: the client manages caching. Models before
GPT-5.6 are not even parsed (a cheap byte test on the model name).

Field shapes (ASSUMPTIONS, derived from the research notes; the exact schema is not on disk):
the breakpoint member has the form the notes quote for ``input_text`` blocks (protocols.md §3.2),
taken to be the same on Chat Completions ``text`` parts; ``prompt_cache_key`` is a top-level
string. Cost: a breakpoint before the last writing one adds no write premium of its own on the
assumption that, as on Anthropic, written tokens are counted once per request (OpenAI's
``cache_write_tokens`` is a part of ``input_tokens``); the implicit breakpoint writes the whole
prompt at 1.25x anyway.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tokenpak_mitm.core.plan import learning_planner
from tokenpak_mitm.core.plan.cache_facts import MAX_BREAKPOINTS, OPENAI_GPT56, facts_for
from tokenpak_mitm.core.plan.cache_insert import (
    _NOT_JSON,
    InsertResult,
    Span,
    _normalize_encoding,
    _open_body,
    _parse,
    splice_checked,
)
from tokenpak_mitm.core.plan.cache_planner import DECISIONS, Note
from tokenpak_mitm.core.plan.jsonscan import BodyMap, Loc, agrees_with, block_locs, one_pass_pays, parse_and_scan, scan
from tokenpak_mitm.core.plan.learning_planner import Memory, Ticket
from tokenpak_mitm.core.plan.openai_eligibility import ITEMS_KEY, TEXT_PART, OpenAIApi, breakpoint_eligible, client_cache_fields
from tokenpak_mitm.core.plan.prefix_index import RAW_MIN_BYTES, boundaries, item_content, prompt_blocks
from tokenpak_mitm.core.row import CacheDecision

__all__ = [
    "BREAKPOINT",
    "KEY_PREFIX",
    "OPENAI_DECISIONS",
    "Api",
    "parse_for_planner",
    "Decide",
    "OpenAIPlan",
    "cache_key",
    "client_cache_fields",
    "insert_openai_breakpoint",
    "plan_positions",
    "supports_breakpoints",
]

# The Anthropic planner's decisions, plus one: a model that takes no explicit breakpoints.
OPENAI_DECISIONS: Final[Mapping[CacheDecision, str]] = {
    **DECISIONS,
    "not_supported": "the model takes no explicit breakpoints (before GPT-5.6): its caching is automatic",
}

Api = OpenAIApi
BREAKPOINT: Final[Mapping[str, str]] = {"mode": "explicit"}
KEY_PREFIX: Final = "tpk-"
_BREAKPOINT_MEMBER: Final = b'"prompt_cache_breakpoint":' + json.dumps(dict(BREAKPOINT), separators=(",", ":")).encode()
_EXPLICIT_ONLY: Final[dict[str, str]] = {"mode": "explicit"}  # prompt_cache_options: the implicit breakpoint off


@dataclass(frozen=True, slots=True)
class OpenAIPlan:
    """What to splice. decision: a row.CacheDecision. targets: (item index, part index) per
    breakpoint in prefix order (part None = wrap a string content). digest: the deepest
    breakpoint's prefix digest (the prompt_cache_key; None without a breakpoint). explicit_only:
    also send ``prompt_cache_options: {"mode": "explicit"}``."""

    decision: CacheDecision
    targets: tuple[tuple[int, int | None], ...] = ()
    prefix_tokens_est: int | None = None
    digest: bytes | None = None
    positions: tuple[int, ...] = ()
    explicit_only: bool = False
    client_fields: int = 0


# Positions chosen by something other than the planner (tests of the splice): (positions,
# explicit_only), or None to leave the request alone.
Decide = Callable[[dict[str, Any]], "tuple[Sequence[int], bool] | None"]


def supports_breakpoints(model: object) -> bool:
    """GPT-5.6 and later take explicit breakpoints (cache_facts: the GPT-5.6+ entry)."""
    return isinstance(model, str) and facts_for(model, "openai") is OPENAI_GPT56


def plan_positions(request: object, api: Api, positions: Sequence[int], explicit_only: bool = False,
                   raw: Sequence[bytes | None] | None = None) -> OpenAIPlan:
    """The splice plan for boundary positions chosen by the planner.

    Every position must end a part that may carry a breakpoint (``breakpoint_eligible``) or the
    plan is ``error``; at most 4 breakpoints count (the implicit one takes a slot unless
    explicit_only). No position and not explicit_only: ``not_worth``. Stand-down and model checks
    come first. raw: the client's bytes of each prompt block (``prefix_index.boundaries``: only faster).
    """
    if not isinstance(request, dict):
        return OpenAIPlan("not_messages")
    if not supports_breakpoints(request.get("model")):
        return OpenAIPlan("not_supported")
    fields = client_cache_fields(request)
    if fields:
        return OpenAIPlan("stood_down", client_fields=fields)
    items = request.get(ITEMS_KEY[api])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return OpenAIPlan("not_messages")
    bounds = boundaries(request, api, raw=raw)
    chosen = sorted(set(positions))
    if not chosen and not explicit_only:
        return OpenAIPlan("not_worth")
    if len(chosen) > MAX_BREAKPOINTS - (0 if explicit_only else 1) or not all(0 <= p < len(bounds) for p in chosen):
        return OpenAIPlan("error")
    picked = [bounds[p] for p in chosen]
    if not all(breakpoint_eligible(request, api, b) for b in picked):
        return OpenAIPlan("error")
    targets = tuple((b.message, b.block) for b in picked if b.message is not None)
    deepest = picked[-1] if picked else bounds[-1] if bounds else None
    return OpenAIPlan("inserted", targets, deepest.tokens_est if deepest is not None else None,
                      picked[-1].digest if picked else None, tuple(chosen), explicit_only)


def insert_openai_breakpoint(body: bytes, content_encoding: str | None, api: Api, *, memory: Memory | None = None,
                             now: float = 0.0, decide: Decide | None = None) -> InsertResult:
    """Splice the planner's breakpoints (and a prompt_cache_key) into an OpenAI request body; never raises.

    ``learning_planner.plan_openai`` decides, with ``memory`` (the proxy's one prefix index; None:
    the request is planned alone, as with no history) at time ``now``, and records the request
    there; the result carries its notes (the row's ``cache_reasons``) and the ticket for
    ``learning_planner.observe_usage``. ``decide`` replaces the planner (tests of the splice).
    """
    try:
        return _insert(body, content_encoding, api, memory, now, decide)
    except Exception:  # noqa: BLE001 - the contract is "never raise, never corrupt"
        return _unchanged(body, "error")


def parse_for_planner(body: bytes, content_encoding: str | None) -> dict[str, Any] | None:
    """The request `insert_openai_breakpoint` hands the planner (None: it would not plan this body)."""
    if not isinstance(body, bytes):
        return None
    opened = _open_body(body, _normalize_encoding(content_encoding))
    if isinstance(opened, str) or not _names_supported_model(opened[0]):
        return None
    request = _parse(opened[0])
    return request if isinstance(request, dict) else None


def _unchanged(body: bytes, decision: CacheDecision, **fields: Any) -> InsertResult:
    values: dict[str, Any] = {"client_markers": 0, "client_ttls": (), "prefix_tokens_est": None, "model": None, "content_encoding": None}
    values.update(fields)
    return InsertResult(body=body, spans=(), decision=decision, markers_inserted=0, **values)


def _insert(body: bytes, content_encoding: str | None, api: Api, memory: Memory | None, now: float,
            decide: Decide | None) -> InsertResult:
    encoding = _normalize_encoding(content_encoding)
    if not isinstance(body, bytes):
        return _unchanged(body, "too_large", content_encoding=encoding)
    opened = _open_body(body, encoding)
    if isinstance(opened, str):
        return _unchanged(body, opened, content_encoding=encoding)
    decoded, codec, flavor = opened
    if not _names_supported_model(decoded):
        return _unchanged(body, "not_supported", content_encoding=encoding)  # no parse for older models
    key = ITEMS_KEY[api]
    # json.loads and the byte map in one pass (None: ask each on its own), unless the body is dense
    # with small objects (`one_pass_pays`; the map is then made only if a breakpoint goes in).
    both = parse_and_scan(decoded, key) if one_pass_pays(decoded) else None
    mapped: BodyMap | None = None
    if both is not None:
        request, mapped = both
    else:
        request = _parse(decoded)
    if request is _NOT_JSON:
        return _unchanged(body, "not_json", content_encoding=encoding)
    if not isinstance(request, dict):
        return _unchanged(body, "not_messages", content_encoding=encoding)
    model = request.get("model") if isinstance(request.get("model"), str) else None
    # The planner fingerprints every block: with the map at hand it hashes the client's bytes where
    # they are already canonical instead of re-serialising each block (`_raw_blocks`).
    agreed = mapped is not None and agrees_with(request, mapped, messages_key=key)
    raw = _raw_blocks(decoded, mapped, request, api) if agreed and mapped is not None else None
    notes: tuple[Note, ...] = ()
    ticket: Ticket | None = None
    if decide is not None:
        answer = decide(request)
        decided = plan_positions(request, api, *answer, raw=raw) if answer is not None else plan_positions(request, api, (), raw=raw)
    else:
        planned, ticket = learning_planner.plan_openai(request, api, memory if memory is not None else Memory(), now, raw)
        notes = planned.notes
        if planned.decision == "inserted":
            decided = plan_positions(request, api, planned.positions, planned.explicit_only, raw)
        else:
            decided = OpenAIPlan(planned.decision, client_fields=client_cache_fields(request) if planned.decision == "stood_down" else 0)
    seen: dict[str, Any] = {"client_markers": decided.client_fields, "client_ttls": (), "content_encoding": encoding,
                            "model": model, "prefix_tokens_est": decided.prefix_tokens_est, "notes": notes, "ticket": ticket}
    if decided.decision != "inserted":
        return _unchanged(body, decided.decision, **seen)
    if mapped is None:
        mapped = scan(decoded, messages_key=key)
        agreed = agrees_with(request, mapped, messages_key=key)
    if not agreed:
        return _unchanged(body, "error", **seen)
    spans = _spans(decided, mapped, api)
    out = splice_checked(decoded, spans, lambda spliced: _landed(spliced, decided, api), codec, flavor)
    if out is None:
        return _unchanged(body, "error", **seen)
    return InsertResult(out, spans, "inserted", len(decided.targets) or 1, **seen)


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


def _block_locs(body_map: BodyMap, request: dict[str, Any], api: Api) -> list[Loc | None]:
    """Where each block ``prefix_index.prompt_blocks(request, api)`` yields sits, in its order (None where unmapped).

    ``body_map`` is ``scan(body, messages_key=ITEMS_KEY[api])`` and agrees with ``request``
    (``agrees_with``). Tools: the ``tools`` elements. System (Responses ``instructions``; Chat
    Completions has none): a string ``instructions``, the top-level member's value (a list is
    not mapped: None). Messages: a part of a list content (``content``, or the ``output`` list of a
    Responses item without content, as ``item_content`` picks it and the map does too); a
    non-list ``content``; without content, the whole item (a ``function_call``, a string
    ``output``, a non-object item); and a Responses string ``input``, the one message it stands for.
    """
    return block_locs(body_map, ((section, message, block) for section, message, block, _, _ in prompt_blocks(request, api)), api)


def _raw_blocks(decoded: bytes, body_map: BodyMap, request: object, api: Api) -> list[bytes | None] | None:
    """The client's bytes of each prompt block, in ``prompt_blocks`` order, for ``boundaries(raw=)``:
    None for a block under ``RAW_MIN_BYTES`` (re-serialised anyway) or unmapped."""
    if not isinstance(request, dict):
        return None
    return [decoded[loc.start:loc.end] if loc is not None and loc.end - loc.start >= RAW_MIN_BYTES else None
            for loc in _block_locs(body_map, request, api)]


def cache_key(digest: bytes) -> str:
    return KEY_PREFIX + digest.hex()[:24]


def _spans(decided: OpenAIPlan, body_map: BodyMap, api: Api) -> tuple[Span, ...]:
    assert body_map.messages is not None
    spans: list[Span] = []
    for message, block in decided.targets:
        item = body_map.messages[message]
        if block is None:
            loc = item.content
            if loc is None or loc.kind != "string":
                raise ValueError("wrap target is not a string")
            opener = b'[{"type":' + json.dumps(TEXT_PART[api]).encode() + b',"text":'
            spans += [Span(loc.start, opener), Span(loc.end, b"," + _BREAKPOINT_MEMBER + b"}]")]
        else:
            blocks = item.blocks
            part = blocks[block] if blocks is not None else None
            if part is None or part.kind != "object":
                raise ValueError("marker target is not an object")
            spans.append(Span(part.close, _BREAKPOINT_MEMBER if part.empty else b"," + _BREAKPOINT_MEMBER))
    root: Loc = body_map.root
    members: list[bytes] = []
    if decided.digest is not None:
        members.append(b'"prompt_cache_key":' + json.dumps(cache_key(decided.digest)).encode())
    if decided.explicit_only:
        members.append(b'"prompt_cache_options":' + json.dumps(_EXPLICIT_ONLY, separators=(",", ":")).encode())
    joined = b",".join(members)
    spans.append(Span(root.close, joined if root.empty else b"," + joined))
    return tuple(sorted(spans, key=lambda s: s.offset))


def _landed(spliced: bytes, decided: OpenAIPlan, api: Api) -> bool:
    """Re-parse: our breakpoints on exactly the planned parts, our key (and options), nothing else."""
    result = _parse(spliced)
    if not isinstance(result, dict):
        return False
    if decided.digest is not None and result.get("prompt_cache_key") != cache_key(decided.digest):
        return False
    if decided.explicit_only and result.get("prompt_cache_options") != _EXPLICIT_ONLY:
        return False
    items: Sequence[Any] = result[ITEMS_KEY[api]]
    for message, block in decided.targets:
        content = item_content(items[message], api)[1]
        part = content[0 if block is None else block] if isinstance(content, list) else None
        if not isinstance(part, dict) or part.get("prompt_cache_breakpoint") != dict(BREAKPOINT):
            return False
    # our breakpoints, our key, and the options when asked: nothing else
    return client_cache_fields(result) == len(decided.targets) + int(decided.digest is not None) + int(decided.explicit_only)
