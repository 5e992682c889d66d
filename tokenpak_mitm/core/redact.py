"""Secret redaction at the write boundary: nothing key-shaped reaches a file we write.

Applied to every free-text field we persist (error messages, paths, recorded flows). Patterns
cover the providers' key shapes, bearer tokens, ``key=`` query parameters and JSON fields whose
name says they are secret (camelCase included: ``apiKey``, ``accessToken``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["PLACEHOLDER", "SECRET_HEADERS", "SECRET_NAME_PARTS", "is_secret_header", "redact_query", "redact_text", "secret_values"]

PLACEHOLDER = "[REDACTED]"

SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie",
    "set-cookie", "openai-organization", "openai-project", "anthropic-admin-key",
})

# A header whose name contains one of these (case-insensitive) is treated as a credential: gateways
# and company proxies invent their own (x-gateway-token, x-portkey-api-key, x-session-signature).
SECRET_NAME_PARTS = ("auth", "token", "key", "secret", "session", "cookie", "password", "signature", "credential")
OUR_HEADER_PREFIX = "x-tokenpak-"  # ours (session label, project): not secrets, stripped before upstream


def is_secret_header(name: str | bytes, extra: Iterable[str] = ()) -> bool:
    """Whether a header's value must never be written: by rule (its name), by list, or by the user."""
    low = (name.decode("latin-1") if isinstance(name, bytes) else name).lower()
    if low.startswith(OUR_HEADER_PREFIX):
        return False
    return low in SECRET_HEADERS or any(part in low for part in SECRET_NAME_PARTS) or low in extra


_PATTERNS = [
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{16,}"),
    re.compile(r"\bAIza[0-9A-Za-z_\-]{20,}"),
    re.compile(r"\bya29\.[0-9A-Za-z_\-\.]{10,}"),
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9_\-\.=:+/]{8,}"),
    re.compile(r"(?i)([?&;](?:key|api_key|apikey|access_token|token|sig|signature)=)[^&#\s\"']+"),
    re.compile(
        r"(?i)(\"(?:api[_-]?key|x-api-key|access[_-]?token|refresh[_-]?token|secret|password|authorization|client[_-]?secret|token)\"\s*:\s*\")[^\"]*(\")"
    ),
]


_QUERY_SECRET = re.compile(r"(?i)[?&;](?:key|api_key|apikey|access_token|token|sig|signature)=([^&#\s]+)")
_MIN_KNOWN = 8  # shorter values ("1", "true") would redact innocent text


def secret_values(headers: Iterable[tuple[str | bytes, str | bytes]], path: str = "", extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The secrets a request actually carried: each value of each secret header (see
    ``is_secret_header``; pass repeated headers as separate pairs, e.g. ``headers.fields``), the
    token part of ``Bearer x``, each cookie value, each comma-separated part, and ``key=``-style
    query values.

    Shape-based patterns cannot recognise an arbitrary gateway token; these exact values can be
    redacted wherever they reappear (an upstream echoing them into an error message).
    """
    extra = frozenset(n.lower() for n in extra)
    found: set[str] = set()
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        if not value or not is_secret_header(name, extra):
            continue
        for part in {value, *value.split(",")}:  # a value some client joined with ", " is split again
            part = part.strip()
            found.add(part)
            scheme, _, rest = part.partition(" ")
            if rest and scheme.lower() in ("bearer", "basic", "token"):
                found.add(rest.strip())
        if "cookie" in name.lower():
            for piece in value.split(";"):
                found.add(piece.partition("=")[2].strip())
    found.update(m.group(1) for m in _QUERY_SECRET.finditer(path))
    return tuple(sorted((v for v in found if len(v) >= _MIN_KNOWN), key=len, reverse=True))


def redact_text(text: str | None, known: Iterable[str] = ()) -> str | None:
    """``text`` with key-shaped strings, and any of the ``known`` secret values, replaced."""
    if not text:
        return text
    out = text
    for value in known:  # longest first (see secret_values), so a prefix never leaves a tail
        if len(value) >= _MIN_KNOWN and value in out:
            out = out.replace(value, PLACEHOLDER)
    for pat in _PATTERNS:
        if pat.groups == 0:
            out = pat.sub(PLACEHOLDER, out)
        elif pat.groups == 1 and pat.pattern.startswith("(?i)\\b(bearer"):
            out = pat.sub(lambda m: f"{m.group(1)} {PLACEHOLDER}", out)
        elif pat.groups == 1:
            out = pat.sub(lambda m: m.group(1) + PLACEHOLDER, out)
        else:
            out = pat.sub(lambda m: m.group(1) + PLACEHOLDER + m.group(2), out)
    return out


def redact_query(path: str) -> str:
    """A request path safe to store: the query string dropped entirely (it can carry ``key=``)."""
    return path.split("?", 1)[0]
