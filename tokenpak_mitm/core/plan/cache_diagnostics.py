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

OpenAI (Responses API, GPT-5.6+; developers.openai.com guides/prompt-caching/diagnostics) is asked
the same way with ``"prompt_cache_options":{"comparison_response_id":…}`` naming the request's own
``previous_response_id``, else the conversation's previous response — only when the request as
sent (the planner's members included) carries no ``prompt_cache_options``: the proxy never edits
an object the client or the planner wrote. No header; the first request of a conversation is not
touched (OpenAI compares with any completed response: there is nothing to opt in to).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from tokenpak_mitm.core.plan.cache_insert import Span

__all__ = ["BETA", "MAX_REMEMBERED", "Prepared", "PreviousResponses", "Splice", "beta_header", "conversation_keys", "prepare", "splice",
           "splice_openai"]

BETA: Final = "cache-diagnosis-2026-04-07"
MAX_REMEMBERED: Final = 20_000  # conversations whose last response id is kept
_SYSTEM_ROLES = frozenset({"system", "developer"})
_WS = b" \t\r\n"



@dataclass(frozen=True, slots=True)
class Prepared:
    """What the proxy reads of a request before deciding: whether the client asked itself, the
    conversation keys (one per non-system message), and where the body's object opens."""

    client_sent: bool  # Anthropic: ``diagnostics`` present; OpenAI: ``prompt_cache_options`` present
    keys: tuple[bytes, ...]
    open_at: int  # offset just after the opening "{"
    empty: bool  # the object has no member (then no comma follows ours)
    previous_response_id: str | None = None  # OpenAI Responses: the request continues this response
    model: str | None = None
    flavor: bytes = b""  # digest of the system prompt / instructions and tools (see PreviousResponses)


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
    """One cumulative digest per non-system message (role and content, markers removed): the
    ``messages`` list, or a Responses ``input`` list (items without a role hashed whole)."""
    if not isinstance(request, dict):
        return ()
    items = request.get("messages")
    if not isinstance(items, list):
        items = request.get("input")
        if not isinstance(items, list):
            return ()
        items = [i if isinstance(i, dict) and "role" in i else {"role": None, "content": i} for i in items]
    h = hashlib.blake2b(digest_size=16)
    h.update(_canonical(request.get("model")))
    keys: list[bytes] = []
    for message in items:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            continue  # mid-conversation system messages come and go without changing the conversation
        h.update(b"\0" + _canonical(role) + b"\0" + _canonical(_unmarked(message.get("content"))))
        keys.append(h.copy().digest())
    return tuple(keys)


def prepare(body: bytes, api: str = "anthropic") -> Prepared | None:
    """Read an identity-encoded request body (``api``: anthropic or openai_responses); None when it
    is not a JSON object."""
    try:
        # as UTF-8 text, not bytes: json.loads(bytes) would also take UTF-16/32, into which an
        # ASCII splice would tear a hole
        request = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(request, dict):
        return None
    start = len(body) - len(body.lstrip(_WS))
    if body[start:start + 1] != b"{":
        return None  # (a BOM or the like: json.loads would have refused; never guess)
    rest = body[start + 1:].lstrip(_WS)
    own = "diagnostics" if api == "anthropic" else "prompt_cache_options"
    previous, model = request.get("previous_response_id"), request.get("model")
    flavor = hashlib.blake2b(_canonical([request.get("system"), request.get("instructions"), request.get("tools")]), digest_size=8).digest()
    return Prepared(own in request, conversation_keys(request), start + 1, rest[:1] == b"}",
                    previous if isinstance(previous, str) and previous else None, model if isinstance(model, str) else None, flavor)


def splice(body: bytes, prepared: Prepared, previous_message_id: str | None) -> Splice:
    """``body`` with ``"diagnostics":{"previous_message_id":…}`` as the object's first member."""
    member = b'"diagnostics":' + json.dumps({"previous_message_id": previous_message_id}, separators=(",", ":")).encode()
    text = member if prepared.empty else member + b","
    at = prepared.open_at
    return Splice(body[:at] + text + body[at:], Span(at, text), previous_message_id)


def splice_openai(body: bytes, prepared: Prepared, comparison_response_id: str) -> Splice:
    """``body`` with ``"prompt_cache_options":{"comparison_response_id":…}`` as the object's first member."""
    member = b'"prompt_cache_options":' + json.dumps({"comparison_response_id": comparison_response_id}, separators=(",", ":")).encode()
    text = member if prepared.empty else member + b","
    at = prepared.open_at
    return Splice(body[:at] + text + body[at:], Span(at, text), comparison_response_id)


def beta_header(current: str | None) -> str | None:
    """The ``anthropic-beta`` value with the diagnostics beta added; None when it is there already."""
    if current is None or not current.strip():
        return BETA
    if BETA in (b.strip() for b in current.split(",")):
        return None
    return f"{current},{BETA}"


class PreviousResponses:
    """The last response ids of each conversation, per credential scope (thread-safe, bounded).

    Under one history several requests can answer: the conversation's own turn and side requests
    that resend the same messages with another system prompt or tools (a title or a topic check).
    Each is kept with its ``flavor`` (a digest of the system prompt and tools), and a lookup
    prefers the response of the same flavor: a side request's id would make the provider compare
    the next turn with the wrong prompt. When no response of that flavor exists (the system prompt
    itself changed: what diagnostics are for), the most recent one is named.
    """

    def __init__(self, cap: int = MAX_REMEMBERED, per_key: int = 4) -> None:
        self._cap = cap
        self._per_key = per_key
        self._ids: OrderedDict[tuple[str, bytes], dict[bytes, str]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def lookup(self, scope: str, keys: Sequence[bytes], flavor: bytes = b"") -> str | None:
        """The response to the longest earlier message list this request's history extends."""
        with self._lock:
            for key in reversed(keys):
                found = self._ids.get((scope, key))
                if found:
                    self._ids.move_to_end((scope, key))
                    return found.get(flavor) or next(reversed(found.values()))
        return None

    def note(self, scope: str, key: bytes, response_id: str, flavor: bytes = b"") -> None:
        with self._lock:
            found = self._ids.setdefault((scope, key), {})
            found.pop(flavor, None)
            found[flavor] = response_id  # most recent last
            while len(found) > self._per_key:
                del found[next(iter(found))]
            self._ids.move_to_end((scope, key))
            while len(self._ids) > self._cap:
                self._ids.popitem(last=False)
