"""What the session tracker needs to know about one request's prompt (pure: JSON in, values out).

A *shape* is the prompt as the provider caches it: blocks in prefix order (tools, then system,
then every message's content blocks), each with

* ``digest`` — a short hash of the block itself (markers removed), so two requests can be
  compared block by block and the first difference located;
* ``masked`` — the same hash with volatile values (digits, UUIDs, hex ids) blanked, so a
  difference that is only a changed date or id can be told from a real edit;
* ``prefix`` — the cumulative prefix fingerprint up to and including the block (model, the
  message-affecting parameters, and every earlier block), the key of the prefix index;
* ``tokens`` — an estimate of the prefix length in tokens (bytes / 4; the tracker rescales it
  with the exact total the provider reports);
* ``marker_ttl`` — the TTL of a ``cache_control`` marker on the block (``None`` = unmarked).

and, for lineage, ``turn_keys``: one hash per message boundary over the non-system messages
only, so a conversation whose system prompt changed is still recognised as the same
conversation.

The same builder serves the four dialects: Anthropic Messages (``tools``/``system``/
``messages``), OpenAI Chat (``tools``/``messages``, system-role messages form the system
section), OpenAI Responses (``tools``/``instructions``/``input``) and Gemini (``tools``/
``systemInstruction``/``contents``). Only Anthropic carries markers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Block", "Shape", "shape_of", "digest", "mask_volatile", "MAX_BLOCKS"]

Section = Literal["tools", "system", "messages"]
MAX_BLOCKS = 4096  # blocks kept per request; a prompt longer than this is compared on its head only
BYTES_PER_TOKEN_EST = 4
_PARAMS = ("tool_choice", "thinking")  # change the message cache (Anthropic's invalidation table)

_VOLATILE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # UUID
    r"|\b[0-9a-fA-F]{16,}\b"  # long hex ids (request ids, hashes)
    r"|\d+"  # any run of digits: dates, times, counters
    r"|(?i:\b(?:mon|tues|wednes|thurs|fri|satur|sun)day\b"  # weekday and month names
    r"|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\b)"
)


def digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).digest()


def mask_volatile(text: str) -> str:
    """``text`` with every digit run, UUID and long hex id replaced by ``#``."""
    return _VOLATILE.sub("#", text)


@dataclass(frozen=True, slots=True)
class Block:
    section: Section
    index: int  # position within its section (messages: content blocks counted across messages)
    message: int | None  # message number, for message blocks
    digest: bytes
    masked: bytes
    prefix: bytes
    tokens: int  # estimated prefix tokens up to and including this block
    marker_ttl: str | None


@dataclass(frozen=True, slots=True)
class Shape:
    model: str
    params: bytes  # digest of the message-affecting parameters (thinking, tool_choice)
    blocks: tuple[Block, ...]
    turn_keys: tuple[bytes, ...]  # cumulative hash over the non-system messages, one per message
    top_level_ttl: str | None  # Anthropic automatic caching: the top-level cache_control's TTL
    truncated: bool = False

    @property
    def tokens(self) -> int:
        return self.blocks[-1].tokens if self.blocks else 0

    @property
    def marked(self) -> bool:
        return self.top_level_ttl is not None or any(b.marker_ttl for b in self.blocks)

    def breakpoints(self) -> list[int]:
        """Positions (in ``blocks``) of the cache breakpoints, the automatic one included."""
        points = [i for i, b in enumerate(self.blocks) if b.marker_ttl]
        if self.top_level_ttl is not None and self.blocks and (not points or points[-1] != len(self.blocks) - 1):
            points.append(len(self.blocks) - 1)
        return points

    def ttl_at(self, position: int) -> str:
        ttl = self.blocks[position].marker_ttl if 0 <= position < len(self.blocks) else None
        return ttl or self.top_level_ttl or "5m"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _ttl(marker: object) -> str | None:
    if not isinstance(marker, dict):
        return None
    ttl = marker.get("ttl")
    return ttl if ttl in ("5m", "1h") else "5m"


def _strip(block: object) -> tuple[object, str | None]:
    """The block without its marker(s), and the marker's TTL (a nested last-block marker counts)."""
    if not isinstance(block, dict):
        return block, None
    ttl = _ttl(block.get("cache_control"))
    clean = {k: v for k, v in block.items() if k != "cache_control"}
    content = clean.get("content")
    if isinstance(content, list):
        items = []
        for item in content:
            if isinstance(item, dict) and "cache_control" in item:
                ttl = ttl or _ttl(item.get("cache_control"))
                item = {k: v for k, v in item.items() if k != "cache_control"}
            items.append(item)
        clean["content"] = items
    return clean, ttl


def _as_list(value: object) -> list[object]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]  # a string is one text block (cache-equivalent)
    if isinstance(value, list):
        return value
    if value is None:
        return []
    return [value]


def _sections(dialect: str, req: Mapping[str, Any]) -> tuple[list[object], list[object], list[tuple[str, object]]]:
    """(tools, system blocks, [(role, content)]) in the dialect's own terms."""
    tools = _as_list(req.get("tools"))
    if dialect == "anthropic":
        msgs = [(str(m.get("role", "")), m.get("content")) for m in _as_list(req.get("messages")) if isinstance(m, dict)]
        return tools, _as_list(req.get("system")), msgs
    if dialect == "openai_chat":
        system: list[object] = []
        msgs = []
        for m in _as_list(req.get("messages")):
            if not isinstance(m, dict):
                continue
            role = str(m.get("role", ""))
            rest = {k: v for k, v in m.items() if k not in ("role",)}
            if role in ("system", "developer") and not msgs:
                system.append(rest)
            else:
                msgs.append((role, rest))
        return tools, system, msgs
    if dialect == "openai_responses":
        items = req.get("input")
        msgs = [(str(i.get("role", i.get("type", ""))) if isinstance(i, dict) else "user", i) for i in _as_list(items)]
        return tools, _as_list(req.get("instructions")), msgs
    if dialect == "gemini":
        sys_inst = req.get("systemInstruction") or req.get("system_instruction")
        parts = sys_inst.get("parts") if isinstance(sys_inst, dict) else sys_inst
        msgs = [(str(c.get("role", "")), c.get("parts")) for c in _as_list(req.get("contents")) if isinstance(c, dict)]
        return tools, _as_list(parts), msgs
    return [], [], []


def shape_of(request: object, dialect: str = "anthropic", model: str | None = None) -> Shape | None:
    """The shape of a parsed request body, or None when it is not a request we understand."""
    if not isinstance(request, dict):
        return None
    name = request.get("model")
    model = name if isinstance(name, str) and name else (model or "")
    tools, system, messages = _sections(dialect, request)
    params = digest(_canonical({k: request.get(k) for k in _PARAMS}))
    running = hashlib.blake2b(f"model\0{model}".encode(), digest_size=16)
    blocks: list[Block] = []
    total_bytes = 0
    truncated = False

    def add(section: Section, index: int, message: int | None, role: str, raw: object) -> bool:
        nonlocal total_bytes
        if len(blocks) >= MAX_BLOCKS:
            return False
        clean, ttl = _strip(raw)
        canonical = _canonical(clean)
        total_bytes += len(canonical)
        running.update(f"\0{section}\0{role}\0".encode() + canonical)
        masked = digest(mask_volatile(canonical.decode("utf-8", "replace")).encode())
        blocks.append(Block(section, index, message, digest(canonical), masked, running.copy().digest()[:8],
                            -(-total_bytes // BYTES_PER_TOKEN_EST), ttl))
        return True

    for i, tool in enumerate(tools):
        truncated |= not add("tools", i, None, "", tool)
    for i, block in enumerate(system):
        truncated |= not add("system", i, None, "", block)
    running.update(b"\0params\0" + params)
    turn = hashlib.blake2b(digest_size=8)
    turn_keys: list[bytes] = []
    position = 0
    for number, (role, content) in enumerate(messages):
        content_blocks = _as_list(content) if dialect != "openai_chat" and dialect != "openai_responses" else [content]
        for block in content_blocks:
            truncated |= not add("messages", position, number, role, block)
            position += 1
        turn.update(f"\0{role}\0".encode() + _canonical(_strip_all(content)))
        turn_keys.append(turn.copy().digest())
    top = _ttl(request.get("cache_control")) if dialect == "anthropic" else None
    return Shape(model, params, tuple(blocks), tuple(turn_keys), top, truncated)


def _strip_all(content: object) -> object:
    """Message content with every marker removed (lineage must not depend on where markers sit)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [_strip(b)[0] for b in content]
    if isinstance(content, dict):
        return _strip(content)[0]
    return content


def first_difference(a: Iterable[Block], b: Iterable[Block]) -> int | None:
    """Position of the first block whose cumulative prefix differs; None when one is a prefix of the other."""
    for position, (x, y) in enumerate(zip(a, b)):
        if x.prefix != y.prefix:
            return position
    return None
