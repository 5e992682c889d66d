"""A loopback LLM provider answering all four dialects from `CacheSimulator`.

Why: end-to-end tests of the proxy need an upstream whose usage figures are exact and whose
bytes follow each provider's wire format, with control over framing (chunk sizes, delays,
mid-stream faults). It is the one fake upstream (``testing.upstream.FakeUpstream``) with a handler
that routes by path, asks the simulator for usage and renders the reply in the dialect's own format (its ``render``, `core/dialects/`):

* ``POST /v1/messages`` (+ ``/count_tokens``): Anthropic Messages, cache simulated per the docs;
  cache diagnostics (``diagnostics.previous_message_id`` with the ``cache-diagnosis-2026-04-07``
  beta header) answered per the docs (``cache_sim.diagnose_against``); ``diagnostics`` without
  the beta header is refused with a 400, as a request using an unannounced beta field.
* ``POST /v1/chat/completions`` and ``/v1/responses``: OpenAI, automatic and explicit caching simulated.
* ``POST /v1beta/models/{model}:generateContent`` / ``:streamGenerateContent``: Gemini, no cache
  model (prompt tokens are estimated as bytes / 4, nothing is reported cached).

JSON, or SSE when the request says so (``"stream": true``; Gemini's ``streamGenerateContent``).
Query strings (``?beta=true``) are ignored except Gemini's ``alt=sse``. Binds to 127.0.0.1 only.
Use it as ``with FakeProvider() as fake: fake.url`` or from a shell with
``python -m tokenpak_mitm.sim.provider --port 8899``.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import json
import secrets
import sys
import threading
from dataclasses import replace
from typing import Any, Literal, cast

from tokenpak_mitm.core.dialects import Dialect, DialectName, dialects
from tokenpak_mitm.core.dialects.anthropic import ANTHROPIC_ERROR_TYPES
from tokenpak_mitm.core.dialects.replies import Reply
from tokenpak_mitm.core.dialects.spec import EndpointMatch
from tokenpak_mitm.sim.cache_sim import (
    DIAGNOSTICS_BETA,
    CacheSimulator,
    Fingerprint,
    InvalidRequest,
    SimResult,
    diagnose_against,
    fingerprint,
    openai_diagnose,
    openai_fingerprint,
)
from tokenpak_mitm.sim.upstream import FakeUpstream, Received, Script, Step

__all__ = ["FakeProvider", "StreamFault", "reply_text", "main"]

StreamFault = Literal["overloaded", "disconnect"]
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error", 529: "Overloaded"}


def reply_text(number: int) -> str:
    return f"Simulated reply {number} from the fake Anthropic upstream."


def _new_id(prefix: str) -> str:
    return f"{prefix}_fake{secrets.token_hex(10)}"


def _dialect(route: str) -> tuple[Dialect, EndpointMatch] | None:
    """The registered dialect whose endpoint this path is, with what the path says."""
    for d in dialects():
        m = d.match(route)
        if m is not None:
            return d, m
    return None


class FakeProvider:
    """Loopback provider; every request is recorded and answered from ``sim``.

    Knobs: ``frame_delay`` seconds between SSE frames; ``sse_chunk_size`` cuts each frame into
    HTTP chunks of that many bytes (None = one chunk per frame); ``text_deltas`` content deltas per
    stream; ``cumulative_delta_usage`` adds input/cache counts to Anthropic's ``message_delta``.
    One-shot faults: ``next_stream_fault`` ("overloaded" = error event after the first delta,
    "disconnect" = connection dropped before the last frame) and ``next_http_error`` (a status
    such as 429 or 529 with the dialect's error body).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        sim: CacheSimulator | None = None,
        frame_delay: float = 0.0,
        sse_chunk_size: int | None = None,
        text_deltas: int = 3,
        cumulative_delta_usage: bool = False,
    ) -> None:
        self.sim = sim if sim is not None else CacheSimulator()
        self.frame_delay = frame_delay
        self.sse_chunk_size = sse_chunk_size
        self.text_deltas = text_deltas
        self.cumulative_delta_usage = cumulative_delta_usage
        self.next_stream_fault: StreamFault | None = None
        self.next_http_error: int | None = None
        self.fingerprints: dict[str, Fingerprint] = {}  # cache diagnostics: response id -> its request's fingerprint
        self.diagnostics: list[dict[str, Any] | None] = []  # the diagnostics object of each Anthropic reply (None: none)
        self.requests: list[bytes] = []  # request bodies, as received
        self.results: list[SimResult] = []  # one per billable request
        self.upstream = FakeUpstream(self._handle, port=port, bad_request=self._bad_request)

    # -- the server ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def port(self) -> int:
        return self.upstream.port

    @property
    def received(self) -> list[Received]:
        return self.upstream.received

    @property
    def connections_accepted(self) -> int:
        return self.upstream.connections_accepted

    def start(self) -> FakeProvider:
        self.upstream.start()
        return self

    def stop(self) -> None:
        self.upstream.stop()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering -----------------------------------------------------------------------------
    def _headers(self, request_id: str, keep_alive: bool, content_type: str) -> list[tuple[str, str]]:
        return [("date", email.utils.formatdate(usegmt=True)), ("request-id", request_id),
                ("connection", "keep-alive" if keep_alive else "close"), ("content-type", content_type)]

    def _json(self, status: int, body: dict[str, Any], request_id: str, keep_alive: bool) -> Script:
        return Script(status=status, reason=REASONS.get(status, "Error"), headers=self._headers(request_id, keep_alive, "application/json"),
                      steps=[Step(json.dumps(body, separators=(",", ":")).encode())], chunked=False, close=not keep_alive)

    def _error(self, dialect: Dialect, status: int, message: str, request_id: str, keep_alive: bool) -> Script:
        body = dialect.render.error(status, message)
        if dialect.render.request_id_in_errors:
            body["request_id"] = request_id
        return self._json(status, body, request_id, keep_alive)

    def _bad_request(self, message: str) -> Script:
        anthropic = _dialect("/v1/messages")
        assert anthropic is not None
        return self._error(anthropic[0], 400, message, _new_id("req"), keep_alive=False)

    def _handle(self, request: Received) -> Script:
        self.requests.append(request.body)
        request_id, keep_alive = _new_id("req"), request.keep_alive
        route = request.route
        found = _dialect(route) if request.method == "POST" else None
        if found is None:
            anthropic = _dialect("/v1/messages")
            assert anthropic is not None
            return self._error(anthropic[0], 404, "Not Found", request_id, keep_alive)
        dialect, endpoint = found
        try:
            payload = request.json()
        except Exception:  # any decompression or JSON failure is the client's fault
            return self._error(dialect, 400, "There was an error parsing the body", request_id, keep_alive)
        if self.next_http_error is not None:
            status, self.next_http_error = self.next_http_error, None
            label = ANTHROPIC_ERROR_TYPES.get(status, "api_error") if dialect.cache == "anthropic" else f"HTTP {status}"
            return self._error(dialect, status, f"Simulated {label}", request_id, keep_alive)
        if not endpoint.billable:  # Anthropic's count_tokens
            counted = self.sim.count_tokens(payload)
            if counted.error is not None:
                return self._json(counted.status, {**counted.error, "request_id": request_id}, request_id, keep_alive)
            return self._json(200, counted.usage, request_id, keep_alive)
        asked = False
        if dialect.cache == "anthropic" and isinstance(payload, dict):
            try:
                asked = _asks_diagnostics(request, payload)
            except InvalidRequest as e:
                return self._error(dialect, 400, str(e), request_id, keep_alive)
        result, model, stream = self._simulate(dialect, endpoint, payload)
        self.results.append(result)
        if result.error is not None:
            body = {**result.error, "request_id": request_id} if dialect.render.request_id_in_errors else result.error
            return self._json(result.status, body, request_id, keep_alive)
        options = payload.get("stream_options") if isinstance(payload, dict) else None
        reply_id = _new_id(dialect.render.id_prefix)
        diagnostics = self._diagnostics(payload, reply_id) if asked else None
        if dialect.cache == "anthropic":
            self.diagnostics.append(diagnostics)
        elif dialect.name == "openai_responses" and isinstance(payload, dict):
            diagnostics = self._openai_diagnostics(payload, reply_id)
        reply = Reply(
            id=reply_id, model=model, diagnostics=diagnostics, text=reply_text(len(self.results)), usage=result.usage,
            stop=result.stop_reason or "end_turn", text_deltas=self.text_deltas, cumulative_delta_usage=self.cumulative_delta_usage,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        )
        if not stream:
            return self._json(200, dialect.render.json(reply), request_id, keep_alive)
        return self._stream(dialect, dialect.render.frames(reply), request_id, keep_alive)

    def _openai_diagnostics(self, payload: dict[str, Any], reply_id: str) -> dict[str, Any] | None:
        """Keep every Responses request's fingerprint under its id; answer a comparison it asks for."""
        current = openai_fingerprint(payload)
        self.fingerprints[reply_id] = current
        if len(self.fingerprints) > 10_000:  # a long benchmark run: the oldest go
            del self.fingerprints[next(iter(self.fingerprints))]
        options = payload.get("prompt_cache_options")
        baseline = options.get("comparison_response_id") if isinstance(options, dict) else None
        if not isinstance(baseline, str):
            return None
        found = self.fingerprints.get(baseline)
        return openai_diagnose(found, current, payload.get("previous_response_id") == baseline)

    def _diagnostics(self, payload: dict[str, Any], reply_id: str) -> dict[str, Any] | None:
        """Keep this request's fingerprint under its response id (the beta header is on); compare
        with the one ``diagnostics.previous_message_id`` names (no ``diagnostics``: no object back)."""
        current = fingerprint(payload)
        self.fingerprints[reply_id] = current
        if "diagnostics" not in payload:
            return None
        previous_id = payload["diagnostics"].get("previous_message_id") if isinstance(payload.get("diagnostics"), dict) else None
        if previous_id is None:
            return {"cache_miss_reason": None}  # the first turn: opted in, nothing to compare with
        return {"cache_miss_reason": diagnose_against(self.fingerprints.get(previous_id), current)}

    def _simulate(self, dialect: Dialect, endpoint: EndpointMatch, payload: Any) -> tuple[SimResult, str, bool]:
        """(usage or error, model, streamed?) for one generation request, by the dialect's cache family."""
        body = payload if isinstance(payload, dict) else {}
        model = endpoint.model_hint or str(body.get("model"))
        stream = endpoint.streamed if endpoint.streamed is not None else body.get("stream") is True
        if dialect.cache == "anthropic":
            return self.sim.handle(payload), model, stream
        if dialect.cache == "openai":
            result = self.sim.handle_openai(payload, cast(DialectName, dialect.name))
            limit = body.get("max_output_tokens") or body.get("max_completion_tokens") or body.get("max_tokens")
            output = result.usage.get("output_tokens", result.usage.get("completion_tokens", 0))
            stop = "max_tokens" if isinstance(limit, int) and output >= limit else "end_turn"
            return replace(result, stop_reason=stop), model, stream
        # No cache model for this dialect: a rough prompt count, nothing cached.
        prompt = max(1, len(json.dumps(payload)) // 4)
        config = body.get("generationConfig")
        limit = config.get("maxOutputTokens") if isinstance(config, dict) else body.get("max_tokens")
        output = min(self.sim.output_tokens, limit) if isinstance(limit, int) else self.sim.output_tokens
        plain = dialect.render.plain_usage
        usage = plain(prompt, output) if plain is not None else {"input_tokens": prompt, "output_tokens": output}
        stop = "max_tokens" if isinstance(limit, int) and output >= limit else "end_turn"
        return SimResult(status=200, usage=usage, stop_reason=stop), model, stream

    def _stream(self, dialect: Dialect, frames: list[bytes], request_id: str, keep_alive: bool) -> Script:
        """SSE body, one HTTP chunk per frame (or ``sse_chunk_size`` pieces), optionally faulted."""
        fault, self.next_stream_fault = self.next_stream_fault, None
        if fault == "overloaded":  # an error replaces everything after the first delta
            frames = frames[:dialect.render.first_delta + 1] + [dialect.render.stream_error()]
        elif fault == "disconnect":
            frames = frames[:-1]
        steps: list[Step] = []
        for number, frame in enumerate(frames):
            size = self.sse_chunk_size or len(frame)
            for start in range(0, len(frame), size):
                steps.append(Step(frame[start:start + size], delay=self.frame_delay if number and not start else 0.0))
        headers = self._headers(request_id, keep_alive, "text/event-stream; charset=utf-8")
        headers.append(("cache-control", "no-cache"))
        return Script(headers=headers, steps=steps, truncate=fault == "disconnect", close=not keep_alive)


def _asks_diagnostics(request: Received, payload: dict[str, Any]) -> bool:
    """Whether the request opted in to cache diagnostics (the beta header); InvalidRequest when it
    sends a ``diagnostics`` field without the header or of the wrong shape."""
    betas = {b.strip() for b in (request.header("anthropic-beta") or "").split(",")}
    value = payload.get("diagnostics")
    if "diagnostics" in payload:
        if DIAGNOSTICS_BETA not in betas:
            raise InvalidRequest(f"diagnostics: requires the anthropic-beta header {DIAGNOSTICS_BETA}")
        if not isinstance(value, dict) or not isinstance(value.get("previous_message_id", None), str | None):
            raise InvalidRequest("diagnostics.previous_message_id: Input should be a valid string")
    return DIAGNOSTICS_BETA in betas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Loopback LLM provider (Anthropic, OpenAI Chat and Responses, Gemini) backed by the cache simulator.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--frame-delay", type=float, default=0.0, help="seconds between SSE frames")
    parser.add_argument("--sse-chunk-size", type=int, default=None, help="split SSE frames into HTTP chunks of N bytes")
    parser.add_argument("--output-tokens", type=int, default=None, help="output tokens per reply (capped by max_tokens)")
    parser.add_argument("--cumulative-delta-usage", action="store_true", help="repeat input/cache counts in message_delta")
    args = parser.parse_args(argv)
    sim = CacheSimulator() if args.output_tokens is None else CacheSimulator(output_tokens=args.output_tokens)
    with FakeProvider(port=args.port, sim=sim, frame_delay=args.frame_delay, sse_chunk_size=args.sse_chunk_size,
                      cumulative_delta_usage=args.cumulative_delta_usage) as fake:
        print(fake.url, flush=True)
        print("fake provider running; Ctrl-C to stop", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
