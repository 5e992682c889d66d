"""The one call the mitmproxy addon makes: add prompt-cache markers to a request body.

Everything is a pure byte INSERTION into the client's body (`cache_planner` decides where,
`jsonscan` finds the offsets), so the original is always recoverable:
`remove_spans(decoded_output, result.spans) == decoded_input`, byte for byte.

Span offsets refer to the DECODED body (after Content-Encoding is undone); with an
identity body that is the body itself. A compressed body is decoded, spliced and
re-encoded with the same coding (the compressed bytes differ, the content does not).

`insert_markers` never raises: any failure returns the original body object unchanged
with a decision saying why (see `cache_planner.DECISIONS`).
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import brotli

from tokenpak_mitm.core.observe.decoders import DecodeLimit, codings, decode_body, deflate_is_zlib, zstd
from tokenpak_mitm.core.plan import learning_planner
from tokenpak_mitm.core.plan.cache_facts import facts_for, missing_facts
from tokenpak_mitm.core.plan.cache_planner import DECISIONS, Breakpoint, CacheOptions, Note, Plan, Sizes, count_markers, marker_for, plan
from tokenpak_mitm.core.plan.jsonscan import BodyMap, JsonScanError, Loc, agrees_with, block_locs, one_pass_pays, parse_and_scan, scan
from tokenpak_mitm.core.plan.learning_planner import Memory, Ticket
from tokenpak_mitm.core.plan.prefix_index import RAW_MIN_BYTES, prompt_blocks
from tokenpak_mitm.core.row import CacheDecision

__all__ = [
    "CacheOptions", "Span", "InsertResult", "insert_markers", "remove_spans", "count_markers",
    "DECISIONS", "MAX_BODY_BYTES", "PLAN_MAX_BYTES", "PLAN_MAX_OBJECTS", "parse_decoded", "plan_off_loop", "plan_where",
    "too_big_to_plan",
]

MAX_BODY_BYTES = 64 * 1024 * 1024  # raw and decoded cap; twice the API's 32 MB request limit
# Planning costs ~10-20 us per JSON object (block, message) on this 2-core VM, whatever its size:
# a 1 MB body of 32k tiny messages took 0.4-0.8 s. So the off-event-loop decision counts objects
# (a C-speed byte count) as well as bytes; 200 objects is about 2-4 ms of planning.
OFFLOAD_BYTES = 1 << 20
OFFLOAD_OBJECTS = 200


_PLANNED: Final = frozenset({"inserted", "not_worth", "below_minimum", "no_eligible_block"})  # decisions the planner made itself


# Planning bounds: above either, planning would cost more than a marker can save (and make the
# request wait for it), so the request goes upstream exactly as it came, with cache_decision
# "too_large". A request over the API's own 32 MB limit (which the API refuses anyway) is never
# planned; 10,000 objects are about 0.1-0.2 s of planning; a 1 MiB body of 32,000 tiny messages took 1.5 s.
PLAN_MAX_BYTES = 32 << 20
PLAN_MAX_OBJECTS = 10_000

PlanWhere = Literal["here", "off_loop", "too_large"]


def plan_where(body: bytes, content_encoding: str | None) -> PlanWhere:
    """Where to plan this request body: on the event loop (a few milliseconds at most), off it, or
    not at all (over the bounds). O(1) above OFFLOAD_BYTES, else one C-speed byte count; the
    object count of a bigger or compressed body is checked off the loop (`too_big_to_plan`)."""
    if len(body) > PLAN_MAX_BYTES:
        return "too_large"
    if len(body) > OFFLOAD_BYTES or codings(content_encoding):
        return "off_loop"  # a compressed body hides its size and object count (4 KB can hold 1 MB of blocks)
    objects = body.count(b"{")
    return "too_large" if objects > PLAN_MAX_OBJECTS else "off_loop" if objects > OFFLOAD_OBJECTS else "here"


def plan_off_loop(body: bytes, content_encoding: str | None) -> bool:
    """Whether planning this request body may take more than a few milliseconds (pure, O(n) in C)."""
    return plan_where(body, content_encoding) != "here"


def too_big_to_plan(decoded: bytes) -> bool:
    """Whether a decoded body is over the planning bounds (O(n) in C: off the event loop for big bodies)."""
    return len(decoded) > PLAN_MAX_BYTES or (len(decoded) > PLAN_MAX_OBJECTS and decoded.count(b"{") > PLAN_MAX_OBJECTS)


def _off_loop_sized(decoded: bytes, encoding: str | None) -> bool:
    """Bodies the proxy plans off the event loop, where `plan_where` could not count their objects."""
    return encoding is not None or len(decoded) > OFFLOAD_BYTES


@dataclass(frozen=True)
class Span:
    offset: int  # byte offset in the ORIGINAL decoded body where `text` is inserted
    text: bytes


@dataclass(frozen=True)
class InsertResult:
    body: bytes  # bytes to send upstream; IS the original object when nothing was inserted
    spans: tuple[Span, ...]  # sorted by offset, offsets into the decoded body; empty when nothing inserted
    decision: CacheDecision  # described in cache_planner.DECISIONS
    markers_inserted: int  # block markers spliced, or 1 for the top-level field
    client_markers: int  # markers the client placed (block-level + 1 for top-level)
    client_ttls: tuple[str, ...]  # their TTLs, tools -> system -> messages -> top-level ("5m" when no ttl)
    prefix_tokens_est: int | None  # largest estimated prefix among candidate breakpoints
    model: str | None
    content_encoding: str | None  # the coding as understood, lower-cased (None = identity)
    notes: tuple[Note, ...] = ()  # the learning planner's reason for each marker and skipped candidate
    ticket: Ticket | None = None  # for `learning_planner.observe_usage` once the response's usage is known

    def reasons_json(self) -> str | None:
        """The notes as the JSON text stored on the telemetry row (None when there are none); a
        planned request for a model without cache facts says so (``no_cache_facts``)."""
        notes = [n.as_dict() for n in self.notes]
        if self.decision in _PLANNED and missing_facts(self.model):
            facts = facts_for(self.model)
            notes.append({"at": "model", "why": "no_cache_facts", "tokens": 0, "skipped": True,
                          "detail": f"{self.model}: not in cache_facts; planned with {facts.family}'s assumed minimum of "
                                    f"{facts.minimum_tokens} tokens and the dearest documented read (0.1x)"})
        return json.dumps(notes, separators=(",", ":")) if notes else None


def insert_markers(body: bytes, content_encoding: str | None, opts: CacheOptions = CacheOptions(),
                   memory: Memory | None = None, now: float | None = None) -> InsertResult:
    """Insert cache markers into a Messages request body; never raises.

    With `memory` (and the time `now`), the learning planner decides and the request is recorded
    in `memory`'s prefix index; without it, today's stateless rules.
    """
    try:
        return _insert(body, content_encoding, opts, memory, now)
    except Exception:  # noqa: BLE001 - the contract is "never raise, never corrupt"
        return _unchanged(body, "error")


def parse_decoded(body: bytes, content_encoding: str | None) -> object:
    """The request as `insert_markers` parses it (None when it would not plan: too large, undecodable, not JSON)."""
    encoding = _normalize_encoding(content_encoding)
    if len(body) > MAX_BODY_BYTES:
        return None
    decoded = body
    if encoding is not None:
        codec = _CODECS.get(encoding)
        if codec is None:
            return None
        try:
            decoded = codec.decode(body)[0]
        except Exception:  # noqa: BLE001 - insert_markers says why; here it only means "nothing to look up"
            return None
    if _off_loop_sized(decoded, encoding) and too_big_to_plan(decoded):
        return None
    request = _parse(decoded)
    return None if request is _NOT_JSON else request


def remove_spans(body: bytes, spans: Sequence[Span]) -> bytes:
    """Undo `insert_markers` on a decoded body; ValueError if a span's text is not where expected."""
    pieces: list[bytes] = []
    source = shift = 0
    for span in sorted(spans, key=lambda s: s.offset):
        at = span.offset + shift  # where the inserted text sits in `body`
        if body[at:at + len(span.text)] != span.text:
            raise ValueError(f"span at original offset {span.offset} not found")
        pieces.append(body[source:at])
        source = at + len(span.text)
        shift += len(span.text)
    pieces.append(body[source:])
    return b"".join(pieces)


def _unchanged(body: bytes, decision: CacheDecision, **fields: object) -> InsertResult:
    defaults: dict[str, Any] = dict(
        client_markers=0, client_ttls=(), prefix_tokens_est=None, model=None, content_encoding=None,
    )
    defaults.update(fields)
    return InsertResult(body=body, spans=(), decision=decision, markers_inserted=0, **defaults)


def _open_body(body: bytes, encoding: str | None) -> tuple[bytes, _Codec | None, int] | CacheDecision:
    """The decoded body with the codec (and flavor) to re-encode it, or why it cannot be read."""
    if len(body) > MAX_BODY_BYTES:
        return "too_large"
    if encoding is None:
        return ("too_large" if _off_loop_sized(body, encoding) and too_big_to_plan(body) else (body, None, 0))
    codec = _CODECS.get(encoding)
    if codec is None:
        return "encoded_unsupported"
    try:
        decoded, flavor = codec.decode(body)
    except _TooLarge:
        return "too_large"
    except Exception:  # noqa: BLE001 - any codec failure means "cannot read it"
        return "encoded_unsupported"
    if too_big_to_plan(decoded):
        return "too_large"
    return decoded, codec, flavor


def splice_checked(decoded: bytes, spans: Sequence[Span], landed: Callable[[bytes], bool],
                   codec: _Codec | None, flavor: int) -> bytes | None:
    """`spans` spliced into `decoded`, re-parsed by `landed` (the guard independent of our scanner)
    and put back in the client's encoding; None when the guard or the round trip refuses it."""
    spliced = _splice(decoded, spans)
    if not landed(spliced):
        return None
    return _close_body(spliced, codec, flavor)


def _close_body(spliced: bytes, codec: _Codec | None, flavor: int) -> bytes | None:
    """The spliced body in the client's encoding; None when the round trip does not give it back."""
    if codec is None:
        return spliced
    out = codec.encode(spliced, flavor)
    return out if codec.decode(out)[0] == spliced else None


def _insert(body: bytes, content_encoding: str | None, opts: CacheOptions, memory: Memory | None, now: float | None) -> InsertResult:
    if not isinstance(opts, CacheOptions) or not isinstance(body, bytes):
        return _unchanged(body, "error")
    encoding = _normalize_encoding(content_encoding)
    if opts.mode == "off":
        return _unchanged(body, "off", content_encoding=encoding)
    opened = _open_body(body, encoding)
    if isinstance(opened, str):
        return _unchanged(body, opened, content_encoding=encoding)
    decoded, codec, flavor = opened
    # json.loads and the byte map in one pass (None: ask each on its own), unless the body is dense
    # with small objects (`one_pass_pays`; the map is then made only if a marker goes in). Every
    # body planned on the event loop has at most OFFLOAD_OBJECTS objects, so takes the one pass.
    both = parse_and_scan(decoded) if one_pass_pays(decoded) else None
    mapped = None
    if both is not None:
        request, mapped = both
    else:
        request = _parse(decoded)
    if request is _NOT_JSON:
        return _unchanged(body, "not_json", content_encoding=encoding)
    client_markers, client_ttls = count_markers(request)
    model = request.get("model") if isinstance(request, dict) else None
    seen = dict(
        client_markers=client_markers, client_ttls=client_ttls, content_encoding=encoding,
        model=model if isinstance(model, str) else None,
    )
    body_map: list[BodyMap] = []
    raw: list[bytes | None] | None = None
    if isinstance(request, dict) and mapped is not None:
        # The learning planner fingerprints every block: with the map at hand it hashes the
        # client's bytes where they are already canonical instead of re-serialising each block.
        # Without it (a body the one pass did not take) `measure` below maps it if a marker goes in.
        if agrees_with(request, mapped):
            body_map.append(mapped)
            if memory is not None and now is not None:
                raw = [decoded[loc.start:loc.end] if loc is not None and loc.end - loc.start >= RAW_MIN_BYTES else None
                       for loc in _block_locs(mapped, request)]

    def measure() -> Sizes:
        if not body_map:
            body_map.append(scan(decoded))
            if not agrees_with(request, body_map[0]):
                raise _Disagreement
        return _sizes(body_map[0])

    ticket: Ticket | None = None
    try:
        if memory is not None and now is not None:
            decided, ticket = learning_planner.plan(request, opts, measure, memory, now, raw)
        else:
            decided = plan(request, opts, measure)
    except (_Disagreement, JsonScanError):  # json.loads and the scanner disagree: trust neither
        return _unchanged(body, "error", **seen)
    seen.update(prefix_tokens_est=decided.prefix_tokens_est, notes=decided.notes, ticket=ticket)
    if decided.breakpoints and not body_map:
        measure()  # the learning planner sized from fingerprints: the splice still needs the byte map
    if decided.decision != "inserted":
        return _unchanged(body, decided.decision, **seen)
    spans = _spans(decided, body_map[0], opts)
    out = splice_checked(decoded, spans, lambda spliced: _markers_landed(spliced, decided, opts), codec, flavor)
    if out is None:
        return _unchanged(body, "error", **seen)
    inserted = 1 if decided.top_level else len(decided.breakpoints)
    return InsertResult(out, spans, "inserted", inserted, **seen)  # type: ignore[arg-type]


_NOT_JSON = object()


class _Disagreement(Exception):
    """The byte scanner and json.loads see different structures: do not splice."""


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _parse(decoded: bytes) -> object:
    """json.loads on strict UTF-8 (json.loads(bytes) would accept UTF-16 and encoded surrogates)."""
    try:
        return json.loads(decoded.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return _NOT_JSON


def _sizes(body_map: BodyMap) -> Sizes:
    def length(loc: Loc) -> int:
        return loc.end - loc.start

    system: tuple[int, ...] = ()
    if body_map.system_blocks is not None:
        system = tuple(map(length, body_map.system_blocks))
    elif body_map.system is not None and body_map.system.kind == "string":
        system = (length(body_map.system),)
    messages = tuple(
        (length(m.content),) if m.blocks is None else tuple(map(length, m.blocks))  # type: ignore[arg-type]
        for m in body_map.messages or ()
    )
    return Sizes(tuple(map(length, body_map.tools or ())), system, messages)


def _block_locs(body_map: BodyMap, request: dict[str, Any]) -> list[Loc | None]:
    """Where each block `prefix_index.prompt_blocks(request)` yields sits, in its order (None where unmapped)."""
    return block_locs(body_map, ((section, message, block) for section, message, block, _, _ in prompt_blocks(request, "anthropic")))


def _raw_blocks(decoded: bytes, body_map: BodyMap, request: dict[str, Any]) -> list[bytes | None]:
    """The bytes of each block `prefix_index.prompt_blocks(request)` yields, in its order (None where unmapped)."""
    return [decoded[loc.start:loc.end] if loc is not None else None for loc in _block_locs(body_map, request)]


def _member(ttl: str) -> bytes:
    return b'"cache_control":' + json.dumps(marker_for(ttl), separators=(",", ":")).encode()


def _spans(decided: Plan, body_map: BodyMap, opts: CacheOptions) -> tuple[Span, ...]:
    def into_object(loc: Loc, member: bytes) -> list[Span]:
        if loc.kind != "object":
            raise ValueError("marker target is not an object")
        return [Span(loc.close, member if loc.empty else b"," + member)]

    def wrap_string(loc: Loc, member: bytes) -> list[Span]:
        if loc.kind != "string":
            raise ValueError("wrap target is not a string")
        return [Span(loc.start, b'[{"type":"text","text":'), Span(loc.end, b"," + member + b"}]")]

    if decided.top_level:
        return tuple(into_object(body_map.root, _member(opts.fixed_ttl)))
    spans: list[Span] = []
    for bp in decided.breakpoints:
        loc, member = _target(bp, body_map), _member(bp.ttl or opts.fixed_ttl)
        spans.extend(wrap_string(loc, member) if bp.wraps_string else into_object(loc, member))
    return tuple(sorted(spans, key=lambda s: s.offset))


def _target(bp: Breakpoint, body_map: BodyMap) -> Loc:
    if bp.section == "tools":
        return body_map.tools[bp.index]  # type: ignore[index]
    if bp.section == "system":
        return body_map.system if bp.wraps_string else body_map.system_blocks[bp.index]  # type: ignore[return-value,index]
    message = body_map.messages[bp.index]  # type: ignore[index]
    return message.content if bp.block is None else message.blocks[bp.block]  # type: ignore[return-value,index]


def _splice(data: bytes, spans: Sequence[Span]) -> bytes:
    # Pieces are views, not copies: a 200 KB body's temporary slices cost ~0.12 ms in page faults.
    view = memoryview(data)
    pieces: list[bytes | memoryview] = []
    previous = 0
    for span in spans:
        pieces += (view[previous:span.offset], span.text)
        previous = span.offset
    pieces.append(view[previous:])
    return b"".join(pieces)


def _markers_landed(spliced: bytes, decided: Plan, opts: CacheOptions) -> bool:
    """Re-parse the output: exactly our markers, on exactly the planned blocks (guards the scanner)."""
    result = _parse(spliced)
    if not isinstance(result, dict):
        return False
    if decided.top_level:
        return result.get("cache_control") == opts.marker and count_markers(result)[0] == 1
    for bp in decided.breakpoints:
        if bp.section == "tools":
            block = result["tools"][bp.index]
        elif bp.section == "system":
            system = result["system"]
            block = system[0] if bp.wraps_string else system[bp.index]
        else:
            content = result["messages"][bp.index]["content"]
            block = content[0] if bp.block is None else content[bp.block]
        if not isinstance(block, dict) or block.get("cache_control") != marker_for(bp.ttl or opts.fixed_ttl):
            return False
    return count_markers(result)[0] == len(decided.breakpoints)


# ---- Content-Encoding (decoding lives in `decoders`; re-encoding with the same flavor here) ----

class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Codec:
    decode: Callable[[bytes], tuple[bytes, int]]  # -> (content, flavor to re-encode with)
    encode: Callable[[bytes, int], bytes]


def _normalize_encoding(header: str | None) -> str | None:
    """'gzip', 'br', ... lower-cased; None for identity; stacked codings are kept as written."""
    return ", ".join(codings(header)) or None


def _decoded(data: bytes, coding: str) -> bytes:
    try:
        return decode_body(data, coding, MAX_BODY_BYTES, strict=True)
    except DecodeLimit:
        raise _TooLarge from None


def _gunzip(data: bytes) -> tuple[bytes, int]:
    return _decoded(data, "gzip"), 31


def _inflate(data: bytes) -> tuple[bytes, int]:
    """HTTP 'deflate' is zlib-wrapped (RFC 9110), but some clients send raw deflate: accept both."""
    return _decoded(data, "deflate"), (15 if deflate_is_zlib(data) else -15)


def _zlib_encode(data: bytes, wbits: int) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, wbits)  # level 1: latency matters more than ratio
    return compressor.compress(data) + compressor.flush()


_CODECS: dict[str, _Codec] = {
    "gzip": _Codec(_gunzip, _zlib_encode),
    "x-gzip": _Codec(_gunzip, _zlib_encode),
    "deflate": _Codec(_inflate, _zlib_encode),
    "br": _Codec(lambda data: (_decoded(data, "br"), 0), lambda data, _: brotli.compress(data, quality=4)),
    "zstd": _Codec(lambda data: (_decoded(data, "zstd"), 0), lambda data, _: zstd.compress(data, level=3)),
}
