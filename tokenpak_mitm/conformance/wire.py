"""Small, independent readings of wire data used by the checkers.

Deliberately NOT the proxy's own code (``sse.SSEParser``, ``decoders``, ``cache_planner``): a
checker that reused the implementation under test would agree with its bugs. These helpers are
simple and slow on purpose; they only ever run on recorded data and in tests.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tokenpak_mitm.core.observe import decoders

__all__ = [
    "split_frames", "frame_data", "frame_json", "decode_body", "count_cache_markers",
    "header_pairs", "header_get", "remove_inserted",
]

_LINE_END = re.compile(rb"\r\n|\r|\n")


def split_frames(data: bytes, *, final: bool = True) -> tuple[list[bytes], bytes]:
    """Complete SSE frames (each with the blank line that ends it) and the incomplete rest.

    ``final=False`` treats ``data`` as a prefix: a frame ending in a lone CR at the very end is
    held back, since the next byte could have made it a CRLF.
    """
    frames: list[bytes] = []
    start = line_start = 0
    for m in _LINE_END.finditer(data):
        if m.start() == line_start:  # an empty line: the frame ends here
            if not final and m.end() == len(data) and data.endswith(b"\r"):
                break
            frames.append(data[start:m.end()])
            start = m.end()
        line_start = m.end()
    return frames, data[start:]


def frame_data(frame: bytes) -> tuple[str | None, str]:
    """(event field, joined data field) of one frame, per the event-stream rules."""
    event: str | None = None
    data: list[str] = []
    for line in _LINE_END.split(frame):
        text = line.decode("utf-8", "replace")
        name, _, value = text.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    return event, "\n".join(data)


def frame_json(frame: bytes) -> Any:
    """The frame's data decoded as JSON, or None (``[DONE]``, pings, garbage)."""
    _, data = frame_data(frame)
    try:
        return json.loads(data)
    except ValueError:
        return None

MAX_DECODED = 256 * 1024 * 1024  # conformance bodies are recordings; a bomb still stops here


def decode_body(data: bytes, encoding: str | None) -> bytes:
    """Undo Content-Encoding (gzip, deflate, br, zstd); a body cut short decodes as far as it goes."""
    return decoders.decode_body(data, encoding, MAX_DECODED, strict=False)


def count_cache_markers(request: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """Every ``cache_control`` in an Anthropic Messages request, in the API's prefix order.

    Returns (where, ttl, block) for tools, then system, then messages (nested tool_result
    content included), then the top-level automatic-caching field. A marker without ``ttl`` is 5m.
    """
    found: list[tuple[str, str, dict[str, Any]]] = []
    if not isinstance(request, dict):
        return found

    def note(where: str, node: Any) -> None:
        if isinstance(node, dict) and isinstance(node.get("cache_control"), dict):
            ttl = node["cache_control"].get("ttl")
            found.append((where, ttl if isinstance(ttl, str) else "5m", node))

    def blocks(where: str, value: Any, depth: int = 0) -> None:
        if not isinstance(value, list) or depth > 8:
            return
        for block in value:
            note(where, block)
            if isinstance(block, dict):
                source = block.get("source")
                blocks(where, block.get("content"), depth + 1)
                if isinstance(source, dict):
                    blocks(where, source.get("content"), depth + 1)

    for tool in request.get("tools") or []:
        note("tools", tool)
    blocks("system", request.get("system"))
    for message in request.get("messages") or []:
        if isinstance(message, dict):
            blocks("messages", message.get("content"))
    note("top-level", request)
    return found


def header_pairs(raw_head: bytes) -> list[tuple[str, str]]:
    """Header (name, value) pairs of a raw HTTP/1 head, in order, case kept."""
    lines = raw_head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [(k, v.strip()) for k, _, v in (ln.partition(":") for ln in lines if ":" in ln)]


def header_get(headers: list[tuple[str, str]] | None, name: str) -> str | None:
    name = name.lower()
    return next((v for k, v in headers or [] if k.lower() == name), None)


def remove_inserted(sent: bytes, spans: list[tuple[int, bytes]]) -> bytes:
    """The sent body with each inserted span cut out; offsets are in the ORIGINAL body.

    Raises ValueError when a span's text is not where its offset says.
    """
    out: list[bytes] = []
    cursor = shift = 0
    for offset, text in sorted(spans, key=lambda s: s[0]):
        at = offset + shift
        if at < cursor or sent[at:at + len(text)] != text:
            raise ValueError(f"inserted span at offset {offset} is not in the sent body")
        out.append(sent[cursor:at])
        cursor = at + len(text)
        shift += len(text)
    out.append(sent[cursor:])
    return b"".join(out)
