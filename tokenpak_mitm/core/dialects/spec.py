"""What a dialect is: one value that carries everything the proxy, the planner, the accounting, the
mitmweb view and the simulated provider need to know about one provider API (pure).

Each dialect module (`anthropic.py`, `openai_chat.py`, …) builds one :class:`Dialect` named
``DIALECT``; `core/dialects/__init__.py` registers them. Code elsewhere asks the registry
(``dialect(name)``) instead of branching on the name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tokenpak_mitm.core.dialects.identity import Headers, Hint
from tokenpak_mitm.core.dialects.replies import Reply
from tokenpak_mitm.core.dialects.view import Assembled
from tokenpak_mitm.core.observe.tracker import Tracker

__all__ = ["CacheFamily", "Dialect", "Endpoint", "EndpointMatch", "PromptLayout", "Renderer", "SessionHint"]

CacheFamily = Literal["anthropic", "openai"]  # whose prompt-cache rules, facts and planner apply


@dataclass(frozen=True, slots=True)
class EndpointMatch:
    api: str  # the row's `api` (e.g. "messages", "chat.completions")
    billable: bool
    inserts: bool  # a cache planner applies
    model_hint: str | None = None  # the model the path names (Gemini)
    streamed: bool | None = None  # the path says whether it streams (Gemini); None: the body's "stream"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One POST endpoint, matched on the path's suffix (so a server mounted under a prefix matches) or
    by a regular expression searched in it (named groups ``model`` and ``verb``; ``stream_verbs``
    lists the verbs that stream)."""

    api: str
    suffix: str | None = None
    pattern: re.Pattern[str] | None = None
    billable: bool = True
    inserts: bool = False
    stream_verbs: frozenset[str] = frozenset()

    def match(self, path: str) -> EndpointMatch | None:
        if self.suffix is not None:
            return EndpointMatch(self.api, self.billable, self.inserts) if path.endswith(self.suffix) else None
        m = self.pattern.search(path) if self.pattern is not None else None
        if m is None:
            return None
        groups = m.groupdict()
        verb = groups.get("verb")
        return EndpointMatch(self.api, self.billable, self.inserts, groups.get("model"),
                             (verb in self.stream_verbs) if verb is not None else None)


@dataclass(frozen=True, slots=True)
class PromptLayout:
    """Where a request keeps its prompt: what the prefix index fingerprints and the planners address.

    ``system``: the keys that may hold the system prompt, tried in order (the first non-empty one);
    ``system_parts``: the system value is an object holding its parts under this key (Gemini).
    ``items``: the key of the conversation's list (messages, input items, contents); ``content``: the
    key of an item's content parts. ``string_items``: a string in place of the list is one user
    message (Responses). ``output_parts``: an item without ``content`` whose ``output`` is a list
    carries its parts there (a Responses ``function_call_output``).
    """

    items: str
    content: str = "content"
    system: tuple[str, ...] = ()
    system_parts: str | None = None
    string_items: bool = False
    output_parts: bool = False

    def system_value(self, request: Mapping[str, Any]) -> object:
        value: object = None
        for key in self.system:
            value = request.get(key)
            if value:
                break
        if self.system_parts is not None:
            return value.get(self.system_parts) if isinstance(value, dict) else None
        return value

    def item_list(self, request: Mapping[str, Any]) -> object:
        items = request.get(self.items)
        if self.string_items and isinstance(items, str):
            return [{"role": "user", "content": items}]
        return items

    def item_content(self, item: Mapping[str, Any]) -> tuple[str, object]:
        """The key holding an item's content parts, and its value."""
        if self.output_parts and "content" not in item and isinstance(item.get("output"), list):
            return "output", item["output"]
        return self.content, item.get(self.content)


# (headers, parsed request, project label, credential scope) -> the dialect's own session reading
SessionHint = Callable[[Headers, Mapping[str, Any], "str | None", str], "Hint | None"]


@dataclass(frozen=True, slots=True)
class Renderer:
    """How the simulated provider writes this dialect (`sim/provider.py`)."""

    id_prefix: str  # response ids look like f"{id_prefix}_…"
    json: Callable[[Reply], dict[str, Any]]  # the non-streamed response object
    frames: Callable[[Reply], list[bytes]]  # the streamed response, one SSE frame per item
    error: Callable[[int, str], dict[str, Any]]  # an HTTP error body
    stream_error: Callable[[], bytes]  # the frame a provider sends when it fails mid-stream
    first_delta: int  # index in `frames` of the first content delta
    request_id_in_errors: bool = False  # error bodies carry the request id (Anthropic)
    # The usage object for a prompt and an output count with nothing cached, for dialects the cache
    # simulator does not model (None: it does, by `Dialect.cache`).
    plain_usage: Callable[[int, int], dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    provider: str  # the provider a request is billed to when its host names none
    endpoints: tuple[Endpoint, ...]
    tracker: Callable[[], Tracker]  # reads a response's usage, model, stop reason and errors
    layout: PromptLayout
    cache: CacheFamily | None  # whose prompt-cache rules apply (planner, facts, miss diagnosis); None: none
    session_hint: SessionHint | None
    assemble: Callable[[Iterable[Any], Assembled], None]  # mitmweb's view of the body's JSON objects
    render: Renderer

    def match(self, path: str) -> EndpointMatch | None:
        for endpoint in self.endpoints:
            m = endpoint.match(path)
            if m is not None:
                return m
        return None
