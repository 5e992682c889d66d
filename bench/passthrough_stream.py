"""The "plain mitmdump" baseline: mitmproxy's own pass-through streaming for SSE, nothing else.

Why a script at all: without ``flow.response.stream`` mitmproxy buffers a whole SSE response
and delivers it at the end (research §0.1), which would make every streaming figure of the
baseline meaningless. ``stream_large_bodies`` is no substitute: it streams requests too, so
the addon proxy could not take the same flag (insertion needs the buffered request body).
``stream = True`` is mitmproxy's identity path: no Python callable per chunk, no parsing.
"""

from mitmproxy import http


def responseheaders(flow: http.HTTPFlow) -> None:
    if flow.response is not None and "text/event-stream" in flow.response.headers.get("content-type", ""):
        flow.response.stream = True
