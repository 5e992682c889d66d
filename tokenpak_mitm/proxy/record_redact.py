"""Redaction of a recorded flow before it is serialized: nothing secret reaches a flow file.

Works on a detached copy (``HTTPFlow.from_state``), never on the live flow, whose headers are
still being sent. What is replaced by ``redact.PLACEHOLDER``:

* headers named in ``redact.SECRET_HEADERS`` (request, response, trailers, and the client's
  original header snapshot), and any other header value that looks like a key;
* ``key=``-style query parameters in the path;
* key-shaped strings in the request and response bodies and in the error message.

Bodies are redacted *piecewise* so the recording stays checkable: the request between inserted
spans (span offsets are recomputed, so "sent minus spans == client" still holds), the response
chunk by chunk (chunk boundaries kept; merged into one chunk only if a secret straddled two).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mitmproxy import http

from tokenpak_mitm.core.observe.decoders import DecodeError, decode_body
from tokenpak_mitm.core.redact import (
    PLACEHOLDER,
    is_secret_header,
    redact_text,
    secret_values,
)

__all__ = ["redact_bytes", "redact_headers", "redact_recorded_flow", "redact_request_bodies"]

_PLACEHOLDER_B = PLACEHOLDER.encode()
MAX_DECODED = 64 * 1024 * 1024  # a recorded body decoded for redaction never costs more than this


def redact_bytes(data: bytes, known: Sequence[str] = ()) -> bytes:
    """Key-shaped strings (and the request's own ``known`` secret values) replaced; every other
    byte kept exactly (undecodable ones too)."""
    if not data:
        return data
    text = data.decode("utf-8", "surrogateescape")
    out = redact_text(text, known)
    return data if out == text else (out or "").encode("utf-8", "surrogateescape")


def redact_headers(
    fields: list[tuple[bytes, bytes]], known: Sequence[str] = (), extra: frozenset[str] = frozenset()
) -> tuple[list[tuple[bytes, bytes]], int]:
    """(redacted header fields, how many values changed); each repeated field on its own."""
    out: list[tuple[bytes, bytes]] = []
    changed = 0
    for name, value in fields:
        if is_secret_header(name, extra):
            new = _PLACEHOLDER_B
        else:
            new = redact_bytes(value, known)
        changed += new != value
        out.append((name, new))
    return out, changed


def _redact_segments(body: bytes, cuts: list[int], known: Sequence[str] = ()) -> tuple[list[bytes], int]:
    """``body`` split at ``cuts``, each piece redacted on its own; returns pieces and changes."""
    pieces, start, changed = [], 0, 0
    for cut in [*cuts, len(body)]:
        piece = body[start:cut]
        new = redact_bytes(piece, known)
        changed += new != piece
        pieces.append(new)
        start = cut
    return pieces, changed


def redact_request_bodies(
    client: bytes, sent: bytes, spans: list[tuple[int, bytes]], known: Sequence[str] = ()
) -> tuple[bytes, bytes, list[tuple[int, bytes]], int]:
    """Redact the client's and the sent body so the spans still explain their difference.

    Span offsets index the client's body; the sent body holds each span's text at
    ``offset + (lengths of earlier spans)``. If it does not (a proxy bug), the sent body is
    redacted as a whole and the spans are kept as recorded, so the bug stays visible.
    """
    spans = sorted(spans, key=lambda s: s[0])
    client_pieces, changed = _redact_segments(client, [o for o, _ in spans], known)
    new_client = b"".join(client_pieces)
    new_spans, pos = [], 0
    for (_, text), piece in zip(spans, client_pieces):
        pos += len(piece)
        new_spans.append((pos, text))
    positions, shift = [], 0
    for offset, text in spans:
        at = offset + shift
        if sent[at:at + len(text)] != text:
            new_sent = redact_bytes(sent, known)
            return new_client, new_sent, spans, changed + (new_sent != sent)
        positions.append((at, at + len(text)))
        shift += len(text)
    cuts = [edge for pair in positions for edge in pair]
    sent_pieces, sent_changed = _redact_segments(sent, cuts, known)
    # pieces alternate: gap, span text, gap, span text, ..., gap; span texts carry no secrets
    new_sent = b"".join(sent_pieces)
    return new_client, new_sent, new_spans, changed + sent_changed


def redact_chunks(body: bytes, chunks: list[list[Any]], known: Sequence[str] = ()) -> tuple[bytes, list[list[Any]], int]:
    """Redact a response body; keep chunk boundaries when no secret straddles one."""
    whole = redact_bytes(body, known)
    if whole == body:
        return body, chunks, 0
    cuts, pos = [], 0
    for _, length in chunks[:-1]:
        pos += int(length)
        cuts.append(pos)
    pieces, changed = _redact_segments(body, cuts, known)
    joined = b"".join(pieces)
    if redact_bytes(joined, known) == joined and len(pieces) == len(chunks):
        return joined, [[c[0], len(p)] for c, p in zip(chunks, pieces)], changed
    first = chunks[0][0] if chunks else 0.0
    return whole, [[first, len(whole)]], 1


def _decode_if_secret(message: http.Message, notes: dict[str, Any], label: str, known: Sequence[str] = ()) -> str | None:
    """A compressed body hides its secrets from byte patterns: if decoding reveals one, keep the
    decoded body (and drop Content-Encoding) so it can be redacted; noted in the metadata."""
    enc = message.headers.get("content-encoding")
    if not enc or not message.raw_content:
        return None
    try:
        plain = decode_body(message.raw_content, enc, MAX_DECODED, strict=False)
    except DecodeError:  # corrupt, or a bomb: left encoded (the secret scan of the file still runs)
        return None
    if isinstance(plain, bytes) and redact_bytes(plain, known) != plain:
        message.raw_content = plain
        del message.headers["content-encoding"]
        notes[f"{label}_decoded_for_redaction"] = True
        return str(enc)
    return None


def redact_recorded_flow(f: http.HTTPFlow, record: dict[str, Any], extra: frozenset[str] = frozenset()) -> int:
    """Redact a detached flow and its recording metadata in place; returns how many values changed.

    ``extra``: header names the user declared secret (``tokenpak_secret_headers``)."""
    changed = 0
    req = f.request
    # The request's own secret values, read before its headers are redacted: an upstream may echo
    # a token of no recognisable shape (a gateway key) into a body or an error message.
    client = record.get("client") or {}
    client_headers = [(_text(k), _text(v)) for k, v in client.get("headers") or []]
    known = secret_values([*req.headers.fields, *client_headers], req.path, extra)
    req_enc = _decode_if_secret(req, record, "request", known)
    if req_enc and (record.get("client") or {}).get("body") is not None:
        try:
            record["client"]["body"] = decode_body(record["client"]["body"], req_enc, MAX_DECODED, strict=False)
        except DecodeError:
            record["client"]["body"] = b""
    if f.response is not None:
        _decode_if_secret(f.response, record, "response", known)
        if record.get("response_decoded_for_redaction"):
            record.setdefault("response", {})["chunks"] = [[0.0, len(f.response.raw_content or b"")]]
    fields, n = redact_headers(list(req.headers.fields), known, extra)
    req.headers.fields, changed = tuple(fields), changed + n
    new_path = redact_text(req.path, known) or req.path
    if new_path != req.path:
        req.path, changed = new_path, changed + 1
    if req.trailers is not None:
        fields, n = redact_headers(list(req.trailers.fields), known, extra)
        req.trailers.fields, changed = tuple(fields), changed + n
    if client.get("headers") is not None:
        fields, n = redact_headers([(k, v) for k, v in client["headers"]], known, extra)
        client["headers"], changed = [[k, v] for k, v in fields], changed + n
    if client.get("path"):
        client["path"] = redact_text(client["path"], known)
    if req.raw_content is not None and client.get("body") is not None:
        spans = [(int(o), bytes(t)) for o, t in record.get("spans") or []]
        new_client, new_sent, new_spans, n = redact_request_bodies(client["body"], req.raw_content, spans, known)
        client["body"], req.raw_content, changed = new_client, new_sent, changed + n
        record["spans"] = [[o, t] for o, t in new_spans]
    elif req.raw_content is not None:
        new = redact_bytes(req.raw_content, known)
        changed += new != req.raw_content
        req.raw_content = new
    resp = f.response
    if resp is not None:
        fields, n = redact_headers(list(resp.headers.fields), known, extra)
        resp.headers.fields, changed = tuple(fields), changed + n
        if resp.trailers is not None:
            fields, n = redact_headers(list(resp.trailers.fields), known, extra)
            resp.trailers.fields, changed = tuple(fields), changed + n
        if resp.raw_content:
            chunks = (record.get("response") or {}).get("chunks") or [[0.0, len(resp.raw_content)]]
            body, chunks, n = redact_chunks(resp.raw_content, chunks, known)
            resp.raw_content, changed = body, changed + n
            record.setdefault("response", {})["chunks"] = chunks
    if f.error is not None:
        msg = redact_text(f.error.msg, known) or f.error.msg
        changed += msg != f.error.msg
        f.error.msg = msg
    end = record.get("end") or {}
    if end.get("error"):
        end["error"] = redact_text(end["error"], known)
    f.comment = redact_text(f.comment, known) or ""
    return changed


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
