"""mitmweb / mitmproxy content view for LLM flows: ``mitmweb -s addons/tokenpak.py``.

The view ("LLM (tokenpak)") is chosen automatically for the requests and responses of the LLM
routes the addon knows (Anthropic Messages, OpenAI Chat Completions and Responses, Gemini) and
shows what ``llm_view`` assembles from them. The addon registers it on load and removes it when
unloaded. Everything else in mitmweb is untouched.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import contentviews, http
from mitmproxy.contentviews import Metadata, SyntaxHighlight
from mitmproxy.proxy import mode_specs

from tokenpak_mitm.core.routes import Route, classify
from tokenpak_mitm.proxy.llm_view import describe_request, describe_response

__all__ = ["LLMContentview", "ContentviewAddon", "VIEW"]

META = "tokenpak"


def _route(flow: Any) -> Route | None:
    if not isinstance(flow, http.HTTPFlow):
        return None
    req = flow.request
    reverse = isinstance(getattr(flow.client_conn, "proxy_mode", None), mode_specs.ReverseMode)
    return classify(req.method, req.pretty_host, req.path, any_host=reverse)


class LLMContentview(contentviews.Contentview):
    @property
    def name(self) -> str:
        return "LLM (tokenpak)"

    @property
    def syntax_highlight(self) -> SyntaxHighlight:
        return "yaml"

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        flow = metadata.flow
        route = _route(flow)
        if route is None or not isinstance(flow, http.HTTPFlow):
            raise ValueError("not an LLM request or response")
        if metadata.http_message is flow.request:
            return describe_request(route, data)
        meta = flow.metadata.get(META)
        from tokenpak_mitm.core.request_model import request_model

        status = flow.response.status_code if flow.response is not None else 0
        return describe_response(route, data, status, meta if isinstance(meta, dict) else None,
                                 request_model=request_model(flow.request.get_content(strict=False)))

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        if not data or _route(metadata.flow) is None:
            return -1
        return 2  # above the JSON view (1) for LLM flows


VIEW = LLMContentview()


class ContentviewAddon:
    """Registers the view when the script loads (mitmproxy 12 has no public way to remove one)."""

    def load(self, loader: Any) -> None:
        if VIEW.name.lower() not in contentviews.registry:
            contentviews.add(VIEW)
