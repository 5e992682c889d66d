"""The accounting hand-off: each finished LLM request goes to the one ``accounting.Sink``.

The sink is chosen once, in ``configure`` (``make_sink``): the store's writer process, which
builds, writes and prints every row (``store/writer.py``), or, for proxies that save (``-w``) or
record flows, a ``LocalSink`` that accounts in this process, so the flow files carry the session
columns their replays reuse. Either way this addon only sends values: one ``SessionFacts`` when a
request goes upstream (``request``), one ``Finished`` when it ends (``response`` / ``error``).

A buffered response is sent only after mitmproxy's ``response`` hook returns, so the hand-off (the
body read, the timings, the planner's feedback, the ``Finished``) waits for the next turn of the
event loop, oldest flow first and one per turn; flows that are saved, watched by another tokenpak
addon or replayed are handed off at once. A body too big to read on the loop is read in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine, Mapping
from functools import partial
from typing import Any

from mitmproxy import ctx, http

from tokenpak_mitm.core.account.accounting import Finished, SessionFacts, Sink, identity_headers
from tokenpak_mitm.core.account.telemetry import Outcome, outcome, terminal_state_for_error
from tokenpak_mitm.core.redact import redact_text, secret_values
from tokenpak_mitm.core.request_model import request_model
from tokenpak_mitm.core.row import ClosedBy
from tokenpak_mitm.proxy import hooks
from tokenpak_mitm.proxy.flowstate import (
    META,
    FlowState,
    HeaderView,
    closed_by,
    closed_by_word,
    credential_scope,
    ms,
    response_headers,
    shape_input,
    state_of,
)
from tokenpak_mitm.proxy.observing import Heavy, read_body
from tokenpak_mitm.proxy.offload import Offloader
from tokenpak_mitm.proxy.options import parse
from tokenpak_mitm.store.sqlite import TelemetryStore
from tokenpak_mitm.store.writer import ExportingStore, LocalSink, StoreProcess

__all__ = ["Handoff", "SinkHandle", "make_sink"]

logger = logging.getLogger("tokenpak")

_CONVERSATION_APIS = frozenset({"messages", "chat.completions", "responses", "generate_content"})


class SinkHandle:
    """The sink the hand-off chose, for the doctor's probe (the one object both are given)."""

    sink: Sink | None = None


class Handoff:
    """Hands each LLM request's accounting to the sink: its session facts, then its finished record."""

    name = "tokenpak_handoff"

    def __init__(self, worker: Offloader, handle: SinkHandle) -> None:
        self._worker = worker  # the session tracker's parse of a big body (LocalSink), in the worker process
        self._handle = handle
        self.sink: Sink | None = None
        self._local = False  # the sink accounts in this process (flows are saved or recorded)
        self._otlp = ""
        self._metrics = ""  # tokenpak_metrics (host:port)
        self._saving = False  # mitmproxy's save_stream_file (-w) is set
        self._console = True
        self._secret_names: frozenset[str] = frozenset()
        self._scope_salt = os.urandom(16)  # credential scopes are salted hashes, never the key
        self.rows_emitted = 0
        # Flows whose response went out and whose hand-off waits for the next loop turn (see
        # `response`); flushed by `done`. Tasks: heavy bodies being read off the loop.
        self._deferred: dict[str, tuple[http.HTTPFlow, FlowState]] = {}  # oldest first
        self._draining = False  # a `_drain` is scheduled
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle ------------------------------------------------------------------------------
    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        try:
            settings = parse(opts, updated)
        except ValueError:
            return  # the configuration addon reports it
        if "tokenpak_otlp" in updated:
            self._otlp = settings.otlp
        if "tokenpak_metrics" in updated:
            # Before a new store starts: its writer must count the rows it imports from a spill file at start.
            self._metrics = settings.metrics
            if self.sink is not None:
                self.sink.set_metrics(self._metrics or None)  # served by the writer process, where rows are written
        self._saving = bool(getattr(opts, "save_stream_file", None))
        self._secret_names = settings.secret_headers
        # Under `mitmdump -q` the line would be built only to be filtered out: skip the work.
        self._console = settings.console and getattr(opts, "termlog_verbosity", "info") in ("info", "debug")
        # Flows saved (-w) or recorded keep the session columns their replays reuse: accounted here.
        local = self._saving or bool(getattr(opts, "tokenpak_record", ""))
        if updated & {"tokenpak_db", "save_stream_file", "tokenpak_record"}:
            if self.sink is None or self.sink.db != settings.db or local != self._local:
                if self.sink is not None:
                    _close_off_loop(self.sink)
                self._local = local
                self.sink = self._handle.sink = make_sink(settings.db, local, self._worker)
                if self._otlp:
                    self.sink.set_otlp(self._otlp)
                if self._metrics:
                    self.sink.set_metrics(self._metrics)
                self.sink.start()
        if self.sink is not None:
            self.sink.set_console(self._console)
        if "tokenpak_otlp" in updated and self.sink is not None:
            self.sink.set_otlp(self._otlp or None)

    def done(self) -> None:
        for flow_id in list(self._deferred):  # hand-offs still waiting for a turn of the loop
            self._run_deferred(flow_id, True)
        if self.sink is not None:
            self.sink.close()

    # -- hooks ----------------------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or self.sink is None or st.route.api not in _CONVERSATION_APIS:
            return
        try:  # what went upstream (markers included): the planning addon's request hook came first
            req = flow.request
            headers = st.req_headers or HeaderView(req.headers, st.labels)
            # A body over the planning bounds is not fingerprinted either: its session comes from the headers.
            body = shape_input(req, headers) if st.record.cache_decision != "too_large" else None
            facts = SessionFacts(st.route.dialect, identity_headers(headers.get), credential_scope(req, headers, self._scope_salt),
                                 req.timestamp_start, body)
            self.sink.begin(flow.id, facts)
        except Exception:
            logger.exception("tokenpak: could not hand the request to the session tracker; the row goes without it")

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        st = state_of(flow)
        if st is None or st.emitted or flow.error is not None:
            return None  # a replayed cut-short flow gets `response` then `error`: the error reports it
        st.emitted = True
        loop = _running_loop()
        if loop is None or not st.live or self._saving or hooks.WANT_KEY in flow.metadata:
            # A replay, a flow that is saved (`-w`: mitmproxy writes it, with our stash, right after
            # this hook), or one another tokenpak addon watches (a recorder, a live checker): now.
            return self._observe_and_hand_off(flow, st)
        # mitmproxy sends a buffered response only after this hook returns: reading the usage and
        # the hand-off wait for the next turn of the event loop, so they never delay the response.
        self._deferred[flow.id] = (flow, st)
        if not self._draining:
            self._draining = True
            loop.call_soon(self._drain)
        return None

    def error(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or st.emitted:
            return
        try:
            replayed_body = flow.response is not None and flow.response.raw_content and (st.tap is None or not st.tap.wire_bytes)
            if replayed_body:
                read_body(flow, st)  # -nr of a cut-short flow: the bytes are in the body
            elif st.tap is not None:
                st.tap.close()
            # mitmproxy's error text can quote upstream bytes, which can echo the client's own token.
            st.record.error_msg = redact_text(flow.error.msg, self._known_secrets(flow)) if flow.error else "unknown error"
            meta = flow.metadata.get(META)
            if st.live and _shutting_down():
                st.record.terminal_override = "proxy_shutdown"  # cut by our own stop, not by a peer
                if isinstance(meta, dict):
                    meta["proxy_shutdown"] = True  # saved with a recording: its replay agrees
            elif not st.live and st.earlier is not None and st.earlier.get("proxy_shutdown"):
                st.record.terminal_override = "proxy_shutdown"
            if st.live or st.earlier is None or "closed_by" not in st.earlier:
                st.record.closed_by = closed_by(flow)
            else:
                st.record.closed_by = closed_by_word(st.earlier.get("closed_by"))  # replay: the live run's verdict
            if st.record.terminal_override is None and unreachable(flow, st.record.closed_by):
                st.record.terminal_override = "upstream_unreachable"
        except Exception:
            logger.exception("tokenpak: error while closing a failed flow")
            st.record.terminal_override = "proxy_error"
        self._hand_off(flow, st)

    # -- the deferred hand-off ------------------------------------------------------------------
    def _drain(self) -> None:
        """Hand off the oldest finished flow, then let the loop turn before the next one: when
        many streams end together, the others' frames are forwarded between two hand-offs."""
        if self._deferred:
            self._run_deferred(next(iter(self._deferred)), False)
        if self._deferred:
            asyncio.get_running_loop().call_soon(self._drain)
        else:
            self._draining = False

    def _run_deferred(self, flow_id: str, final: bool) -> None:
        entry = self._deferred.pop(flow_id, None)
        if entry is None:
            return
        flow, st = entry
        try:  # a loop callback, not a hook: mitmproxy would not catch and report what escapes
            if final:  # at shutdown: no event loop turn left to wait for
                self._read_guarded(flow, st, inline=False)
                self._hand_off(flow, st)
                return
            pending = self._observe_and_hand_off(flow, st)
            if pending is not None:
                task: asyncio.Task[None] = asyncio.get_running_loop().create_task(pending)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            logger.exception("tokenpak: could not account for a finished request")

    def _observe_and_hand_off(self, flow: http.HTTPFlow, st: FlowState) -> Coroutine[Any, Any, None] | None:
        try:
            read_body(flow, st, inline=True)
        except Heavy:
            # A big (or bomb-sized) body: decoding and parsing it would stall every other stream on
            # mitmproxy's one event-loop thread. mitmproxy awaits what a hook returns, so only this
            # flow waits for the worker thread; the common small body never leaves the loop.
            return self._read_off_loop(flow, st)
        except Exception:
            logger.exception("tokenpak: could not read the response; recording proxy_error")
            st.record.terminal_override = "proxy_error"
        self._hand_off(flow, st)
        return None

    def _read_guarded(self, flow: http.HTTPFlow, st: FlowState, inline: bool) -> None:
        try:
            read_body(flow, st, inline)
        except Exception:
            logger.exception("tokenpak: could not read the response; recording proxy_error")
            st.record.terminal_override = "proxy_error"

    async def _read_off_loop(self, flow: http.HTTPFlow, st: FlowState) -> None:
        try:
            await asyncio.to_thread(read_body, flow, st, False)
        except Exception:
            logger.exception("tokenpak: could not read the response; recording proxy_error")
            st.record.terminal_override = "proxy_error"
        finally:  # also when shutdown cancels the task: the request still gets its row (or is spilled)
            self._hand_off(flow, st)

    # -- the hand-off ---------------------------------------------------------------------------
    def _hand_off(self, flow: http.HTTPFlow, st: FlowState) -> None:
        """Hand the finished request to the sink, which builds, writes and prints its row; never raises.

        The error text is redacted here, with this request's own secrets, which never leave the proxy.
        """
        st.emitted = True
        rec = st.record
        ended: Outcome | None = None
        try:
            self._fill_timing(flow, st)
            self._fill_usage(flow, st)
            ended = outcome(rec)
            if rec.error_msg is not None or (rec.status_code or 0) >= 400 or rec.extract.stream_error:
                secrets = self._known_secrets(flow)  # what upstream said about the request may echo them
                if secrets:
                    ended = ended._replace(error=redact_text(ended.error, secrets))
                    x = rec.extract
                    x.error_type, x.error_message = redact_text(x.error_type, secrets), redact_text(x.error_message, secrets)
                    rec.error_msg = redact_text(rec.error_msg, secrets)
        except Exception:
            logger.exception("tokenpak: could not build the telemetry row; recording a minimal one")
            ended = None
        if st.answered is not None:
            try:
                st.answered(ended, rec)  # the planner's feedback: a failure there must not cost the row
            except Exception:
                logger.exception("tokenpak: the planner could not take this response's usage")
        stashed = st.earlier.get("session") if st.earlier is not None and not st.live else None
        began = flow.response.timestamp_start if flow.response is not None else None  # writes readable from then
        done = Finished(rec, ended, began, time.time(), stashed if isinstance(stashed, dict) else None)
        hooks.fire(hooks.TokenpakFinishedHook(flow, done))  # a live checker notes its violations on the record
        self.rows_emitted += 1
        if self.sink is None:
            return
        try:
            self.sink.finish(done, partial(_accounted, flow, done))
        except Exception:
            logger.exception("tokenpak: could not hand the request to the store")

    def _known_secrets(self, flow: http.HTTPFlow) -> tuple[str, ...]:
        """This request's own secret values, each repeated header on its own (``fields``)."""
        return secret_values(flow.request.headers.fields, flow.request.path, self._secret_names)

    def _fill_usage(self, flow: http.HTTPFlow, st: FlowState) -> None:
        rec = st.record
        x = st.tracker.extract
        rec.extract = x
        if x.model is None and rec.route.model_hint is None and rec.request_model is None:
            # Errors and count_tokens name no model in the response: the request does.
            headers = st.req_headers or HeaderView(flow.request.headers)
            rec.request_model = request_model(flow.request.raw_content, headers.get("content-encoding"))

    def _fill_timing(self, flow: http.HTTPFlow, st: FlowState) -> None:
        rec, tap, resp = st.record, st.tap, flow.response
        if resp is not None:
            rec.status_code = resp.status_code
            headers = response_headers(resp, st)
            rec.upstream_request_id = headers.get("request-id") or headers.get("x-request-id")
        sent = st.sent_at or flow.request.timestamp_end or flow.request.timestamp_start
        if tap is not None:
            rec.frames = tap.parser.frames if tap.parser is not None else None
            rec.response_bytes = tap.wire_bytes
        elif resp is not None and resp.raw_content is not None:
            rec.response_bytes = len(resp.raw_content)
        earlier = st.earlier
        if not st.live and earlier is not None and "ttfb_ms" in earlier:
            # Replay: timings come from the live run, so the row matches it.
            rec.ttfb_ms, rec.ttft_ms, rec.duration_ms = earlier.get("ttfb_ms"), earlier.get("ttft_ms"), earlier.get("duration_ms")
            rec.proxy_request_ms = earlier.get("proxy_request_ms")
            return
        if st.sent_at is not None and flow.request.timestamp_end:
            rec.proxy_request_ms = ms(st.sent_at - flow.request.timestamp_end)
        if resp is not None and resp.timestamp_start:
            rec.ttfb_ms = ms(resp.timestamp_start - sent)
        if tap is not None and tap.first_content_at is not None:
            rec.ttft_ms = ms(tap.first_content_at - sent)
        end = (resp.timestamp_end if resp is not None else None) or (tap.last_byte_at if tap else None) or time.time()
        rec.duration_ms = ms(end - sent)
        if not self._local:
            return  # the stash is for flows saved or recorded, whose replays reuse it
        meta = flow.metadata.get(META)
        stash = meta if isinstance(meta, dict) else {}
        stash.update(ttfb_ms=rec.ttfb_ms, ttft_ms=rec.ttft_ms, duration_ms=rec.duration_ms, closed_by=rec.closed_by,
                     proxy_request_ms=rec.proxy_request_ms)
        flow.metadata[META] = stash


def _accounted(flow: http.HTTPFlow, done: Finished, session: Mapping[str, Any] | None) -> None:
    """The sink accounted the request: stash its session columns with the flow (saved or recorded:
    its replay reuses them), then tell the addons that keep flows."""
    if session is not None and done.session is None:
        meta = flow.metadata.get(META)
        if isinstance(meta, dict):
            meta["session"] = dict(session)
    hooks.fire(hooks.TokenpakAccountedHook(flow))


def make_sink(path: str, local: bool, worker: Offloader) -> Sink:
    """The store's writer process, which accounts every request and writes its row: SQLite in its
    own process, so its faults (a truncated ``-shm``: SIGBUS) never reach the proxy. Accounted in
    this process instead (rows still written by the writer process) when ``local``.

    A frozen mitmdump (the standalone binaries) has no Python to start the writer with: there
    accounting and store run in-process, as before, and it says so.
    """
    run = partial(_run_in_worker, worker)
    if getattr(sys, "frozen", False):
        logger.warning("tokenpak: frozen mitmdump: the telemetry store runs inside the proxy process (no fault isolation)")
        return LocalSink(ExportingStore(TelemetryStore(path)), run)
    writer = StoreProcess(path)
    return LocalSink(writer, run) if local else writer


async def _run_in_worker(worker: Offloader, fn: Any, *args: Any) -> Any:
    return await worker.run(fn, *args)


def unreachable(flow: http.HTTPFlow, closed: ClosedBy | None = None) -> bool:
    """The flow failed because the upstream could not be reached: no response, and no connection
    to it was ever set up (TCP refused or timed out, name not resolved, TLS handshake failed).
    A client that left first is not that (mitmproxy names the client in its error text, or, for an
    HTTP/2 client's "peer closed connection", ``closed`` says which side closed)."""
    srv = flow.server_conn
    never_connected = srv.timestamp_tcp_setup is None or (srv.tls and srv.timestamp_tls_setup is None)
    gone = flow.error is not None and terminal_state_for_error(flow.error.msg, closed) == "client_disconnected"
    return flow.response is None and never_connected and not gone


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # hooks driven directly (unit tests, tools): account at once
        return None


def _shutting_down() -> bool:
    """True once mitmproxy has been asked to stop (SIGTERM, SIGINT, ``q``): flows failing from
    then on were cut by the proxy's own shutdown, whatever text their error carries."""
    try:
        return bool(ctx.master.should_exit.is_set())
    except AttributeError:  # no master (unit tests driving the hooks directly)
        return False


def _close_off_loop(sink: Sink) -> None:
    """Close a sink replaced at run time (an option changed in mitmweb or the console) without holding
    the event loop: closing waits for its writer to flush, up to its shutdown bound. At start-up (no
    loop yet) it closes here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        sink.close()
        return
    threading.Thread(target=sink.close, name="tokenpak-sink-close").start()  # not a daemon: exit waits for the flush
