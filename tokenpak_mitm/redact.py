"""Secret redaction at the write boundary: nothing key-shaped reaches a file we write.

Applied to every free-text field we persist (error messages, paths, recorded flows). Patterns
cover the providers' key shapes, bearer tokens, ``key=`` query parameters and JSON fields whose
name says they are secret (camelCase included: ``apiKey``, ``accessToken``).
"""

from __future__ import annotations

import re

__all__ = ["PLACEHOLDER", "redact_text", "redact_query", "SECRET_HEADERS"]

PLACEHOLDER = "[REDACTED]"

SECRET_HEADERS = frozenset({
    "authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie",
    "set-cookie", "openai-organization", "openai-project", "anthropic-admin-key",
})

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


def redact_text(text: str | None) -> str | None:
    if not text:
        return text
    out = text
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
