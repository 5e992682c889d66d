"""Which parts of an OpenAI request may carry a ``prompt_cache_breakpoint`` (GPT-5.6 and later).

One rule, used by the learning planner (where it may place a breakpoint), the splice in
``openai_cache`` (what it accepts to write) and the cache simulator (where its search may try
one), so the savings a user is shown and what the proxy does cannot disagree on it.

The provider's rule (OpenAI's prompt-caching guide, November 2026): a breakpoint goes "on a
content block" and ends a cacheable prefix of "system, user and tool-result content; not
assistant output". So, of the ``messages`` (Chat Completions) or ``input`` items (Responses):

* Chat Completions: a message whose role is ``system``, ``developer``, ``user`` or ``tool`` (a
  tool result);
* Responses: a ``message`` item (``type`` absent or ``"message"``) whose role is ``system``,
  ``developer`` or ``user``, or a ``function_call_output`` item whose ``output`` is a list of
  content parts (tool-result content; a string ``output`` has no part to carry the field);

and in it, a text part with non-blank text (``text`` in Chat Completions; ``input_text`` in
Responses), or a non-blank string ``content`` (the splice wraps it into a one-part list of that
type carrying the field). Images, files and audio parts are left alone (ASSUMPTION: the research
notes quote the field only on text parts), as is everything an assistant produced (its messages,
``function_call`` and ``reasoning`` items).

And whether the client manages caching itself (``client_cache_fields``: any of
``prompt_cache_key``, ``prompt_cache_options``, ``prompt_cache_retention``, or a
``prompt_cache_breakpoint`` / ``cache_control`` anywhere): then nothing is touched.

Pure: the request (parsed JSON) and a ``prefix_index.Boundary`` in, a value out; never raises.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from tokenpak_mitm.core.plan.prefix_index import Boundary, item_content

__all__ = ["CLIENT_CACHE_FIELDS", "ITEMS_KEY", "TEXT_PART", "OpenAIApi", "breakpoint_eligible", "client_cache_fields"]

OpenAIApi = Literal["openai_chat", "openai_responses"]
ITEMS_KEY: Final[Mapping[str, str]] = {"openai_chat": "messages", "openai_responses": "input"}
TEXT_PART: Final[Mapping[str, str]] = {"openai_chat": "text", "openai_responses": "input_text"}
CLIENT_CACHE_FIELDS: Final = ("prompt_cache_key", "prompt_cache_options", "prompt_cache_retention")
_CHAT_ROLES: Final = frozenset({"system", "developer", "user", "tool"})
_RESPONSES_ROLES: Final = frozenset({"system", "developer", "user"})


def breakpoint_eligible(request: Mapping[str, Any], api: str, b: Boundary) -> bool:
    """May the block ending at boundary ``b`` carry a ``prompt_cache_breakpoint``? (module docstring)"""
    if api not in ITEMS_KEY or b.section != "messages" or b.message is None:
        return False
    items = request.get(ITEMS_KEY[api])
    if not isinstance(items, list) or not 0 <= b.message < len(items):
        return False
    item = items[b.message]
    if not isinstance(item, dict) or not _may_carry(item, api):
        return False
    key, content = item_content(item, api)
    if b.block is None:  # a string content: wrapped into one text part by the splice
        return key == "content" and isinstance(content, str) and bool(content.strip())
    if not isinstance(content, list) or not 0 <= b.block < len(content):
        return False
    part = content[b.block]
    return (isinstance(part, dict) and part.get("type") == TEXT_PART[api]
            and isinstance(part.get("text"), str) and bool(part["text"].strip()))


def _may_carry(item: Mapping[str, Any], api: str) -> bool:
    if api == "openai_chat":
        return item.get("role") in _CHAT_ROLES
    kind = item.get("type", "message")
    if kind == "function_call_output":
        return isinstance(item.get("output"), list) and "content" not in item
    return kind == "message" and item.get("role") in _RESPONSES_ROLES


def client_cache_fields(request: Mapping[str, Any]) -> int:
    """How many cache fields the client set: top-level options plus every breakpoint / cache_control
    anywhere in the body (tool schemas included: conservative, a false positive only stands down)."""
    found = sum(1 for key in CLIENT_CACHE_FIELDS if key in request)
    pending: list[Any] = [v for k, v in request.items() if k not in CLIENT_CACHE_FIELDS]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            found += sum(1 for k in node if k in ("prompt_cache_breakpoint", "cache_control"))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found
