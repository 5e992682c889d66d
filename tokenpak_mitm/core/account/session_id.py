"""Which conversation a request names itself as part of (pure: headers and parsed body in).

In order of precedence:

1. ``x-tokenpak-session`` (and ``x-tokenpak-project`` for a project label): headers any client
   can set. The addon removes both before the request goes upstream; that is the one change
   the proxy makes to request headers.
2. Claude Code's own session id: the ``x-claude-code-session-id`` header (Claude Code 2.1.86+),
   else ``metadata.user_id`` — a JSON string with ``session_id`` (2.1.78+) or the older
   ``user_<hash>_account_<id>_session_<uuid>`` form. (Formats as handled by coder/aibridge
   PR #241 and ding113/claude-code-hub PR #939.)
3. OpenAI: ``prompt_cache_key`` (the client's own cache/conversation key), ``conversation``
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

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tokenpak_mitm.core.row import SessionSource

__all__ = ["PROJECT_HEADER", "SESSION_HEADER", "Hint", "clean_id", "identify"]

SESSION_HEADER = "x-tokenpak-session"
PROJECT_HEADER = "x-tokenpak-project"
CLAUDE_CODE_SESSION_HEADER = "x-claude-code-session-id"
MAX_ID = 128

Source = SessionSource  # the vocabulary lives with the row (row.py)

_LEGACY_CC = re.compile(r"_session_([0-9A-Za-z-]{8,64})$")
_LEGACY_ACCOUNT = re.compile(r"_account_([0-9A-Za-z-]{1,64})_session_")
_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


class Headers(Protocol):
    """Case-insensitive header lookup (mitmproxy's ``Headers``, or a wrapper around it)."""

    def get(self, name: str, default: None = None, /) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Hint:
    session_id: str | None = None  # an explicit id, when the request carries one
    source: Source | None = None
    project: str | None = None
    previous_response_id: str | None = None
    scope: str = ""  # lineage is only inferred between requests with the same scope


def clean_id(value: object) -> str | None:
    """A printable, bounded identifier, or None."""
    if not isinstance(value, str):
        return None
    value = _UNPRINTABLE.sub("", value.strip())[:MAX_ID]
    return value or None


def _user_id_field(body: Mapping[str, Any], key: str, legacy: re.Pattern[str]) -> str | None:
    """One field of Claude Code's ``metadata.user_id``: a JSON object now, ``user_..._account_..._session_...`` before."""
    meta = body.get("metadata")
    user_id = meta.get("user_id") if isinstance(meta, dict) else None
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            parsed = json.loads(user_id)
        except ValueError:
            return None
        return clean_id(parsed.get(key)) if isinstance(parsed, dict) else None
    m = legacy.search(user_id)
    return clean_id(m.group(1)) if m else None


def _claude_code_account(body: Mapping[str, Any]) -> str | None:
    """The account id Claude Code's ``metadata.user_id`` carries (stable across OAuth token refreshes)."""
    return _user_id_field(body, "account_uuid", _LEGACY_ACCOUNT)


def _claude_code_session(headers: Headers, body: Mapping[str, Any]) -> str | None:
    return clean_id(headers.get(CLAUDE_CODE_SESSION_HEADER)) or _user_id_field(body, "session_id", _LEGACY_CC)


_WORKING_DIRECTORY = "Working directory: "


def _claude_code_project(system: object) -> str | None:
    """The name of the working directory Claude Code's system prompt names, if it names one."""
    texts = [system] if isinstance(system, str) else [b.get("text") for b in system if isinstance(b, dict)] if isinstance(system, list) else []
    for text in texts:
        if not isinstance(text, str):
            continue
        at = text.find(_WORKING_DIRECTORY)
        if at < 0 or "<env>" not in text[:at]:
            continue
        line = text[at + len(_WORKING_DIRECTORY):].split("\n", 1)[0].strip().rstrip("/\\")
        name = line.replace("\\", "/").rsplit("/", 1)[-1]
        return clean_id(name)
    return None


def _hashed(value: object) -> str:
    return hashlib.blake2b(str(value).encode(), digest_size=8).hexdigest() if value else ""


def identify(headers: Headers, body: object, dialect: str, credential: str = "") -> Hint:
    """The session hints a request carries. ``headers`` must be case-insensitive (mitmproxy's are).

    ``credential`` is an opaque scope (the addon passes a salted hash of the API key): lineage is
    never inferred across credentials, since providers never share a cache across them either.
    """
    req: Mapping[str, Any] = body if isinstance(body, dict) else {}
    project = clean_id(headers.get(PROJECT_HEADER))
    explicit = clean_id(headers.get(SESSION_HEADER))
    if explicit:
        return Hint(explicit, "header", project, scope=credential)
    if dialect == "anthropic":
        sid = _claude_code_session(headers, req)
        if sid:
            # Claude Code's OAuth token is refreshed every few hours; its account id is not, and
            # the provider's cache belongs to the account: scope by it when it is there.
            account = _claude_code_account(req)
            scope = f"account:{_hashed(account)}" if account else credential
            return Hint(sid, "claude-code", project or _claude_code_project(req.get("system")), scope=scope)
    user = ""
    if dialect in ("openai_chat", "openai_responses"):
        key = clean_id(req.get("prompt_cache_key"))
        if key:
            return Hint(key, "prompt_cache_key", project, scope=credential)
        conv = req.get("conversation")
        conv_id = clean_id(conv.get("id") if isinstance(conv, dict) else conv)
        if conv_id:
            return Hint(conv_id, "conversation", project, scope=credential)
        prev = clean_id(req.get("previous_response_id"))
        user = _hashed(req.get("safety_identifier") or req.get("user"))
        if prev:
            return Hint(None, None, project, previous_response_id=prev, scope=f"{credential}/{user}")
    return Hint(None, None, project, scope=f"{credential}/{user}" if user else credential)
