"""Run ``tokenpak serve`` (TokenPak from PyPI) with api.anthropic.com connections sent to the bench upstream.

Runs under the TokenPak venv's interpreter (``bench/.peers/tokenpak/bin/python``), not ours.
TokenPak keeps ``https://api.anthropic.com`` as its target, so it classifies, logs and accounts
the request as it would for the real API (with a loopback target it would skip that work);
only the TCP connection goes to ``http://127.0.0.1:$BENCH_UPSTREAM_PORT``, at httpx's transport,
the layer under every client TokenPak builds. The Host header stays api.anthropic.com.
"""

from __future__ import annotations

import os
import sys

import httpx

_PORT = int(os.environ["BENCH_UPSTREAM_PORT"])
_HOSTS = frozenset({"api.anthropic.com"})
_sync = httpx.HTTPTransport.handle_request
_async = httpx.AsyncHTTPTransport.handle_async_request


def _to_upstream(request: httpx.Request) -> None:
    if request.url.host in _HOSTS:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=_PORT)


def _handle_request(self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
    _to_upstream(request)
    return _sync(self, request)


async def _handle_async_request(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
    _to_upstream(request)
    return await _async(self, request)


httpx.HTTPTransport.handle_request = _handle_request  # type: ignore[method-assign]
httpx.AsyncHTTPTransport.handle_async_request = _handle_async_request  # type: ignore[method-assign]

if __name__ == "__main__":
    from tokenpak.cli import main

    sys.argv = ["tokenpak", *sys.argv[1:]]
    sys.exit(main())
