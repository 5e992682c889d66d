"""What the session tracker needs to know about one request's prompt (pure: JSON in, values out).

Built on ``prefix_index.boundaries`` (the one fingerprinting scheme): each block of the prompt in
the provider's prefix order (tools, system, messages) keeps the boundary's cumulative ``prefix``
digest, flat position and estimated prefix tokens, and adds what a diagnosis needs beyond them:

* ``digest`` — a short hash of the block itself (markers removed), so the kind of a difference
  can be told (the block changed, or only a parameter folded in before it);
* ``masked`` — for tools and system blocks, the same hash with volatile values (digit runs,
  UUIDs, long hex ids, weekday and month names, case) blanked, so a difference that is only a
  changed date or id can be told from an edit (message blocks: the plain hash);
* ``marker_ttl`` — the TTL of a ``cache_control`` marker on the block (``None`` = unmarked).

and, for lineage, ``turn_keys``: one cumulative hash per message over the conversation's
messages only (system/developer messages skipped), so a conversation whose system prompt or tools
changed is still recognised as the same conversation.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from tokenpak_mitm.core.plan.cache_facts import ttl_seconds
from tokenpak_mitm.core.plan.jsonscan import agrees_with, block_locs, one_pass_pays, parse_and_scan
from tokenpak_mitm.core.plan.prefix_index import RAW_MIN_BYTES, Api, Section, boundaries, canonical_from_raw, prompt_blocks

__all__ = ["MAX_BLOCKS", "Block", "Shape", "first_difference", "mask_volatile", "parse_shape", "shape_of"]

MAX_BLOCKS = 4096  # blocks kept per request; a longer prompt is compared on its head only
_SYSTEM_ROLES = frozenset({"system", "developer"})
OPENAI_BREAKPOINT_TTL = "30m"  # cache_facts.OPENAI_GPT56: explicit breakpoints and the implicit one
_APIS: tuple[Api, ...] = ("anthropic", "openai_chat", "openai_responses", "gemini")
_VOLATILE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|\b[0-9a-fA-F]{16,}\b"  # long hex ids (request ids, hashes)
    r"|\d+"  # any run of digits: dates, times, counters
)
_NAMES = re.compile(  # weekday and month names, matched on lower-cased text
    r"\b(?:(?:mon|tues|wednes|thurs|fri|satur|sun)day|jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec"
    r"|january|february|march|april|june|july|august|september|october|november|december)\b"
)
_MASKED_CACHE: dict[bytes, bytes] = {}  # block digest -> masked digest; system prompts repeat every turn
_MASKED_CACHE_MAX = 4096


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def mask_volatile(text: str) -> str:
    """``text`` with every digit run, UUID, long hex id, weekday and month name replaced by ``#``."""
    return _NAMES.sub("#", _VOLATILE.sub("#", text).lower())


def _masked(digest: bytes, canonical: Callable[[], bytes]) -> bytes:
    masked = _MASKED_CACHE.get(digest)
    if masked is None:
        masked = _digest(mask_volatile(canonical().decode("utf-8", "replace")).encode())
        if len(_MASKED_CACHE) >= _MASKED_CACHE_MAX:
            _MASKED_CACHE.clear()
        _MASKED_CACHE[digest] = masked
    return masked


@dataclass(frozen=True, slots=True)
class Block:
    section: Section
    index: int | None  # the message number (messages) or the tool / system block index
    position: int  # flat position: what the 20-block lookback counts
    prefix: bytes  # prefix_index.Boundary.digest: cumulative digest up to and including the block
    tokens: int  # estimated prefix tokens up to and including this block
    digest: bytes
    masked: bytes
    marker_ttl: str | None
    message_end: bool  # the last block of its message (or section)
    role: str | None = None  # the message role (messages section)
    # An Anthropic mid-conversation system message ({"role": "system"} inside messages): it adds
    # instructions at its point in the history and is part of the messages prefix, not the system one.
    mid_system: bool = False

    @property
    def part(self) -> str:
        """tools, system or messages; OpenAI system/developer messages count as system (an Anthropic
        mid-conversation system message is history: the provider hashes it with the messages)."""
        if self.section == "messages" and self.role in _SYSTEM_ROLES and not self.mid_system:
            return "system"
        return self.section


@dataclass(frozen=True, slots=True)
class Shape:
    model: str
    blocks: tuple[Block, ...]
    turn_keys: tuple[bytes, ...]
    top_level_ttl: str | None  # Anthropic's top-level cache_control, or OpenAI's implicit breakpoint at the end
    truncated: bool = False
    api: str = "anthropic"
    long_retention: bool = False  # OpenAI prompt_cache_retention "24h"
    options_ttl: float | None = None  # OpenAI prompt_cache_options.ttl in seconds ("30m", the only value so far)

    @property
    def tokens(self) -> int:
        return self.blocks[-1].tokens if self.blocks else 0

    @property
    def marked(self) -> bool:
        return self.top_level_ttl is not None or any(b.marker_ttl for b in self.blocks)

    def breakpoints(self) -> list[int]:
        """Positions of the cache breakpoints, the automatic (top-level) one included."""
        points = [i for i, b in enumerate(self.blocks) if b.marker_ttl]
        if self.top_level_ttl is not None and self.blocks and (not points or points[-1] != len(self.blocks) - 1):
            points.append(len(self.blocks) - 1)
        return points

    def ttl_at(self, position: int) -> str:
        ttl = self.blocks[position].marker_ttl if 0 <= position < len(self.blocks) else None
        return ttl or self.top_level_ttl or "5m"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8", "surrogatepass")


def _block_canonical(value: object) -> bytes:
    return _canonical(_strip(value)[0])


def _ttl(marker: object) -> str | None:
    if not isinstance(marker, dict):
        return None
    ttl = marker.get("ttl")
    return ttl if ttl in ("5m", "1h") else "5m"


def _strip(block: object) -> tuple[object, str | None]:
    """The block without its marker(s), and the marker's TTL (a nested block's marker counts)."""
    if isinstance(block, str):
        return {"type": "text", "text": block}, None
    if not isinstance(block, dict):
        return block, None
    ttl = _ttl(block.get("cache_control"))
    clean = {k: v for k, v in block.items() if k not in ("cache_control", "prompt_cache_breakpoint")}
    for key in ("content",):
        content = clean.get(key)
        if isinstance(content, list):
            items = []
            for item in content:
                if isinstance(item, dict) and "cache_control" in item:
                    ttl = ttl or _ttl(item.get("cache_control"))
                    item = {k: v for k, v in item.items() if k != "cache_control"}
                items.append(item)
            clean[key] = items
    return clean, ttl


_BULK_KEYS = frozenset({"messages", "tools", "input", "contents"})  # the prompt itself: session_id.identify reads none of it


def parse_shape(body: bytes, api: str, slim: bool = False) -> tuple[object, Shape | None]:
    """The parsed body and its shape; (None, None) when the body is not JSON.

    slim: the parsed body without its bulk (messages, tools, input, contents), for a caller in
    another process: what `session_id.identify` reads is kept, and sending it back costs little.
    """
    raw: list[bytes | None] | None = None
    both = parse_and_scan(body) if api == "anthropic" and one_pass_pays(body) else None  # json.loads and the byte map in one pass
    if both is not None and isinstance(both[0], dict) and agrees_with(both[0], both[1]):
        parsed = both[0]
        addresses = ((section, message, block) for section, message, block, _, _ in prompt_blocks(parsed, "anthropic"))
        raw = [body[loc.start:loc.end] if loc is not None and loc.end - loc.start >= RAW_MIN_BYTES else None
               for loc in block_locs(both[1], addresses)]
    else:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return None, None
    shape = shape_of(parsed, api, raw)
    if slim and isinstance(parsed, dict):
        parsed = {k: v for k, v in parsed.items() if k not in _BULK_KEYS}
    return parsed, shape


def _block_digest(value: object) -> tuple[bytes, Callable[[], bytes]]:
    """(digest, the canonical bytes on demand) of one block (markers removed), from its parsed value."""
    canonical = _canonical(_strip(value)[0])
    return _digest(canonical), lambda: canonical


def _raw_digest(value: object, raw: bytes) -> tuple[bytes, Callable[[], bytes]] | None:
    """`_block_digest` of a plain text block (or string content) from the client's bytes, or None.

    When `prefix_index.canonical_from_raw` finds the bytes are the block's canonical form and the
    block is exactly {"type": "text", "text": ...}, its sorted-keys canonical form is
    b'{"text":' + the text's bytes + b',"type":"text"}': hashed without re-serialising.
    """
    if not (type(value) is str or (type(value) is dict and len(value) == 2 and value.get("type") == "text"
                                   and type(value.get("text")) is str)):
        return None
    same = canonical_from_raw(value, raw)
    if same is None or not same.startswith(_TEXT_OPEN):
        return None
    text = memoryview(same)[len(_TEXT_OPEN):-1]
    h = hashlib.blake2b(digest_size=8)
    h.update(b'{"text":')
    h.update(text)
    h.update(b',"type":"text"}')
    return h.digest(), lambda: b'{"text":' + bytes(text) + b',"type":"text"}'


def _marker_ttl(value: object, anthropic: bool) -> str | None:
    """The TTL `_strip` reads off a block (Anthropic); OpenAI: its breakpoint's."""
    if not isinstance(value, dict):
        return None
    if not anthropic:
        return OPENAI_BREAKPOINT_TTL if value.get("prompt_cache_breakpoint") is not None else None
    ttl = _ttl(value.get("cache_control"))
    content = value.get("content")
    if ttl is None and isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and "cache_control" in item:
                return _ttl(item.get("cache_control"))
    return ttl


_TEXT_OPEN = b'{"type":"text","text":'
# A block's bytes (markers aside: see shape_of) -> its digest, for the blocks of recent requests,
# which a conversation resends every turn. Bounded like prefix_index's step memo (entries, bytes held).
_DIGESTS: dict[bytes, bytes] = {}
_DIGESTS_MAX, _DIGESTS_MAX_BYTES = 8192, 8 << 20
_digests_bytes = 0
_digests_lock = threading.Lock()


def _remember(raw: bytes, digest: bytes) -> None:
    global _digests_bytes
    if len(raw) > _DIGESTS_MAX_BYTES // 4:
        return
    with _digests_lock:
        if raw in _DIGESTS:
            return
        _DIGESTS[raw] = digest
        _digests_bytes += len(raw)
        while len(_DIGESTS) > _DIGESTS_MAX or _digests_bytes > _DIGESTS_MAX_BYTES:
            oldest = next(iter(_DIGESTS))
            del _DIGESTS[oldest]
            _digests_bytes -= len(oldest)


def _recall(raw: bytes) -> bytes | None:
    with _digests_lock:
        found = _DIGESTS.pop(raw, None)
        if found is not None:
            _DIGESTS[raw] = found  # most recently used last
        return found


def shape_of(request: object, api: str = "anthropic", raw: Sequence[bytes | None] | None = None) -> Shape | None:
    """The shape of a parsed request body, or None when it is not a request we understand.

    raw: optionally, for each prompt block in `prefix_index.prompt_blocks` order, bytes that parse
    to the block once markers are removed (None where unknown), e.g. the client's, as for
    `prefix_index.boundaries`: the same shape, computed faster (markers are read off the values).
    """
    if not isinstance(request, dict) or api not in _APIS:
        return None
    dialect: Api = api
    model = request.get("model")
    bounds = boundaries(request, dialect, raw=raw)[:MAX_BLOCKS]
    values = list(prompt_blocks(request, dialect))[:MAX_BLOCKS]
    if len(values) != len(bounds):
        return None  # cannot happen (same walk); never pair blocks wrongly if it ever does
    anthropic = dialect == "anthropic"
    blocks: list[Block] = []
    turn = hashlib.blake2b(digest_size=8)
    turn_keys: list[bytes] = []
    for i, (b, (_, _, _, role, value)) in enumerate(zip(bounds, values)):
        piece = raw[i] if raw is not None and i < len(raw) else None
        if piece is not None and len(piece) < RAW_MIN_BYTES:
            piece = None  # (as in boundaries: small blocks are hashed the plain way, not remembered)
        known = _recall(piece) if piece is not None else None
        canonical: Callable[[], bytes]
        if known is not None:
            digest, canonical = known, partial(_block_canonical, value)
        else:
            fast = None
            if piece is not None:  # (bytes that parse to the block stripped of its markers will do: see above)
                fast = _raw_digest(value if _marker_ttl(value, True) is None else _strip(value)[0], piece)
            digest, canonical = fast if fast is not None else _block_digest(value)
            if piece is not None:
                _remember(piece, digest)
        ttl = _marker_ttl(value, anthropic)
        nxt = bounds[i + 1] if i + 1 < len(bounds) else None
        end = nxt is None or nxt.section != b.section or nxt.message != b.message
        index = b.message if b.section == "messages" else b.block
        # Volatile values are told apart in tools and system only: a message that differs is
        # history rewritten, whatever changed in it (and masking every message would cost the most).
        system = b.section != "messages" or role in _SYSTEM_ROLES
        masked = _masked(digest, canonical) if system else digest
        blocks.append(Block(b.section, index, b.position, b.digest, b.tokens_est, digest, masked, ttl, end, role,
                            anthropic and b.section == "messages" and role == "system"))
        if b.section == "messages" and role not in _SYSTEM_ROLES:
            turn.update(f"\0{role}\0".encode() + digest)
            if end:
                turn_keys.append(turn.copy().digest())
    if anthropic:
        top = _ttl(request.get("cache_control"))
    else:  # OpenAI (and Gemini): the provider caches the prompt's end by itself, unless told explicit-only
        options = request.get("prompt_cache_options")
        top = None if isinstance(options, dict) and options.get("mode") == "explicit" else OPENAI_BREAKPOINT_TTL
    options = request.get("prompt_cache_options")
    options_ttl = None if anthropic or not isinstance(options, dict) else ttl_seconds(options.get("ttl"))
    return Shape(model if isinstance(model, str) else "", tuple(blocks), tuple(turn_keys), top,
                 len(bounds) >= MAX_BLOCKS, api, request.get("prompt_cache_retention") == "24h", options_ttl)


def first_difference(a: Sequence[Block], b: Sequence[Block]) -> int | None:
    """Position of the first block whose cumulative prefix differs; None when one is a prefix of the other."""
    for position, (x, y) in enumerate(zip(a, b)):
        if x.prefix != y.prefix:
            return position
    return None
