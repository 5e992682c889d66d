"""The model a request body asks for, for rows whose response names none (errors, count_tokens).

Pure and bounded: the body is read only when a row lacks its model, a small body is parsed
exactly (the top-level ``model`` member), a large one is searched for its first ``"model"``
member, and a compressed one is decoded up to a fixed size. Never raises.
"""

from __future__ import annotations

import json
import re
import zlib

__all__ = ["request_model"]

PARSE_BELOW = 256 * 1024  # bodies up to this size are parsed exactly (well under a millisecond)
DECODE_LIMIT = 4 * 1024 * 1024  # decoded bytes read from a compressed body, at most
_MODEL = re.compile(rb'"model"[ \t\r\n]*:[ \t\r\n]*"([^"\\\x00-\x1f]{1,200})"')


def request_model(body: bytes | None, content_encoding: str | None = None) -> str | None:
    """The request's ``model`` (top-level member), or None."""
    try:
        if not body:
            return None
        enc = (content_encoding or "").strip().lower()
        if enc in ("gzip", "x-gzip", "deflate"):  # bounded output: a small bomb stays small
            wbits = 16 + zlib.MAX_WBITS if enc != "deflate" else zlib.MAX_WBITS
            body = zlib.decompressobj(wbits).decompress(body, DECODE_LIMIT)
        elif enc not in ("identity", ""):
            return None  # br / zstd: not worth an unbounded decode for a label
        if len(body) <= PARSE_BELOW:
            try:
                obj = json.loads(body)
            except ValueError:
                return None
            model = obj.get("model") if isinstance(obj, dict) else None
            return model if isinstance(model, str) and model else None
        m = _MODEL.search(body)  # large body: the first "model" member (clients send it at the top)
        return m.group(1).decode("utf-8", "replace") if m else None
    except Exception:  # noqa: BLE001 - a bad body must never cost the row
        return None
