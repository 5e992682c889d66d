"""The "floor" setup: an addon with the hooks tokenpak uses, each doing nothing.

What mitmproxy itself charges for an addon being there: it dispatches ``requestheaders``,
``request`` (a coroutine, as ours is), ``responseheaders``, ``response`` and ``error`` to it, and
streams SSE through a Python callable (identity) rather than ``stream = True``, as the tap does.
The addon's figures over this setup's are what tokenpak's own code costs; this setup's over
plain's are mitmproxy's price for any addon of this shape.
"""

from __future__ import annotations

from mitmproxy import http


def _identity(data: bytes) -> bytes:
    return data


class Floor:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        pass

    async def request(self, flow: http.HTTPFlow) -> None:
        pass

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and "text/event-stream" in flow.response.headers.get("content-type", ""):
            flow.response.stream = _identity

    def response(self, flow: http.HTTPFlow) -> None:
        pass

    def error(self, flow: http.HTTPFlow) -> None:
        pass


addons = [Floor()]
