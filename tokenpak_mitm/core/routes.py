"""Which flows count as LLM requests, in which wire dialect, and who sent them.

A flow counts when its host is a known provider host (or one the user added with
``tokenpak_hosts``, or any upstream in reverse mode) *and* its method and path match a dialect's
endpoint. Everything else passes through untouched and unrecorded. The path is matched on its
suffix so OpenAI/Anthropic-compatible servers mounted under a prefix (``/openai/v1/...``) work.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import cast

from tokenpak_mitm.core.dialects import DialectName, dialect, dialects
from tokenpak_mitm.core.observe.tracker import Tracker
from tokenpak_mitm.core.row import RouteClass
from tokenpak_mitm.core.wire import by_fields

__all__ = ["Route", "classify", "route_class", "tracker_for", "PROVIDER_HOSTS"]

PROVIDER_HOSTS = {
    "api.anthropic.com": "anthropic",
    "api.openai.com": "openai",
    "generativelanguage.googleapis.com": "gemini",
}



@by_fields
@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    api: str
    dialect: DialectName  # a registered dialect (core/dialects)
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
    for d in dialects():
        m = d.match(path)
        if m is not None:
            provider = d.provider if known in (None, d.provider) else known
            return Route(provider, m.api, cast(DialectName, d.name), billable=m.billable, model_hint=m.model_hint, inserts=m.inserts)
    return None


def tracker_for(route: Route) -> Tracker | None:
    d = dialect(route.dialect)
    return d.tracker() if d is not None else None


_SDK_UA = re.compile(r"^(?:Anthropic|OpenAI|AsyncAnthropic|AsyncOpenAI)/|google-genai-sdk|google-api-(?:python|nodejs)-client|genai-js", re.I)


def route_class(user_agent: str | None, has_stainless_header: bool = False) -> RouteClass:
    """``claude-code`` for Claude Code, ``sdk`` for official SDKs, ``other`` for the rest."""
    ua = user_agent or ""
    if ua.startswith("claude-cli/") or ua.startswith("claude-code/"):
        return "claude-code"
    if has_stainless_header or _SDK_UA.search(ua):
        return "sdk"
    return "other"
