"""Fingerprints of a request's cacheable prefix, and a bounded index of the prefixes seen.

Pure (no I/O, no mitmproxy, no clock: every time is an argument). Two layers, usable apart:

1. ``boundaries(request, api=...)`` — a pure function. For each block of the prompt in the
   provider's prefix order (tools, system, messages), a ``Boundary``: its address (section,
   message index, block index), its flat position (what the 20-block lookback counts), the
   cumulative 16-byte digest of everything up to and including it, and the estimated tokens of
   that prefix. Two requests share a prefix up to block ``i`` exactly when their ``digest`` at
   ``i`` is equal, so "where did two requests first differ" is the first position whose digests
   differ (``first_difference``), and the boundary's ``section`` says in which part.
   Hashed per block: compact JSON in the client's key order, with ``cache_control`` /
   ``prompt_cache_breakpoint`` removed (markers do not change the cached content), a string
   ``content`` / ``system`` hashed as the one text block the provider treats it as (and a
   Responses ``input_text`` part holding only its text as that same block: the one-part list a
   string ``content`` is wrapped into when a breakpoint is spliced onto it). Folded in:
   the model (at the start), and per section the request parameters that invalidate it
   (``cache_facts.SECTION_PARAMETERS``: e.g. ``tool_choice`` and thinking settings before the
   first message block, so changing them changes every messages digest but no tools/system one).
   ``section_parameters(request)`` gives those values, for a diagnosis that wants to say WHICH
   parameter changed.

2. ``PrefixIndex`` — what the planner remembers: per digest, when it was seen, how often, at what
   gaps, whether requests ended there and were later continued, which sibling requests branched
   from it, and the cache entry the proxy expects the provider holds for it (written / read,
   TTL, readable yet or still in flight). Only digests and timings are stored, never content.
   Thread-safe (one lock). Bounded: an entry expires when unseen for longer than ``horizon``
   seconds (the longest TTL in play, 1h) and its cache entry has lapsed; a hard cap
   (``max_entries``) evicts the least recently seen first. ``dump``/``load`` persist digests and
   timings (a restart does not start cold); the caller does the file I/O.

Supported ``api`` values: ``anthropic`` (Messages), ``openai_chat`` (Chat Completions: tools,
then each message's content parts), ``openai_responses`` (tools, ``instructions`` as the system
section, then ``input`` items), ``gemini`` (tools, ``systemInstruction`` parts, ``contents`` parts).
The OpenAI and Gemini orders are an assumption (their docs say only "the prefix").
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import threading
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from tokenpak_mitm.core.dialects import DialectName, dialect
from tokenpak_mitm.core.dialects.spec import PromptLayout
from tokenpak_mitm.core.plan.cache_facts import SECTION_PARAMETERS, TTL_SECONDS

__all__ = [
    "BYTES_PER_TOKEN",
    "CLUSTER_SECONDS",
    "Api",
    "Boundary",
    "PrefixIndex",
    "PrefixStats",
    "RAW_MIN_BYTES",
    "Recorded",
    "Section",
    "boundaries",
    "canonical_from_raw",
    "first_difference",
    "item_content",
    "part_at",
    "prompt_blocks",
    "section_parameters",
]

Api = DialectName  # the prompt layout comes from the dialect (core/dialects)
Section = Literal["tools", "system", "messages"]
RAW_MIN_BYTES: Final = 512  # `boundaries(raw=)` uses a block's bytes from this size up (smaller: re-serialised, not remembered)
BYTES_PER_TOKEN: Final = 3.0  # the planner's historical, deliberately high estimate (see cache_planner)
DIGEST_BYTES: Final = 16
_MARKER_KEYS: Final = frozenset({"cache_control", "prompt_cache_breakpoint"})


@dataclass(frozen=True, slots=True)
class Boundary:
    """The end of one block of the prompt, in the provider's prefix order.

    section: tools | system | messages. message: the message (input item / content) index in the
    messages section, else None. block: the tool index, system block index or content block index;
    None for a string content (or system) the provider treats as one text block.
    position: flat 0-based block position. digest: cumulative prefix hash (16 bytes).
    tokens_est: estimated tokens of the prefix up to and including this block.
    role: the message role (messages section only). kind: the block's type ("text", "tool", ...).
    """

    section: Section
    message: int | None
    block: int | None
    position: int
    digest: bytes
    tokens_est: int
    role: str | None
    kind: str


def boundaries(request: Mapping[str, Any], api: Api = "anthropic", bytes_per_token: float = BYTES_PER_TOKEN,
               raw: Sequence[bytes | None] | None = None) -> tuple[Boundary, ...]:
    """Every block boundary of `request` with its cumulative digest and estimated prefix tokens.

    Never raises on odd shapes: parts that are not what the API documents are hashed as they are
    (a non-dict block is one block). An empty tuple when there is nothing to fingerprint.

    raw: optionally, the client's own bytes of each block, in `prompt_blocks` order (None where
    not known), as `jsonscan` locates them in the body `request` was parsed from. A block whose
    bytes already are its canonical form (compact, in the canonical escapes, no marker, no
    duplicate key: `canonical_from_raw`) is hashed from them, skipping the re-serialisation
    that is most of the cost of a big prompt. The digests are the same either way.
    """
    model = request.get("model")
    h = hashlib.blake2b(f"{api}\0{model if isinstance(model, str) else ''}".encode(), digest_size=DIGEST_BYTES).digest()
    params = section_parameters(request, api)
    out: list[Boundary] = []
    total = 0
    current: str | None = None
    for k, (section, message, block, role, value) in enumerate(_blocks(request, api)):
        if section != current:
            current = section
            folded_params = params.get(section)
            folded = json.dumps(folded_params, sort_keys=True, separators=(",", ":"), default=str) if folded_params else "{}"
            h = _step(h, f"\0section\0{section}\0{folded}".encode())
        piece = raw[k] if raw is not None and k < len(raw) else None
        if piece is not None and len(piece) < RAW_MIN_BYTES:
            piece = None  # a small block re-serialises as fast as the bookkeeping would take
        head = b"\0" + (role or "").encode() + b"\0"
        known = _STEPS.get((h, head, piece)) if piece is not None else None
        if known is not None:
            h, size = known
        else:
            data = canonical_from_raw(value, piece) if piece is not None else None
            if data is None:
                data = _canonical(value)
            size = len(data)
            step = hashlib.blake2b(h, digest_size=DIGEST_BYTES)  # == _step(h, head + data), without copying data
            step.update(head)
            step.update(data)
            previous, h = h, step.digest()
            if piece is not None:
                _STEPS.put((previous, head, piece), (h, size))
        total += size
        kind = value.get("type") if isinstance(value, dict) else ("text" if isinstance(value, str) else None)
        out.append(Boundary(
            section, message, block, len(out), h, math.ceil(total / bytes_per_token), role,
            kind if isinstance(kind, str) else ("tool" if section == "tools" else "unknown"),
        ))
    return tuple(out)


_SECTIONS: Final[tuple[Section, ...]] = ("tools", "system", "messages")


def section_parameters(request: Mapping[str, Any], api: Api = "anthropic") -> dict[str, dict[str, Any]]:
    """The invalidating parameters folded into each section's digests (see the module docstring)."""
    if api != "anthropic":
        return {}
    citations, images = _scan_blocks(request)
    derived: dict[str, Any] = {"citations": citations, "images": images}
    for name in _READ_PARAMETERS:
        if "." in name:
            outer, inner = name.split(".", 1)
            parent = request.get(outer)
            derived[name] = parent.get(inner) if isinstance(parent, dict) else None
        else:
            derived[name] = request.get(name)
    return {section: {p: derived[p] for p in names if derived[p] not in (None, False)}
            for section, names in SECTION_PARAMETERS.items()}


_READ_PARAMETERS: Final = tuple(sorted({p for names in SECTION_PARAMETERS.values() for p in names} - {"citations", "images"}))


def _scan_blocks(request: Mapping[str, Any]) -> tuple[bool, bool]:
    """(some document in system or messages enables citations, some image appears in the messages)."""
    citations = images = False
    pending: list[tuple[Any, bool]] = [(request.get("system"), False), (request.get("messages"), True)]
    while pending:
        node, in_messages = pending.pop()
        if isinstance(node, list):
            pending.extend((item, in_messages) for item in node if isinstance(item, (list, dict)))
        elif isinstance(node, dict):
            kind = node.get("type")
            if kind == "image" and in_messages:
                images = True
            elif kind == "document" and _enabled(node.get("citations")):
                citations = True
            if citations and images:
                break
            for key in ("content", "source"):
                child = node.get(key)
                if isinstance(child, (list, dict)):
                    pending.append((child, in_messages))
    return citations, images


def item_content(item: Mapping[str, Any], api: str) -> tuple[str, object]:
    """The key holding a message's (input item's) content parts, and its value.

    The dialect's layout says which (``content``; Gemini's ``parts``; for a Responses item without
    ``content`` whose ``output`` is a list of content parts, i.e. a ``function_call_output``
    carrying parts, ``output``). The one rule the fingerprints, the byte scanner and the OpenAI
    splice share.
    """
    return _layout(api).item_content(item)


_DEFAULT_LAYOUT = PromptLayout(items="messages", system=("system",))


def _layout(api: str) -> PromptLayout:
    d = dialect(api)
    return d.layout if d is not None else _DEFAULT_LAYOUT


def part_at(request: Mapping[str, Any], api: Api, b: Boundary) -> object:
    """The content part a messages-section boundary ends (None for a string content or a whole item)."""
    items = request.get(_layout(api).items)
    if b.section != "messages" or b.message is None or b.block is None or not isinstance(items, list) or b.message >= len(items):
        return None
    item = items[b.message]
    if not isinstance(item, dict):
        return None
    content = item_content(item, api)[1]
    return content[b.block] if isinstance(content, list) and b.block < len(content) else None


def first_difference(a: Sequence[Boundary], b: Sequence[Boundary]) -> int | None:
    """Position of the first block whose prefix differs (None: one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x.digest != y.digest:
            return i
    return None


def _enabled(value: object) -> bool:
    return isinstance(value, dict) and bool(value.get("enabled"))


def _step(h: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(h + data, digest_size=DIGEST_BYTES).digest()


def _canonical(value: object) -> bytes:
    if isinstance(value, str):
        value = {"type": "text", "text": value}
    elif isinstance(value, dict):
        value = _strip(value)
        if value.get("type") == "input_text" and value.keys() == {"type", "text"} and isinstance(value["text"], str):
            value = {"type": "text", "text": value["text"]}  # the same text block as a string content
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8", "surrogatepass")


class _StepMemo:
    """The digest steps of recent requests' blocks: (previous digest, role, the block's bytes) -> (digest, canonical length).

    Clients send each turn as the previous prompt plus new messages, so nearly every block of a
    request was hashed, after the same prefix, by the one before it. The key is the block's own
    bytes (its canonical form, so the step, is a function of them), compared whole: a hit is
    exact. Looking it up costs Python's bytes hash (~5 GB/s) against blake2b (~1 GB/s) plus the
    canonical form. Bounded by entries and by bytes held (least recently used out first), in
    memory only. Thread-safe.
    """

    def __init__(self, max_entries: int = 8192, max_bytes: int = 8 << 20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._steps: dict[tuple[bytes, bytes, bytes], tuple[bytes, int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[bytes, bytes, bytes]) -> tuple[bytes, int] | None:
        with self._lock:
            found = self._steps.pop(key, None)
            if found is not None:
                self._steps[key] = found  # most recently used last
            return found

    def put(self, key: tuple[bytes, bytes, bytes], value: tuple[bytes, int]) -> None:
        size = len(key[2])
        if size > self.max_bytes // 4:
            return  # one huge block would flush everything else
        with self._lock:
            if key in self._steps:
                return
            self._steps[key] = value
            self._bytes += size
            while len(self._steps) > self.max_entries or self._bytes > self.max_bytes:
                oldest = next(iter(self._steps))
                del self._steps[oldest]
                self._bytes -= len(oldest[2])

    def clear(self) -> None:
        with self._lock:
            self._steps.clear()
            self._bytes = 0


_STEPS: Final = _StepMemo()


# What is left of a block's bytes once its strings are cut out, when nothing in it needs rewriting
# for the canonical form: no whitespace, ints spelled as Python prints them (no "-0", no float,
# whose spelling json.dumps may change), literals, punctuation.
_CANONICAL_SKELETON: Final = re.compile(rb"(?:[{}\[\],:]|true|false|null|0|-?[1-9][0-9]*+)*+")
_TEXT_BLOCK_OPEN: Final = b'{"type":"text","text":'
_INPUT_TEXT_OPEN: Final = b'{"type":"input_text","text":'
_MARKER_KEYS_RAW: Final = frozenset(k.encode() for k in _MARKER_KEYS)


def canonical_from_raw(value: object, raw: bytes) -> bytes | None:
    """``_canonical(value)`` taken from the client's bytes of `value` (`raw`), or None when they differ from it.

    `raw` must be the exact bytes `value` was parsed from (valid JSON). They ARE the canonical form
    when: every escape is one json.dumps(ensure_ascii=False) writes the same way (``\\"``,
    ``\\\\``, ``\\n``, ``\\r``, ``\\t``, ``\\b``, ``\\f``; no ``\\uXXXX``, no ``\\/``), so each string
    reads back to its own bytes; the skeleton outside the strings is compact with canonical ints
    (`_CANONICAL_SKELETON`); no member name occurs twice in an object (json.loads would drop one:
    the ``:`` count equals the members parsed); and nothing is rewritten (no marker key anywhere,
    not an ``input_text`` part, except one spelled exactly ``{"type":"input_text","text":"..."}``,
    whose canonical form is that text block's). A string `value` is the text block it stands for.
    Anything else: None (the caller serialises). Cheap: C-speed passes over the bytes, Python work
    per container.
    """
    if b"\\" in raw:
        r = raw.replace(b"\\\\", b"")  # escaped backslashes out first: every other backslash then starts an escape
        if b"\\u" in r or b"\\/" in r:
            return None
        r = r.replace(b'\\"', b"")  # escaped quotes out: every quote left delimits a string
    else:
        r = raw
    if isinstance(value, str):
        return _TEXT_BLOCK_OPEN + raw + b"}" if raw[:1] == b'"' else None
    if type(value) is dict and len(value) == 2 and r.startswith(_TEXT_BLOCK_OPEN) and r.endswith(b'"}'):
        # The common big block, {"type":"text","text":"..."} exactly: one string from the opening quote
        # to the end (so no other member hides in it) is all there is to check.
        return raw if r.find(b'"', len(_TEXT_BLOCK_OPEN) + 1) == len(r) - 2 else None
    if type(value) is dict and len(value) == 2 and r.startswith(_INPUT_TEXT_OPEN) and r.endswith(b'"}'):
        # A Responses text part, {"type":"input_text","text":"..."} exactly (the same single-string
        # check): `_canonical` hashes it as the text block with that text.
        return _TEXT_BLOCK_OPEN + raw[len(_INPUT_TEXT_OPEN):] if r.find(b'"', len(_INPUT_TEXT_OPEN) + 1) == len(r) - 2 else None
    parts = r.split(b'"')
    if any(parts[k] in _MARKER_KEYS_RAW for k in range(1, len(parts) - 1, 2) if parts[k + 1][:1] == b":"):
        return None  # a marker: _strip removes it (wherever it is: none is kept)
    if isinstance(value, dict) and value.get("type") == "input_text":
        return None
    skeleton = b"".join(parts[0::2])
    if _CANONICAL_SKELETON.fullmatch(skeleton) is None or skeleton.count(b":") != _members(value):
        return None
    return raw


def _members(value: object) -> int:
    """Object members in `value`, nested ones included."""
    count = 0
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            count += len(node)
            pending.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            pending.extend(v for v in node if isinstance(v, (dict, list)))
    return count


def _strip(block: dict[str, Any]) -> dict[str, Any]:
    """The block without markers (its own, and those on blocks nested in content / source.content)."""
    clean = {k: v for k, v in block.items() if k not in _MARKER_KEYS}
    content = clean.get("content")
    if isinstance(content, list):
        clean["content"] = [_strip(c) if isinstance(c, dict) else c for c in content]
    source = clean.get("source")
    if isinstance(source, dict) and isinstance(source.get("content"), list):
        clean["source"] = {**source, "content": [_strip(c) if isinstance(c, dict) else c for c in source["content"]]}
    return clean


_Part = tuple[Section, "int | None", "int | None", "str | None", object]


def _blocks(request: Mapping[str, Any], api: Api) -> Iterator[_Part]:
    tools = request.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            yield "tools", None, i, None, tool
    layout = _layout(api)
    system, messages, content_key = layout.system_value(request), layout.item_list(request), layout.content
    if isinstance(system, str):
        yield "system", None, None, None, system
    elif isinstance(system, list):
        for j, block in enumerate(system):
            yield "system", None, j, None, block
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        key = layout.item_content(message)[0] if isinstance(message, dict) else content_key
        if not isinstance(message, dict) or key not in message:
            yield "messages", i, None, None, message  # e.g. a Responses function_call item: one block
            continue
        role = message.get("role")
        role = role if isinstance(role, str) else None
        content = message[key]
        if isinstance(content, list):
            for j, block in enumerate(content):
                yield "messages", i, j, role, block
        else:
            yield "messages", i, None, role, content


# ------------------------------------------------------------------------------------ the index


CLUSTER_SECONDS: Final = 2.0  # sightings closer than this are one burst (concurrent: none can read another's write)
MAX_CLUSTERS: Final = 12  # sighting bursts kept per prefix (the most recent ones)


@dataclass(frozen=True, slots=True)
class PrefixStats:
    """A snapshot of what the index knows about one prefix digest (times in the caller's clock).

    seen: requests whose prompt contained this prefix. ends: requests whose prompt ended here.
    continued: later requests whose longest previously seen prefix was this one while it was an
    end (a conversation continuing from here). branches: later requests whose longest previously
    seen prefix was this one and that went on differently (siblings sharing it).
    branches_continued: how many of those siblings were themselves later continued.
    clusters: the most recent sighting bursts, oldest first, as (time of the burst's first
    sighting, requests in it); sightings within CLUSTER_SECONDS of a burst's start join it.
    cached_until: when the entry the proxy expects the provider holds for this prefix lapses
    (None: none expected). cached_ttl: its TTL. in_flight: the request that writes it has not
    begun its response yet (not readable by anyone else).
    """

    first_seen: float
    last_seen: float
    seen: int
    ends: int
    continued: int
    branches: int
    branches_continued: int
    clusters: tuple[tuple[float, int], ...]
    cached_until: float | None
    cached_ttl: str | None
    in_flight: bool
    to_end: int = 0  # blocks between this prefix and the end of the latest request that contained it

    def live(self, now: float) -> bool:
        """An entry is expected in the provider's cache and readable now."""
        return self.cached_until is not None and self.cached_until > now and not self.in_flight

    def writing(self, now: float) -> bool:
        """Another request is writing this entry right now (its response has not begun)."""
        return self.in_flight and self.cached_until is not None and self.cached_until > now


@dataclass(frozen=True, slots=True)
class Recorded:
    """What `PrefixIndex.record` did for one request, for the response-side follow-up."""

    written: tuple[bytes, ...]  # digests whose cache entry this request is expected to write
    read: bytes | None  # digest expected to be read (refreshed), if any
    continuation_of: bytes | None  # the previous request's end this request continues, if any
    branch_of: bytes | None  # the shared prefix this request branched from, if any


class _Entry:
    __slots__ = (
        "branches",
        "branches_continued",
        "cached_ttl",
        "cached_until",
        "clusters",
        "continued",
        "ends",
        "first_seen",
        "in_flight",
        "last_seen",
        "origin",
        "seen",
        "to_end",
    )

    def __init__(self, now: float) -> None:
        self.first_seen = self.last_seen = now
        self.seen = self.ends = self.continued = self.branches = self.branches_continued = 0
        self.clusters = array("d")  # (start, count) pairs, flattened
        self.cached_until: float | None = None
        self.cached_ttl: str | None = None
        self.in_flight = False
        self.origin: bytes | None = None  # for an end: the prefix its request branched from
        self.to_end = 0

    def sighting(self, now: float) -> None:
        c = self.clusters
        if c and 0 <= now - c[-2] < CLUSTER_SECONDS:
            c[-1] += 1
            return
        if len(c) >= 2 * MAX_CLUSTERS:
            del c[:2]
        c.extend((now, 1.0))

    def snapshot(self) -> PrefixStats:
        c = self.clusters
        return PrefixStats(self.first_seen, self.last_seen, self.seen, self.ends, self.continued, self.branches,
                           self.branches_continued, tuple(zip(c[0::2], map(int, c[1::2]))),
                           self.cached_until, self.cached_ttl, self.in_flight, self.to_end)


class PrefixIndex:
    """Bounded, thread-safe memory of prefix digests (see the module docstring)."""

    def __init__(self, max_entries: int = 100_000, horizon: float = TTL_SECONDS["1h"]) -> None:
        if max_entries < 1 or horizon <= 0:
            raise ValueError("max_entries and horizon must be positive")
        self.max_entries = max_entries
        self.horizon = horizon
        self._entries: dict[bytes, _Entry] = {}  # least recently seen first
        self._lock = threading.Lock()
        self.evicted = 0  # entries dropped by the hard cap (expiry is not counted)

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self, digests: Sequence[bytes], now: float) -> tuple[PrefixStats | None, ...]:
        """What is known about each digest (None: never seen or forgotten)."""
        with self._lock:
            self._expire(now)
            return tuple(e.snapshot() if (e := self._entries.get(d)) is not None else None for d in digests)

    def record(self, digests: Sequence[bytes], now: float, *, writes: Mapping[int, str] = {},
               read: int | None = None) -> Recorded:
        """Remember one request whose prompt has these boundary digests (in order).

        writes: position -> TTL of the entries this request is expected to write (markers past the
        read hit, at or above the minimum). read: position of the entry it is expected to read.
        The writes are in flight (unreadable to others) until `response_began`. Positions index
        `digests`. Call `stats` first: the planner decides on what was known before this request.
        """
        if not digests:
            return Recorded((), None, None, None)
        with self._lock:
            for done in self._record_steps(digests, now, writes, read, len(digests)):
                if done is not None:
                    return done
        raise AssertionError("unreachable")  # pragma: no cover

    def record_stepwise(self, digests: Sequence[bytes], now: float, *, writes: Mapping[int, str] = {},
                        read: int | None = None, step: int = 2048) -> Iterator[Recorded | None]:
        """`record` in slices of `step` digests, for a caller that must not hold the CPU for long
        (the proxy's event loop): each `next` does one slice under the lock, the last yields the
        `Recorded`. Between slices other requests may be recorded (as between `stats` and `record`).
        """
        if not digests:
            yield Recorded((), None, None, None)
            return
        steps = self._record_steps(digests, now, writes, read, max(1, step))
        while True:
            with self._lock:
                done = next(steps)
            yield done
            if done is not None:
                return

    def _record_steps(self, digests: Sequence[bytes], now: float, writes: Mapping[int, str], read: int | None,
                      step: int) -> Iterator[Recorded | None]:
        """The work of `record` (the caller holds the lock), pausing with None after every `step` digests."""
        self._expire(now)
        entries = self._entries
        deepest = next((i for i in range(len(digests) - 1, -1, -1) if digests[i] in entries), None)
        last = len(digests) - 1
        continuation = branch = None
        if deepest is not None and deepest < last:  # (deepest == last: a repeat, e.g. a retry)
            anchor = entries[digests[deepest]]
            if anchor.ends > 0:  # an earlier request ended here: this one continues it
                continuation = digests[deepest]
                anchor.continued += 1
                origin = entries.get(anchor.origin) if anchor.origin is not None else None
                if anchor.continued == 1 and origin is not None:
                    origin.branches_continued += 1
            else:  # only passed through: this one shares the prefix and goes on differently
                branch = digests[deepest]
                anchor.branches += 1
        for start in range(0, len(digests), step):
            if start:
                yield None
                entries = self._entries
            for i in range(start, min(start + step, len(digests))):
                digest = digests[i]
                entry = entries.pop(digest, None)
                if entry is None:
                    entry = _Entry(now)
                entry.last_seen = max(entry.last_seen, now)
                entry.sighting(now)
                entry.seen += 1
                entry.to_end = last - i
                if i == last:
                    entry.ends += 1
                    if deepest is not None and deepest < last:
                        entry.origin = digests[deepest]
                entries[digest] = entry  # re-inserted: most recently seen last
        hit = digests[read] if read is not None and 0 <= read < len(digests) else None
        if hit is not None and (entry := entries.get(hit)) is not None:  # (stepwise: another request may have evicted it)
            ttl = entry.cached_ttl or "5m"
            entry.cached_until = max(entry.cached_until or now, now + TTL_SECONDS[ttl])
        written = []
        for position, ttl in writes.items():
            if 0 <= position < len(digests) and (entry := entries.get(digests[position])) is not None:
                entry.cached_until, entry.cached_ttl, entry.in_flight = now + TTL_SECONDS[ttl], ttl, True
                written.append(digests[position])
        while len(entries) > self.max_entries:
            del entries[next(iter(entries))]
            self.evicted += 1
        yield Recorded(tuple(written), hit, continuation, branch)

    def response_began(self, recorded: Recorded) -> None:
        """The response of a request has begun: the entries it writes are now readable."""
        with self._lock:
            for digest in recorded.written:
                entry = self._entries.get(digest)
                if entry is not None:
                    entry.in_flight = False

    def forget(self, recorded: Recorded) -> None:
        """The provider cached nothing for this request (it failed, or its usage shows no read and
        no write): drop the entries it was expected to write or refresh."""
        with self._lock:
            for digest in (*recorded.written, *((recorded.read,) if recorded.read else ())):
                entry = self._entries.get(digest)
                if entry is not None:
                    entry.cached_until, entry.cached_ttl, entry.in_flight = None, None, False

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            digest = next(iter(entries))
            entry = entries[digest]
            if entry.last_seen + self.horizon > now or (entry.cached_until is not None and entry.cached_until > now):
                return
            del entries[digest]

    # -- a snapshot for another process (the planning worker: split_plan) -------------------
    _SNAP: Final = struct.Struct("<16sddIIIIIdBBBI")

    def export_stats(self, digests: Sequence[bytes], now: float) -> bytes:
        """`stats(digests, now)` of the known digests as compact records (`stats_from_export` reads them).

        Much cheaper than `stats` to build and to pickle: no object per entry.
        """
        pack, ttls, parts = self._SNAP.pack, self._TTLS, []
        with self._lock:
            self._expire(now)
            entries = self._entries
            for digest in digests:
                e = entries.get(digest)
                if e is None:
                    continue
                ttl = ttls.index(e.cached_ttl) if e.cached_ttl in ttls else 0
                until = math.nan if e.cached_until is None else e.cached_until
                parts.append(pack(digest, e.first_seen, e.last_seen, e.seen, e.ends, e.continued, e.branches,
                                  e.branches_continued, until, ttl, e.in_flight, len(e.clusters) // 2, e.to_end))
                parts.append(e.clusters.tobytes())
        return b"".join(parts)

    @classmethod
    def stats_from_export(cls, data: bytes) -> dict[bytes, PrefixStats]:
        """The `PrefixStats` each digest in `export_stats` output had (equal to what `stats` gave)."""
        out: dict[bytes, PrefixStats] = {}
        at, size = 0, cls._SNAP.size
        while at < len(data):
            digest, first, last, seen, ends, cont, branches, bcont, until, ttl, flight, n, to_end = cls._SNAP.unpack_from(data, at)
            at += size
            c = array("d")
            c.frombytes(data[at:at + 16 * n])
            at += 16 * n
            out[digest] = PrefixStats(first, last, seen, ends, cont, branches, bcont, tuple(zip(c[0::2], map(int, c[1::2]))),
                                      None if math.isnan(until) else until, cls._TTLS[ttl] or None, bool(flight), to_end)
        return out

    # -- persistence (digests and timings only) ----------------------------------------------
    _HEAD: Final = struct.Struct("<16sddIIIIIdBB")
    _TTLS: Final = ("", *TTL_SECONDS)
    _MAGIC: Final = b"TPXI2"

    def dump(self) -> bytes:
        """Every entry as binary records: digest, counters, sighting times; never content."""
        with self._lock:
            parts = [self._MAGIC]
            for digest, e in self._entries.items():
                ttl = self._TTLS.index(e.cached_ttl) if e.cached_ttl in self._TTLS else 0
                parts.append(self._HEAD.pack(digest, e.first_seen, e.last_seen, e.seen, e.ends, e.continued, e.branches,
                                             e.branches_continued, e.cached_until or 0.0, ttl, len(e.clusters) // 2))
                parts.append(e.clusters.tobytes())
            return b"".join(parts)

    def load(self, data: bytes, now: float) -> int:
        """Restore `dump` output (entries already expired at `now` are dropped); returns how many loaded.

        ValueError on data that is not a dump. In-flight marks and branch origins are not restored.
        """
        if not data.startswith(self._MAGIC):
            raise ValueError("not a prefix index dump")
        loaded, at, size = 0, len(self._MAGIC), self._HEAD.size
        restored: list[tuple[bytes, _Entry]] = []
        while at < len(data):
            if at + size > len(data):
                raise ValueError("truncated prefix index dump")
            digest, first, last, seen, ends, cont, branches, bcont, until, ttl, n = self._HEAD.unpack_from(data, at)
            at += size
            end = at + 16 * n
            if end > len(data) or n > MAX_CLUSTERS:
                raise ValueError("truncated prefix index dump")
            entry = _Entry(first)
            entry.last_seen, entry.seen, entry.ends, entry.continued = last, seen, ends, cont
            entry.branches, entry.branches_continued = branches, bcont
            entry.clusters.frombytes(data[at:end])
            at = end
            if until and 0 < ttl < len(self._TTLS):
                entry.cached_until, entry.cached_ttl = until, self._TTLS[ttl]
            restored.append((digest, entry))
            loaded += 1
        with self._lock:
            for digest, entry in restored:
                self._entries.pop(digest, None)
                self._entries[digest] = entry
            ordered = sorted(self._entries.items(), key=lambda item: item[1].last_seen)
            self._entries = dict(ordered[-self.max_entries:])
            self._expire(now)
        return loaded


def prompt_blocks(request: Mapping[str, Any], api: Api = "anthropic") -> Iterator[tuple[Section, int | None, int | None, str | None, object]]:
    """The blocks `boundaries` fingerprints, in the same order: (section, message, block, role, value).

    ``value`` is the block as the client sent it (markers included), so a caller can read what
    `boundaries` deliberately ignores (a block's own content hash, its marker) without walking the
    request a second, possibly different, way. Added for the session tracker (request_shape).
    """
    return _blocks(request, api)
