"""Which conversation a request names itself as part of (pure: headers and parsed body in).

In order of precedence:

1. ``x-tokenpak-session`` (and ``x-tokenpak-project`` for a project label): headers any client
   can set. The addon removes both before the request goes upstream; that is the one change
   the proxy makes to request headers.
2. The dialect's own reading (each dialect's ``session_hint``, `core/dialects/`). Anthropic:
   Claude Code's own session id: the ``x-claude-code-session-id`` header (Claude Code 2.1.86+),
   else ``metadata.user_id`` — a JSON string with ``session_id`` (2.1.78+) or the older
   ``user_<hash>_account_<id>_session_<uuid>`` form. (Formats as handled by coder/aibridge
   PR #241 and ding113/claude-code-hub PR #939.)
3. OpenAI (Chat and Responses): ``prompt_cache_key`` (the client's own cache/conversation key), ``conversation``
   (Responses API conversation object), and ``previous_response_id`` (the session of the
   response it continues; resolved by the tracker). ``user`` / ``safety_identifier`` name an end
   user, not a conversation: they only scope lineage inference.
4. Otherwise none: the tracker infers the session by lineage.

The project is the ``x-tokenpak-project`` header; for Claude Code without it, the last component
of the working directory its system prompt names (``<env> ... Working directory: /path/to/repo``,
as in the prompts published in LouisShark/chatgpt_system_prompt and bgauryy/open-docs): only the
directory's name is kept, never the path.

Identifiers are kept as the client sent them (trimmed to 128 printable characters), except the
user-level ones, which are hashed: they can be e-mail addresses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenpak_mitm.core.dialects import dialect as dialect_of
from tokenpak_mitm.core.dialects.anthropic import CLAUDE_CODE_SESSION_HEADER
from tokenpak_mitm.core.dialects.identity import MAX_ID, Headers, Hint, clean_id
from tokenpak_mitm.core.row import SessionSource

__all__ = ["CLAUDE_CODE_SESSION_HEADER", "MAX_ID", "PROJECT_HEADER", "SESSION_HEADER", "Headers", "Hint", "clean_id", "identify"]

SESSION_HEADER = "x-tokenpak-session"
PROJECT_HEADER = "x-tokenpak-project"

Source = SessionSource  # the vocabulary lives with the row (row.py)


def identify(headers: Headers, body: object, dialect: str, credential: str = "") -> Hint:
    """The session hints a request carries. ``headers`` must be case-insensitive (mitmproxy's are).

    ``credential`` is an opaque scope (the addon passes a salted hash of the API key): lineage is
    never inferred across credentials, since providers never share a cache across them either.
    The headers any client can set win; then the dialect's own reading (`core/dialects/`).
    """
    req: Mapping[str, Any] = body if isinstance(body, dict) else {}
    project = clean_id(headers.get(PROJECT_HEADER))
    explicit = clean_id(headers.get(SESSION_HEADER))
    if explicit:
        return Hint(explicit, "header", project, scope=credential)
    d = dialect_of(dialect)
    hint = d.session_hint(headers, req, project, credential) if d is not None and d.session_hint is not None else None
    return hint if hint is not None else Hint(None, None, project, scope=credential)
