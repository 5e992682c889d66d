"""Which flows count as LLM requests, in which wire dialect, and who sent them.

A flow counts when its host is a known provider host (or one the user added with
``tokenpak_hosts``, or any upstream in reverse mode) *and* its method and path match a dialect's
endpoint. Everything else passes through untouched and unrecorded. The path is matched on its
suffix so OpenAI/Anthropic-compatible servers mounted under a prefix (``/openai/v1/...``) work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

from tokenpak_mitm.core.observe.tracker import Tracker
from tokenpak_mitm.core.row import RouteClass
from tokenpak_mitm.core.wire import by_fields

__all__ = ["Route", "classify", "route_class", "tracker_for", "register_dialect", "PROVIDER_HOSTS"]

PROVIDER_HOSTS = {
    "api.anthropic.com": "anthropic",
    "api.openai.com": "openai",
    "generativelanguage.googleapis.com": "gemini",
}

_GEMINI_PATH = re.compile(r"/v1(?:beta|alpha)?\d*/models/(?P<model>[^/:]+):(?P<verb>generateContent|streamGenerateContent)$")


@by_fields
@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    api: str
    dialect: str
    billable: bool = True
    model_hint: str | None = None  # model named by the URL (Gemini)
    inserts: bool = False  # a cache planner applies (Anthropic Messages; OpenAI Chat / Responses, GPT-5.6+ only)


def classify(method: str, host: str, path: str, *, extra_hosts: Collection[str] = (), any_host: bool = False) -> Route | None:
    """Route for an LLM request, or None for traffic we must leave alone."""
    if method != "POST":
        return None
    host = host.lower()
    known = PROVIDER_HOSTS.get(host)
    if known is None and not any_host and host not in extra_hosts:
        return None
    path = path.split("?", 1)[0]
    if path.endswith("/v1/messages"):
        return Route("anthropic" if known in (None, "anthropic") else known, "messages", "anthropic", inserts=True)
    if path.endswith("/v1/messages/count_tokens"):
        return Route("anthropic" if known in (None, "anthropic") else known, "messages.count_tokens", "anthropic", billable=False)
    if path.endswith("/chat/completions"):
        return Route("openai" if known in (None, "openai") else known, "chat.completions", "openai_chat", inserts=True)
    if path.endswith("/responses"):
        return Route("openai" if known in (None, "openai") else known, "responses", "openai_responses", inserts=True)
    m = _GEMINI_PATH.search(path)
    if m:
        return Route("gemini" if known in (None, "gemini") else known, "generate_content", "gemini", model_hint=m["model"])
    return None


_TRACKERS: dict[str, Callable[[], Tracker]] = {}


def register_dialect(name: str, factory: Callable[[], Tracker]) -> None:
    _TRACKERS[name] = factory


def tracker_for(route: Route) -> Tracker | None:
    factory = _TRACKERS.get(route.dialect)
    return factory() if factory else None


_SDK_UA = re.compile(r"^(?:Anthropic|OpenAI|AsyncAnthropic|AsyncOpenAI)/|google-genai-sdk|google-api-(?:python|nodejs)-client|genai-js", re.I)


def route_class(user_agent: str | None, has_stainless_header: bool = False) -> RouteClass:
    """``claude-code`` for Claude Code, ``sdk`` for official SDKs, ``other`` for the rest."""
    ua = user_agent or ""
    if ua.startswith("claude-cli/") or ua.startswith("claude-code/"):
        return "claude-code"
    if has_stainless_header or _SDK_UA.search(ua):
        return "sdk"
    return "other"


def _register_builtin() -> None:
    from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
    from tokenpak_mitm.core.dialects.gemini import GeminiTracker
    from tokenpak_mitm.core.dialects.openai_chat import OpenAIChatTracker
    from tokenpak_mitm.core.dialects.openai_responses import OpenAIResponsesTracker

    register_dialect("anthropic", AnthropicTracker)
    register_dialect("openai_chat", OpenAIChatTracker)
    register_dialect("openai_responses", OpenAIResponsesTracker)
    register_dialect("gemini", GeminiTracker)


_register_builtin()
