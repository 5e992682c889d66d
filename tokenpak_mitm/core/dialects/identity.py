"""What a request says about the conversation it belongs to: the value every dialect's session hint
returns (pure). The precedence between hints, and the headers any client can set, are
`core/account/session_id.py`'s; the dialect-specific readings are each dialect's own.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from tokenpak_mitm.core.row import SessionSource

__all__ = ["MAX_ID", "Headers", "Hint", "clean_id", "hashed"]

MAX_ID = 128
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


class Headers(Protocol):
    """Case-insensitive header lookup (mitmproxy's ``Headers``, or a wrapper around it)."""

    def get(self, name: str, default: None = None, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Hint:
    session_id: str | None = None  # an explicit id, when the request carries one
    source: SessionSource | None = None
    project: str | None = None
    previous_response_id: str | None = None
    scope: str = ""  # lineage is only inferred between requests with the same scope


def clean_id(value: object) -> str | None:
    """A printable, bounded identifier, or None."""
    if not isinstance(value, str):
        return None
    value = _UNPRINTABLE.sub("", value.strip())[:MAX_ID]
    return value or None


def hashed(value: object) -> str:
    """A short digest of a user-level identifier (they can be e-mail addresses); "" for none."""
    return hashlib.blake2b(str(value).encode(), digest_size=8).hexdigest() if value else ""
