"""Ask the provider for its own cache-miss verdict (opt-in; pure: bytes in, bytes and values out).

Anthropic's cache diagnostics (platform.claude.com build-with-claude/cache-diagnostics, beta header
``cache-diagnosis-2026-04-07``): a request carrying ``"diagnostics": {"previous_message_id": ID}``
gets back, on its response, where its prompt diverged from the request that produced response
``ID``. With ``--set tokenpak_cache_diagnostics=on`` the proxy adds that field to Anthropic
Messages requests that do not carry it, naming the previous response of the same conversation
(``null`` on a conversation's first request: the page says to opt in that way, so that the next
turn has a fingerprint to compare with), and the beta header when the request lacks it.

* The field is spliced into the client's bytes right after the body's opening ``{`` (never
  re-serialised); the splice is a ``cache_insert.Span`` like the markers, so a recording shows it
  and "sent minus spans == client" still holds.
* A request that carries ``diagnostics`` already (the client asked itself) is never touched, and
  neither is a compressed body, a body that is not a JSON object, or a request routed elsewhere.
* "The same conversation": ``conversation_keys`` hashes the non-system messages cumulatively
  (markers removed, as in ``request_shape``'s turn keys): a request whose history extends an
  earlier request's whole message list continues it, and ``PreviousResponses`` remembers, per
  credential scope, the response id each request got. Bounded (least recently used dropped).

OpenAI is not asked (its ``prompt_cache_options.comparison_response_id`` lives in the object the
OpenAI planner both reads and writes); its answer is read whenever a client asks (docs/sessions.md).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from tokenpak_mitm.core.plan.cache_insert import Span

__all__ = ["BETA", "MAX_REMEMBERED", "Prepared", "PreviousResponses", "Splice", "Skip", "beta_header", "conversation_keys", "prepare", "splice"]

BETA: Final = "cache-diagnosis-2026-04-07"
MAX_REMEMBERED: Final = 20_000  # conversations whose last response id is kept
_SYSTEM_ROLES = frozenset({"system", "developer"})
_WS = b" \t\r\n"

Skip = Literal["client_sent", "not_json", "encoded", "off"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the proxy reads of a request before deciding: whether the client asked itself, the
    conversation keys (one per non-system message), and where the body's object opens."""

    client_sent: bool
    keys: tuple[bytes, ...]
    open_at: int  # offset just after the opening "{"
    empty: bool  # the object has no member (then no comma follows ours)


@dataclass(frozen=True, slots=True)
class Splice:
    body: bytes
    span: Span
    previous_message_id: str | None


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8", "surrogatepass")


def _unmarked(content: Any) -> Any:
    if isinstance(content, list):
        return [{k: v for k, v in item.items() if k != "cache_control"} if isinstance(item, dict) else item for item in content]
    if isinstance(content, str):
        return [{"type": "text", "text": content}]  # a string caches like the one-block list
    return content


def conversation_keys(request: object) -> tuple[bytes, ...]:
    """One cumulative digest per non-system message (role and content, markers removed)."""
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return ()
    h = hashlib.blake2b(digest_size=16)
    h.update(_canonical(request.get("model")))
    keys: list[bytes] = []
    for message in request["messages"]:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            continue  # mid-conversation system messages come and go without changing the conversation
        h.update(b"\0" + _canonical(role) + b"\0" + _canonical(_unmarked(message.get("content"))))
        keys.append(h.copy().digest())
    return tuple(keys)


def prepare(body: bytes) -> Prepared | None:
    """Read an identity-encoded request body; None when it is not a JSON object."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(request, dict):
        return None
    start = len(body) - len(body.lstrip(_WS))
    if body[start:start + 1] != b"{":
        return None  # (a BOM or the like: json.loads would have refused; never guess)
    rest = body[start + 1:].lstrip(_WS)
    return Prepared("diagnostics" in request, conversation_keys(request), start + 1, rest[:1] == b"}")


def splice(body: bytes, prepared: Prepared, previous_message_id: str | None) -> Splice:
    """``body`` with ``"diagnostics":{"previous_message_id":…}`` as the object's first member."""
    member = b'"diagnostics":' + json.dumps({"previous_message_id": previous_message_id}, separators=(",", ":")).encode()
    text = member if prepared.empty else member + b","
    at = prepared.open_at
    return Splice(body[:at] + text + body[at:], Span(at, text), previous_message_id)


def beta_header(current: str | None) -> str | None:
    """The ``anthropic-beta`` value with the diagnostics beta added; None when it is there already."""
    if current is None or not current.strip():
        return BETA
    if BETA in (b.strip() for b in current.split(",")):
        return None
    return f"{current},{BETA}"


class PreviousResponses:
    """The last response id of each conversation, per credential scope (thread-safe, bounded)."""

    def __init__(self, cap: int = MAX_REMEMBERED) -> None:
        self._cap = cap
        self._ids: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, scope: str, keys: Sequence[bytes]) -> str | None:
        """The response to the longest earlier message list this request's history extends."""
        with self._lock:
            for key in reversed(keys):
                found = self._ids.get((scope, key))
                if found is not None:
                    self._ids.move_to_end((scope, key))
                    return found
        return None

    def note(self, scope: str, key: bytes, response_id: str) -> None:
        with self._lock:
            self._ids[(scope, key)] = response_id
            self._ids.move_to_end((scope, key))
            while len(self._ids) > self._cap:
                self._ids.popitem(last=False)
