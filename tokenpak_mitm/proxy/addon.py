"""The mitmproxy glue: options, hooks, and nothing else.

Every decision lives in a pure module (routes, cache_insert, tap, dialects, telemetry, pricing);
this class only moves data between mitmproxy's flow objects and them. Two promises shape it:

* **Traffic is never harmed.** Each hook body is guarded: on any exception of ours the flow goes
  on untouched and the row records ``proxy_error``. The stream callable returns every chunk
  unchanged (see ``tap.py``). Only forwarding work stays on the event loop: planning the markers
  (it decides the bytes sent upstream), a cheap record of what happened, and, once the response
  is sent, reading its usage for the planner. The session tracker, the miss diagnosis, pricing,
  the row and the console line of a live request run in the store's writer process
  (``accounting.py``); big bodies are planned and fingerprinted in a worker process.
* **Exactly one row per LLM request.** Per-flow state lives in a ``WeakKeyDictionary`` (no flow is
  kept alive) and an ``emitted`` flag guards ``response``/``error``; the store's unique key guards
  the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.connection import ConnectionState
from mitmproxy.net.http import url
from mitmproxy.proxy import mode_specs

from tokenpak_mitm import __version__
from tokenpak_mitm.core.account.accounting import MINIMAL_OUTCOME, Accountant, Finished, SessionFacts, blind_until, console_line, identity_headers, minimal_row
from tokenpak_mitm.core.account.pricing import request_price_hints
from tokenpak_mitm.core.account.pricing import warm as warm_prices
from tokenpak_mitm.core.account.request_shape import parse_shape
from tokenpak_mitm.core.account.session_id import PROJECT_HEADER, SESSION_HEADER
from tokenpak_mitm.core.account.sessions import Ticket as SessionTicket
from tokenpak_mitm.core.account.telemetry import Outcome, RequestRecord, outcome, terminal_state_for_error
from tokenpak_mitm.core.observe.decoders import DecodeError, DecodeLimit, codings, decode_body
from tokenpak_mitm.core.observe.tap import StreamTap
from tokenpak_mitm.core.observe.tracker import Tracker
from tokenpak_mitm.core.plan.cache_diagnostics import Prepared, PreviousResponses, beta_header, prepare, splice, splice_openai
from tokenpak_mitm.core.plan.cache_facts import facts_for
from tokenpak_mitm.core.plan.cache_insert import (
    OFFLOAD_BYTES,
    PLAN_MAX_BYTES,
    PLAN_MAX_OBJECTS,
    CacheOptions,
    InsertResult,
    insert_markers,
    plan_where,
)
from tokenpak_mitm.core.plan.learning_planner import Memory, Ticket, observe_usage
from tokenpak_mitm.core.plan.openai_cache import insert_openai_breakpoint
from tokenpak_mitm.core.plan.split_plan import (
    Snapshot,
    apply_record_stepwise,
    plan_openai_with_snapshot,
    plan_with_snapshot,
    prompt_digests,
    take_snapshot,
    trailer_drops,
)
from tokenpak_mitm.core.redact import redact_query, redact_text, secret_values
from tokenpak_mitm.core.request_model import request_model
from tokenpak_mitm.core.routes import Route, classify, route_class, tracker_for
from tokenpak_mitm.core.row import ClosedBy, TelemetryRow
from tokenpak_mitm.proxy import hooks
from tokenpak_mitm.proxy.offload import Offloader
from tokenpak_mitm.proxy.options import parse_bool
from tokenpak_mitm.proxy.probe import PROBE_HEADER, ProbeAnswer, answer_body, valid_nonce
from tokenpak_mitm.proxy.quiet import set_quiet
from tokenpak_mitm.proxy.startup import PREFIX, exit_startup, guard_configure, unknown_option_message
from tokenpak_mitm.store.dburl import is_postgres
from tokenpak_mitm.store.metrics import MetricsUnavailable, parse_address, require_prometheus
from tokenpak_mitm.store.otel import OtelExporter, OtelUnavailable, require_otel
from tokenpak_mitm.store.postgres import MissingExtra
from tokenpak_mitm.store.postgres import require as require_postgres
from tokenpak_mitm.store.sqlite import TelemetryStore, default_db_path, last_request_at
from tokenpak_mitm.store.writer import StoreProcess

logger = logging.getLogger("tokenpak")

CACHE_MODES = ("auto", "off", "top-level")
CACHE_TTLS = ("5m", "1h", "auto")
META = "tokenpak"  # flow.metadata key: survives save/replay, so replays reuse live decisions
SNAPSHOT_CHUNK = 2048  # prefix digests looked up per event-loop turn (~5 ms when all are known)
SHAPE_OFFLOAD_BYTES = 32 << 10  # request bodies above this are fingerprinted for the session tracker in a worker thread
INLINE_PARSE_BYTES = 256 * 1024  # response bodies decoding to more are decoded and parsed in a worker thread
MAX_OBSERVED_BODY = 16 * 1024 * 1024  # and above this not parsed at all (the row says so)


class _Heavy(Exception):
    """Raised on the event loop when a body is too big to decode or parse there."""


@dataclass(slots=True)
class _FlowState:
    route: Route
    record: RequestRecord
    tracker: Tracker
    # Decided once, when the flow starts: do its bytes come from the network now (else it is a
    # loaded flow replayed from a file, whose stream callable never runs), and did an earlier run
    # of this addon already handle it (a recorded flow: markers in the body, timings stashed)?
    live: bool
    earlier: dict[str, Any] | None
    sent_at: float | None = None
    tap: StreamTap | None = None
    emitted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    ticket: Ticket | None = None  # the learning planner's record of this request, for the response side
    labels: dict[str, str] = field(default_factory=dict)  # the x-tokenpak-* headers, taken off the request
    session_ticket: SessionTicket | None = None  # the session tracker's record of this request
    session_task: asyncio.Task[None] | None = None
    session_facts: SessionFacts | None = None  # what `session_task` reads (kept to read it here when the task cannot be waited for)
    # tokenpak_cache_diagnostics: (credential scope, conversation key) under which this request's
    # response id is remembered, so the conversation's next request can name it
    conversation: tuple[str, bytes, bytes] | None = None  # (scope, conversation key, flavor)
    asked: bool = False  # tokenpak_cache_diagnostics spliced its field into this request
    # Accounted in the store's writer process (a live flow nobody else needs the row of at once);
    # decided when the request goes upstream, so the session's two halves are tracked in one place.
    remote: bool = False
    req_headers: _HeaderView | None = None  # read once when the request is complete (labels included)
    resp_headers: _HeaderView | None = None  # read once when the flow ends (`_response_headers`)


class TokenPak:
    """Inserts prompt-cache markers, observes LLM responses, logs one telemetry row each."""

    def __init__(self) -> None:
        self._flows: weakref.WeakKeyDictionary[http.HTTPFlow, _FlowState] = weakref.WeakKeyDictionary()
        self.store: StoreProcess | TelemetryStore | None = None
        self.otel: OtelExporter | None = None  # only with the in-process store; else the writer process exports
        self._otlp = ""  # tokenpak_otlp
        self._metrics = ""  # tokenpak_metrics (host:port)
        self.rows_emitted = 0
        # Flows whose response went out and whose accounting waits for the next loop turn (see
        # `response`); flushed by `done`. Tasks: heavy bodies being read off the loop.
        self._deferred: dict[str, tuple[http.HTTPFlow, _FlowState]] = {}  # oldest first
        self._draining = False  # a `_drain` is scheduled
        self._tasks: set[asyncio.Task[None]] = set()
        # Ended flows accounted here whose session the worker is still reading (see `_emit`).
        self._awaiting: dict[str, tuple[http.HTTPFlow, _FlowState, Outcome | None]] = {}
        self._saving = False  # mitmproxy's save_stream_file (-w) is set
        # Option values read per request are copied here in `configure`: ctx.options lookups
        # cost microseconds each on the event loop, and they only change through configure.
        self._hosts: frozenset[str] = frozenset()
        self._secret_names: frozenset[str] = frozenset()
        self._offload = Offloader()  # planning of heavy bodies, in a worker process
        self._cache_opts = CacheOptions()
        # What the cache planners remember (prefix digests and timings, never content), one per
        # proxy, Anthropic and OpenAI requests alike (digests are seeded by API, so they never
        # collide); read and fed in a worker thread for large bodies (it is locked).
        self.memory = Memory()
        self._index_path = ""  # tokenpak_cache_index
        self._history = True  # tokenpak_cache_history
        self._console = True
        self.started = threading.Event()  # set by `running`; see watch_startup
        self.accountant = Accountant()  # for flows accounted here (see `_FlowState.remote`)
        self._scope_salt = os.urandom(16)  # credential scopes are salted hashes, never the key
        self._diagnostics = False  # tokenpak_cache_diagnostics
        self.previous_responses = PreviousResponses()

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self, loader: Loader) -> None:
        # No `choices=` on purpose: a bad --set value would make mitmdump skip the script silently.
        loader.add_option("tokenpak_db", str, "", "Telemetry database: a SQLite file (default: ~/.tokenpak/tokenpak.db) "
                                                  "or a PostgreSQL URL, postgresql://user@host:5432/dbname (the team extra).")
        loader.add_option("tokenpak_hosts", Sequence[str], [], "Extra upstream hosts to treat as LLM APIs (dialect chosen by path).")
        loader.add_option("tokenpak_cache", str, "auto", "Prompt-cache marker insertion: auto, off, or top-level (automatic-caching field).")
        loader.add_option("tokenpak_cache_ttl", str, "auto", "TTL of inserted cache markers: auto (5m, or 1h where the observed gaps, or the odds of a pause, make it pay), 5m or 1h.")
        loader.add_option("tokenpak_cache_history", str, "true", "Let the cache planner learn from the traffic it sees (true), or decide each request alone by fixed rules (false).")
        loader.add_option("tokenpak_cache_index", str, "", "File where the cache planner keeps prefix digests and timings across restarts (never content); empty: memory only.")
        loader.add_option("tokenpak_console", str, "true", "Log one concise line per LLM request: true or false.")
        loader.add_option("tokenpak_secret_headers", Sequence[str], [], "Extra request header names whose values are secrets (besides any name containing auth, token, key, secret, session, cookie, password, signature or credential).")
        loader.add_option("tokenpak_quiet", str, "false",
                          "Hide mitmproxy's own info lines (connects, disconnects, 'Streaming response from') on the terminal; "
                          "warnings, errors and the addon's lines stay: true or false. make run turns it on.")
        loader.add_option("tokenpak_cache_diagnostics", str, "off",
                          "Ask the provider for its own cache-miss verdict: on adds diagnostics.previous_message_id (the conversation's "
                          "previous response) and the cache-diagnosis beta header to Anthropic Messages requests that lack them, and "
                          "prompt_cache_options.comparison_response_id to GPT-5.6+ Responses requests; off (default). "
                          "Anthropic then keeps a fingerprint of each request (docs/security.md).")
        loader.add_option("tokenpak_otlp", str, "", "OTLP/HTTP collector URL (e.g. http://127.0.0.1:4318) for spans and gen_ai metrics; needs the otel extra.")
        loader.add_option("tokenpak_metrics", str, "", "Serve Prometheus metrics of the rows written on host:port (e.g. 127.0.0.1:9464, path /metrics); needs the team extra.")

    @property
    def is_running(self) -> bool:
        return self.started.is_set()

    @staticmethod
    def check_options(opts: Any, updated: Collection[str] | None = None) -> None:
        """Raise ``OptionsError`` for a bad value of this addon's options (those in ``updated``;
        None: all). Pure: also run by ``tokenpak run`` before mitmdump starts (`startup.preflight`)."""
        def checks(name: str) -> bool:
            return updated is None or name in updated

        if checks("tokenpak_cache") and opts.tokenpak_cache not in CACHE_MODES:
            raise exceptions.OptionsError(f"tokenpak_cache must be one of {', '.join(CACHE_MODES)}, not {opts.tokenpak_cache!r}")
        if checks("tokenpak_cache_ttl") and opts.tokenpak_cache_ttl not in CACHE_TTLS:
            raise exceptions.OptionsError(f"tokenpak_cache_ttl must be 5m, 1h or auto, not {opts.tokenpak_cache_ttl!r}")
        url = opts.tokenpak_otlp if checks("tokenpak_otlp") else ""
        if url and not url.startswith(("http://", "https://")):
            raise exceptions.OptionsError(f"tokenpak_otlp must be an http(s) URL, not {url!r}")
        try:
            if url:
                require_otel()
        except OtelUnavailable as e:
            raise exceptions.OptionsError(str(e)) from e
        try:
            if checks("tokenpak_metrics") and opts.tokenpak_metrics.strip():
                parse_address(opts.tokenpak_metrics)
                require_prometheus()
        except (ValueError, MetricsUnavailable) as e:
            raise exceptions.OptionsError(str(e)) from e
        try:
            for name in ("tokenpak_console", "tokenpak_quiet", "tokenpak_cache_history", "tokenpak_cache_diagnostics"):
                if checks(name):
                    parse_bool(name, getattr(opts, name))
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from e

    @guard_configure
    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if not self.is_running:
            known = [name for name in opts.keys() if name.startswith(PREFIX)]  # noqa: SIM118 - OptManager is not iterable
            message = unknown_option_message(getattr(opts, "deferred", {}).keys(), known)
            if message:
                exit_startup(message)
        self.check_options(opts, updated)
        self._hosts = frozenset(h.lower() for h in opts.tokenpak_hosts)
        self._saving = bool(getattr(opts, "save_stream_file", None))
        self._secret_names = frozenset(n.strip().lower() for n in opts.tokenpak_secret_headers if n.strip())
        self._cache_opts = CacheOptions(mode=opts.tokenpak_cache, ttl=opts.tokenpak_cache_ttl)
        console = parse_bool("tokenpak_console", opts.tokenpak_console)
        self._diagnostics = parse_bool("tokenpak_cache_diagnostics", opts.tokenpak_cache_diagnostics)
        quiet = parse_bool("tokenpak_quiet", opts.tokenpak_quiet)
        if "tokenpak_quiet" in updated:
            set_quiet(quiet)
        # Under `mitmdump -q` the line would be built only to be filtered out: skip the work.
        self._console = console and getattr(opts, "termlog_verbosity", "info") in ("info", "debug")
        if "tokenpak_metrics" in updated:
            # Before a new store starts: its writer must count the rows it imports from a spill file at start.
            address = opts.tokenpak_metrics.strip()  # (checked by check_options)
            self._metrics = address
            if isinstance(self.store, StoreProcess):
                self.store.set_metrics(address or None)  # served by the writer process, where rows are written
            elif address and self.store is not None:
                logger.warning("tokenpak: tokenpak_metrics needs the store's writer process; no metrics with the in-process store")
        if "tokenpak_db" in updated:
            path = opts.tokenpak_db or str(default_db_path())
            if is_postgres(path):
                try:
                    require_postgres()
                except MissingExtra as e:
                    raise exceptions.OptionsError(str(e)) from None
            if self.store is None or self.store.db != path:
                if self.store is not None:
                    self.store.close()
                # Before the store starts writing: were requests recorded by an earlier run within
                # the longest TTL? Their cache entries may still be live, unknown to this tracker.
                self.accountant.sessions.blind_until = blind_until(last_request_at(path), time.time())
                self.store = _make_store(path)
                if isinstance(self.store, StoreProcess) and self._otlp:
                    self.store.set_otlp(self._otlp)
                if isinstance(self.store, StoreProcess) and self._metrics:
                    self.store.set_metrics(self._metrics)
                self.store.start()
        if isinstance(self.store, StoreProcess):
            self.store.set_console(self._console)

        self._history = parse_bool("tokenpak_cache_history", opts.tokenpak_cache_history)
        if "tokenpak_cache_index" in updated:
            self._index_path = opts.tokenpak_cache_index
            if self._index_path:
                self._load_index(self._index_path)

        if "tokenpak_otlp" in updated:
            if self.otel is not None:
                self.otel.shutdown()
                self.otel = None
            url = opts.tokenpak_otlp
            try:
                if url and isinstance(self.store, StoreProcess):
                    require_otel()  # the writer process exports every row it writes
                elif url:
                    self.otel = OtelExporter(url)
            except OtelUnavailable as e:
                raise exceptions.OptionsError(str(e)) from e
            self._otlp = url
            if isinstance(self.store, StoreProcess):
                self.store.set_otlp(url or None)

    def running(self) -> None:
        self.started.set()
        modes = ",".join(str(m) for m in ctx.options.mode)
        db = self.store.name if self.store else "-"
        logger.info(
            "tokenpak-mitm %s running: db=%s mode=%s cache=%s ttl=%s%s",
            __version__, db, modes, ctx.options.tokenpak_cache, ctx.options.tokenpak_cache_ttl,
            f" metrics=http://{self._metrics}/metrics" if self._metrics else "",
        )
        warm_prices()  # before traffic, not on the first request's turn of the event loop

    def _load_index(self, path: str) -> None:
        try:
            data = Path(path).expanduser().read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            logger.warning("tokenpak: cache index %s not read (%s); starting without history", path, e)
            return
        try:
            loaded = self.memory.index.load(data, time.time())
        except ValueError as e:
            logger.warning("tokenpak: cache index %s ignored: %s; starting without history", path, e)
            return
        logger.info("tokenpak: cache planner history: %d prefixes from %s", loaded, path)

    def _save_index(self) -> None:
        path = self._index_path
        if not path:
            return
        target = Path(path).expanduser()
        try:
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(self.memory.index.dump())
            os.replace(tmp, target)
        except OSError as e:
            logger.warning("tokenpak: cache index not saved to %s: %s", path, e)

    def done(self) -> None:
        for flow_id in list(self._deferred):  # rows still waiting for a turn of the loop
            self._run_deferred(flow_id, True)
        for flow, st, ended in list(self._awaiting.values()):  # rows waiting for the worker's fingerprint
            self._awaiting.pop(flow.id, None)
            self._session_now(st)
            self._finish_row(flow, st, ended)
        self._save_index()
        self._offload.close()
        if self.otel is not None:
            self.otel.shutdown()
        if self.store is not None:
            self.store.close()

    # -- request side ---------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        view = _HeaderView(flow.request.headers)
        if PROBE_HEADER in view:
            self._answer_probe(flow)  # `tokenpak doctor`: answered here, never sent upstream, no row
            return
        # On every flow: our headers never go upstream.
        labels = _take_labels(flow.request.headers) if SESSION_HEADER in view or PROJECT_HEADER in view else {}
        try:
            self._start(flow, view)
            st = self._flows.get(flow)
            if st is not None:
                st.labels = labels
                st.req_headers = view  # reused by `request` unless the headers changed in between
        except Exception:
            logger.exception("tokenpak: could not classify %s; passing it through", flow.request.host)

    def _answer_probe(self, flow: http.HTTPFlow) -> None:
        nonce = flow.request.headers.get(PROBE_HEADER)
        if not valid_nonce(nonce):
            flow.response = http.Response.make(400, b"bad probe", {"content-type": "text/plain"})
            return
        assert nonce is not None
        store = self.store
        identity = None
        if store is not None:
            try:
                st = os.stat(store.path)
                identity = (st.st_dev, st.st_ino)
            except OSError:
                pass
        mode = flow.client_conn.proxy_mode
        answer = ProbeAnswer(version=__version__, pid=os.getpid(), db=store.name if store else None, db_identity=identity,
                             rows_written=getattr(store, "written", 0), store_error=getattr(store, "last_error", None),
                             upstream=mode.data if isinstance(mode, mode_specs.ReverseMode) else None)
        flow.response = http.Response.make(200, answer_body(nonce, answer), {"content-type": "application/json", "cache-control": "no-store"})

    def _start(self, flow: http.HTTPFlow, headers: _HeaderView) -> None:
        req = flow.request
        reverse = isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)
        host = _pretty_host(req, headers)
        route = classify(req.method, host, req.path, extra_hosts=self._hosts, any_host=reverse)
        if route is None:
            return
        tracker = tracker_for(route)
        if tracker is None:
            return
        rec = RequestRecord(
            request_key=flow.id,
            route=route,
            started_at=req.timestamp_start,
            host=host,
            path=redact_query(req.path),
            route_class=route_class(headers.get("user-agent"), "x-stainless-lang" in headers),
        )
        meta = flow.metadata.get(META)
        earlier = meta if isinstance(meta, dict) and "cache_decision" in meta else None
        self._flows[flow] = _FlowState(route=route, record=rec, tracker=tracker, live=flow.live, earlier=earlier)

    async def request(self, flow: http.HTTPFlow) -> None:
        st = self._flows.get(flow)
        if st is None:
            return
        await self._request(flow, st)
        store = self.store
        writer = store if isinstance(store, StoreProcess) and st.live and not self._saving and hooks.WANT_KEY not in flow.metadata else None
        st.remote = writer is not None
        if st.route.api not in _CONVERSATION_APIS:
            return
        if writer is not None:
            try:
                writer.begin(flow.id, self._session_facts(flow, st))
            except Exception:
                logger.exception("tokenpak: could not hand the request to the session tracker; the row goes without it")
            return
        # After the hook returns: parsing and hashing the prompt must not delay the request.
        st.session_facts = self._session_facts(flow, st)
        st.session_task = asyncio.get_running_loop().create_task(self._begin_session(flow, st))

    def _session_facts(self, flow: http.HTTPFlow, st: _FlowState) -> SessionFacts:
        req = flow.request
        headers = st.req_headers or _HeaderView(req.headers, st.labels)
        # A body over the planning bounds is not fingerprinted either: its session comes from the headers.
        body = _shape_input(req, headers) if st.record.cache_decision != "too_large" else None
        return SessionFacts(st.route.dialect, identity_headers(headers.get), self._scope(req, headers), req.timestamp_start, body)

    async def _request(self, flow: http.HTTPFlow, st: _FlowState) -> None:
        st.req_headers = _HeaderView.of(flow.request.headers, st.req_headers, st.labels)
        if st.route.dialect == "anthropic" and "content-encoding" not in st.req_headers:
            try:  # the response normally reports both; this is the fallback
                st.record.request_speed, st.record.request_inference_geo = request_price_hints(flow.request.raw_content)
            except Exception:
                logger.exception("tokenpak: could not read the request's price hints")
        if st.earlier is not None:
            self._reuse_decision(st.record, st.earlier)  # a recorded flow already carries our markers
        elif flow.response is None:  # a response set by another addon means nothing goes upstream
            await self._plan(flow, st)
        st.sent_at = time.time()

    async def _begin_session(self, flow: http.HTTPFlow, st: _FlowState) -> None:
        try:
            await self._begin_session_guarded(flow, st)
        except Exception:
            logger.exception("tokenpak: could not track the session; the row goes without it")

    def _session_now(self, st: _FlowState) -> None:
        """Read the session here instead of waiting for `session_task` (at shutdown, or a task
        that has not started yet)."""
        task, facts = st.session_task, st.session_facts
        if task is not None:
            task.cancel()
        if st.session_ticket is None and facts is not None:
            try:
                st.session_ticket = self.accountant.begin(facts)
            except Exception:
                logger.exception("tokenpak: could not track the session; the row goes without it")

    async def _begin_session_guarded(self, flow: http.HTTPFlow, st: _FlowState) -> None:
        """Decide the session and turn from what went upstream (markers included)."""
        facts = st.session_facts or self._session_facts(flow, st)
        readable = facts.body
        if readable is not None and len(readable) > SHAPE_OFFLOAD_BYTES:
            # ~0.7 ms per 200 KB (250 ms for 26k blocks): in the worker process, not a thread,
            # which would hold the GIL the event loop needs; only the session hints and the
            # shape come back.
            parsed, shape = await self._offload.run(parse_shape, readable, st.route.dialect, True)
            st.session_ticket = self.accountant.begin(facts, parsed, shape)
        else:
            st.session_ticket = self.accountant.begin(facts)

    def _scope(self, req: http.Request, headers: _HeaderView) -> str:
        key = (headers.get("x-api-key") or headers.get("authorization") or headers.get("x-goog-api-key")
               or (req.query.get("key") if "?" in req.path else None) or "")
        return hashlib.blake2b(key.encode(), key=self._scope_salt, digest_size=8).hexdigest() if key else ""

    def _finish_session(self, flow: http.HTTPFlow, st: _FlowState, ended: Outcome) -> dict[str, Any]:
        """The row's session, turn, miss diagnosis and warm-until columns (none without a session)."""
        ticket = st.session_ticket
        if ticket is None:
            if st.session_task is not None:
                st.session_task.cancel()  # still parsing when the flow ended (rare): no session columns
            return {}
        began = flow.response.timestamp_start if flow.response is not None else None  # writes readable from then
        cols = self.accountant.columns(ticket, st.record, ended, began)
        stashed = st.earlier.get("session") if st.earlier is not None else None
        if not st.live and isinstance(stashed, dict):
            cols = {k: stashed.get(k) for k in cols}  # a replay: the live run's session and verdict, so the rows match
        else:
            meta = flow.metadata.get(META)
            if isinstance(meta, dict):
                meta["session"] = cols
        return cols

    async def _plan(self, flow: http.HTTPFlow, st: _FlowState) -> None:
        client_body = flow.request.raw_content
        spans: list[list[Any]] = []
        try:
            spans = await self._insert(flow, st)
        except Exception:
            logger.exception("tokenpak: marker insertion failed; request sent unchanged")
            st.record.cache_decision = "error"
        asked: dict[str, Any] | None = None
        if self._diagnostics and ((st.route.api == "messages" and st.route.provider == "anthropic")
                                  or (st.route.dialect == "openai_responses" and st.route.provider == "openai")):
            try:
                asked = await self._ask_diagnostics(flow, st, spans)
                st.asked = asked is not None
            except Exception:
                logger.exception("tokenpak: could not ask for cache diagnostics; request sent without them")
        rec = st.record
        flow.metadata[META] = {
            "cache_decision": rec.cache_decision,
            "markers_inserted": rec.markers_inserted,
            "client_markers": rec.client_markers,
            "prefix_tokens_est": rec.prefix_tokens_est,
            "cache_reasons": rec.cache_reasons,
            "spans": spans,
        }
        if asked is not None:
            flow.metadata[META]["diagnostics"] = asked  # our change, besides the spans: the header
        if hooks.wanted(flow, hooks.OUTBOUND):
            inserted = [(int(offset), text.encode("utf-8")) for offset, text in spans]
            hooks.fire(hooks.TokenpakOutboundHook(flow, client_body or b"", inserted))

    async def _ask_diagnostics(self, flow: http.HTTPFlow, st: _FlowState, spans: list[list[Any]]) -> dict[str, Any] | None:
        """Splice ``diagnostics.previous_message_id`` (and the beta header) into an Anthropic request
        that lacks it (see cache_diagnostics); returns what was added, None when nothing was."""
        req = flow.request
        body = req.raw_content
        if body is None or "content-encoding" in req.headers or st.record.cache_decision == "too_large":
            return None  # streamed upstream already, compressed (never re-encode for this), or over the planning bounds
        # ~9 ms for a 200 KB body (json.loads and one digest per message): past 32 KB in the worker
        # process, so only this flow waits, never the event loop's other streams
        api = st.route.dialect
        prepared = await self._offload.run(prepare, body, api) if len(body) > SHAPE_OFFLOAD_BYTES else prepare(body, api)
        if prepared is None or not (prepared.keys or prepared.previous_response_id):
            return None
        scope = self._scope(req, st.req_headers or _HeaderView(req.headers))
        if prepared.keys:
            st.conversation = (scope, prepared.keys[-1], prepared.flavor)
        if prepared.client_sent:
            return None  # the client (or, for OpenAI, the planner) wrote that object: its request goes as it is
        previous = self.previous_responses.lookup(scope, prepared.keys, prepared.flavor)
        if api == "openai_responses":
            return self._ask_openai(flow, prepared, prepared.previous_response_id or previous, spans)
        done = splice(body, prepared, previous)
        header = beta_header(req.headers.get("anthropic-beta"))
        req.raw_content = done.body
        if "content-length" in req.headers:
            req.headers["content-length"] = str(len(done.body))
        if header is not None:
            req.headers["anthropic-beta"] = header
        # Client-body offsets: every marker span lies inside the object, after this one.
        spans.insert(0, [done.span.offset, done.span.text.decode("utf-8")])
        return {"previous_message_id": previous, "anthropic_beta": header}  # header: the value set, None when the client's had it

    @staticmethod
    def _ask_openai(flow: http.HTTPFlow, prepared: Prepared, baseline: str | None, spans: list[list[Any]]) -> dict[str, Any] | None:
        """``prompt_cache_options.comparison_response_id`` for a GPT-5.6+ Responses request (nothing
        to compare with on a conversation's first request: left alone)."""
        if baseline is None or not facts_for(prepared.model, "openai").write:
            return None  # diagnostics are for GPT-5.6 and later (developers.openai.com)
        done = splice_openai(flow.request.raw_content or b"", prepared, baseline)
        flow.request.raw_content = done.body
        if "content-length" in flow.request.headers:
            flow.request.headers["content-length"] = str(len(done.body))
        spans.insert(0, [done.span.offset, done.span.text.decode("utf-8")])
        return {"comparison_response_id": baseline}

    def _refused_diagnostics(self, st: _FlowState) -> None:
        """An upstream that refuses the field we added (a gateway, a model or platform without
        diagnostics) must not see it again: asking stops for this process, with one warning."""
        said = f"{st.record.extract.error_type or ''} {st.record.extract.error_message or ''}".lower()
        if self._diagnostics and any(word in said for word in ("diagnostics", "cache-diagnosis", "prompt_cache_options", "comparison_response_id")):
            self._diagnostics = False
            logger.warning("tokenpak: the upstream refused the cache-diagnostics field the proxy added (HTTP 400: %s); "
                           "tokenpak_cache_diagnostics is off for this run",
                           redact_text((st.record.extract.error_message or "")[:200], st.record.known_secrets))

    def _note_response(self, st: _FlowState) -> None:
        """Remember the response id of a conversation's request (tokenpak_cache_diagnostics)."""
        rid = st.tracker.extract.response_id
        if st.conversation is not None and rid:
            scope, key, flavor = st.conversation
            self.previous_responses.note(scope, key, rid, flavor)
            st.conversation = None

    @staticmethod
    def _reuse_decision(rec: RequestRecord, meta: dict[str, Any]) -> None:
        rec.cache_decision = meta.get("cache_decision")
        rec.markers_inserted = int(meta.get("markers_inserted") or 0)
        rec.client_markers = int(meta.get("client_markers") or 0)
        rec.prefix_tokens_est = meta.get("prefix_tokens_est")
        rec.cache_reasons = meta.get("cache_reasons")

    async def _insert(self, flow: http.HTTPFlow, st: _FlowState) -> list[list[Any]]:
        """Splice cache markers into the request; returns the inserted spans for the metadata."""
        rec = st.record
        if not st.route.inserts:
            return []
        body = flow.request.raw_content
        if body is None:
            rec.cache_decision = "request_streamed"  # stream_large_bodies sent it already
            return []
        encoding = (st.req_headers or _HeaderView(flow.request.headers)).get("content-encoding")
        opts, now = self._cache_opts, flow.request.timestamp_start
        plan: Callable[[], InsertResult]
        stateless = True  # a pure function of its arguments: may run in the worker process
        if st.route.dialect in ("openai_chat", "openai_responses"):
            if opts.mode == "off":
                rec.cache_decision = "off"
                return []
            plan = partial(insert_openai_breakpoint, body, encoding, st.route.dialect,
                           memory=self.memory if self._history else None, now=now)
            stateless = not self._history  # the learning planner updates this process's memory
        else:
            memory = self.memory if self._history else None
            plan = partial(insert_markers, body, encoding, opts, memory, now)
            stateless = memory is None  # the learning planner updates this process's memory
        where = plan_where(body, encoding)
        if where == "off_loop" and len(body) > OFFLOAD_BYTES and not codings(encoding) and await _objects(body, PLAN_MAX_OBJECTS) > PLAN_MAX_OBJECTS:
            where = "too_large"  # counted here in slices: no worker round trip (and body copy) to learn it
        if where == "too_large":
            # Over the planning bounds (PLAN_MAX_BYTES, PLAN_MAX_OBJECTS): planning would cost more
            # than a marker saves and make this request (and, off the loop, the worker) wait; it
            # goes upstream exactly as it came.
            rec.cache_decision = "too_large"
            return []
        if where == "off_loop":
            # Planning a big or many-block prompt would stall every other connection on mitmproxy's
            # single event-loop thread (and, in a thread, hold the GIL it needs); in a worker
            # process only this flow waits. The learning planner's memory stays in this process:
            # the worker fingerprints and decides, this process only looks up and records.
            if stateless:
                result = await self._offload.run(plan)
            elif st.route.dialect in ("anthropic", "openai_chat", "openai_responses"):
                result = await self._plan_split(body, encoding, st.route.dialect, opts, now)
            else:
                result = await asyncio.to_thread(plan)
        else:
            result = plan()
        st.ticket = result.ticket
        rec.cache_reasons = result.reasons_json()
        # An OpenAI model without explicit breakpoints has no planner: NULL, as before (and as Gemini).
        rec.cache_decision = None if result.decision == "not_supported" else result.decision
        rec.request_model = result.model
        rec.markers_inserted = result.markers_inserted
        rec.client_markers = result.client_markers
        rec.prefix_tokens_est = result.prefix_tokens_est
        if result.spans and result.body is not body:
            flow.request.raw_content = result.body
            if "content-length" in flow.request.headers:
                flow.request.headers["content-length"] = str(len(result.body))
        return [[s.offset, s.text.decode("utf-8", "replace")] for s in result.spans]

    async def _plan_split(self, body: bytes, encoding: str | None, api: Literal["anthropic", "openai_chat", "openai_responses"],
                          opts: CacheOptions, now: float) -> InsertResult:
        """The learning planner with the pure work in the worker process (see `split_plan`)."""
        digests = await self._offload.run(prompt_digests, body, encoding, api)
        known: list[bytes] = []
        bpt = self.memory.calibration.bytes_per_token(digests.model if digests is not None else None)
        ds = digests.split() if digests is not None else []
        for start in range(0, len(ds), SNAPSHOT_CHUNK):  # a turn of the event loop between slices
            known.append(take_snapshot(self.memory, ds[start:start + SNAPSHOT_CHUNK], now))
            await asyncio.sleep(0)
        snapshot = Snapshot(b"".join(known), bpt, trailer_drops(self.memory, ds))
        if api == "anthropic":
            result, call = await self._offload.run(plan_with_snapshot, body, encoding, opts, snapshot, now)
        else:
            result, call = await self._offload.run(plan_openai_with_snapshot, body, encoding, api, snapshot, now)
        for done in apply_record_stepwise(self.memory, ds, result, call, SNAPSHOT_CHUNK):
            if done is not None:
                return done
            await asyncio.sleep(0)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- response side --------------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        st = self._flows.get(flow)
        if st is None or flow.response is None:
            return
        if st.ticket is not None and flow.response.status_code < 400:
            self.memory.index.response_began(st.ticket.recorded)  # its cache writes are readable now
        try:
            resp = flow.response
            headers = st.resp_headers = _HeaderView(resp.headers)
            ctype = (headers.get("content-type") or "").lower()
            sse = "text/event-stream" in ctype
            array_stream = st.route.dialect == "gemini" and ":streamgeneratecontent" in flow.request.path.lower() and not sse
            if not (sse or array_stream) or resp.status_code >= 400:
                return
            st.record.stream = True
            st.tap = StreamTap(st.tracker, sse=sse, content_encoding=headers.get("content-encoding"))
            resp.stream = st.tap
            hooks.fire(hooks.TokenpakStreamHook(flow, st.tap))
        except Exception:
            logger.exception("tokenpak: could not attach the stream observer; response passes through")

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        st = self._flows.get(flow)
        if st is None or st.emitted or flow.error is not None:
            return None  # a replayed cut-short flow gets `response` then `error`: the error reports it
        st.emitted = True
        if st.conversation is not None:
            self._note_response(st)  # a stream's id is known by now: before the next request can come
        loop = _running_loop()
        if loop is None or not st.live or self._saving or hooks.WANT_KEY in flow.metadata:
            # A replay, a flow that is saved (`-w`: mitmproxy writes it, with our stash, right after
            # this hook), or one another tokenpak addon watches (a recorder, a live checker that
            # reads the row): account now.
            return self._observe_and_account(flow, st)
        # mitmproxy sends a buffered response only after this hook returns: reading the usage and
        # accounting (row, price, session, planner feedback, console) wait for the next turn of
        # the event loop, so they never delay the response they describe.
        self._deferred[flow.id] = (flow, st)
        if not self._draining:
            self._draining = True
            loop.call_soon(self._drain)
        return None

    def _drain(self) -> None:
        """Account for the oldest finished flow, then let the loop turn before the next one: when
        many streams end together, the others' frames are forwarded between two accountings
        instead of waiting behind all of them."""
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
                self._observe_guarded(flow, st, inline=False)
                self._emit(flow, st)
                return
            pending = self._observe_and_account(flow, st)
            if pending is not None:
                task: asyncio.Task[None] = asyncio.get_running_loop().create_task(pending)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except Exception:
            logger.exception("tokenpak: could not account for a finished request")

    def _observe_and_account(self, flow: http.HTTPFlow, st: _FlowState) -> Coroutine[Any, Any, None] | None:
        try:
            self._observe_body(flow, st, inline=True)
        except _Heavy:
            # A big (or bomb-sized) body: decoding and parsing it would stall every other stream on
            # mitmproxy's one event-loop thread. mitmproxy awaits what a hook returns, so only this
            # flow waits for the worker thread; the common small body never leaves the loop.
            return self._observe_off_loop(flow, st)
        except Exception:
            logger.exception("tokenpak: could not read the response; recording proxy_error")
            st.record.terminal_override = "proxy_error"
        self._emit(flow, st)
        return None

    def _observe_guarded(self, flow: http.HTTPFlow, st: _FlowState, inline: bool) -> None:
        try:
            self._observe_body(flow, st, inline)
        except Exception:
            logger.exception("tokenpak: could not read the response; recording proxy_error")
            st.record.terminal_override = "proxy_error"

    async def _observe_off_loop(self, flow: http.HTTPFlow, st: _FlowState) -> None:
        try:
            await asyncio.to_thread(self._observe_body, flow, st, False)
        except Exception:
            logger.exception("tokenpak: could not read the response; recording proxy_error")
            st.record.terminal_override = "proxy_error"
        self._emit(flow, st)

    def error(self, flow: http.HTTPFlow) -> None:
        st = self._flows.get(flow)
        if st is None or st.emitted:
            return
        try:
            replayed_body = flow.response is not None and flow.response.raw_content and (st.tap is None or not st.tap.wire_bytes)
            if replayed_body:
                self._observe_body(flow, st)  # -nr of a cut-short flow: the bytes are in the body
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
                st.record.closed_by = _closed_by_word(st.earlier.get("closed_by"))  # replay: the live run's verdict
            if st.record.terminal_override is None and unreachable(flow):
                st.record.terminal_override = "upstream_unreachable"
        except Exception:
            logger.exception("tokenpak: error while closing a failed flow")
            st.record.terminal_override = "proxy_error"
        self._emit(flow, st)

    def _observe_body(self, flow: http.HTTPFlow, st: _FlowState, inline: bool = False) -> None:
        """Feed the buffered response to the tracker. ``inline`` (on the event loop): raise
        ``_Heavy`` rather than decode or parse more than a few milliseconds' worth."""
        resp = flow.response
        assert resp is not None
        tap = st.tap
        if tap is not None:
            if not tap.finished and resp.raw_content:
                tap.feed_buffered(resp.raw_content)  # replay: the callable never ran
            elif not tap.finished:
                tap.close()
            return
        body = resp.raw_content
        if body is None:
            return
        headers = _response_headers(resp, st)
        ctype = (headers.get("content-type") or "").lower()
        if "text/event-stream" in ctype:  # an SSE body we did not stream (e.g. replayed error)
            tap = StreamTap(st.tracker, sse=True, content_encoding=headers.get("content-encoding"))
            tap.feed_buffered(body)
            st.tap = tap
            st.record.stream = True
            return
        if inline and len(body) > INLINE_PARSE_BYTES:
            raise _Heavy
        try:
            decoded = decode_body(body, headers.get("content-encoding"), INLINE_PARSE_BYTES if inline else MAX_OBSERVED_BODY, strict=False)
        except DecodeLimit:
            if inline:
                raise _Heavy from None
            logger.warning("tokenpak: a response body decodes to more than %d bytes; not parsed (usage unknown)", MAX_OBSERVED_BODY)
            st.record.observe_note = "response_body_too_large"
            return
        except DecodeError as e:
            logger.warning("tokenpak: response body not decoded (%s); usage unknown, bytes passed through unchanged", e)
            st.record.observe_note = "response_body_undecodable"
            return
        st.tracker.feed_body(decoded, resp.status_code)

    def _known_secrets(self, flow: http.HTTPFlow) -> tuple[str, ...]:
        """This request's own secret values, each repeated header on its own (``fields``)."""
        return secret_values(flow.request.headers.fields, flow.request.path, self._secret_names)

    def _emit(self, flow: http.HTTPFlow, st: _FlowState) -> None:
        """Build the row (timings, usage, price, session, miss diagnosis) and hand it on; never raises."""
        st.emitted = True
        try:
            self._fill_timing(flow, st)
            self._fill_usage(flow, st)
            rec = st.record
            if rec.error_msg is not None or (rec.status_code or 0) >= 400 or rec.extract.stream_error:
                rec.known_secrets = self._known_secrets(flow)  # the row's error text may echo them
            ended = outcome(rec)
        except Exception:
            logger.exception("tokenpak: could not build the telemetry row; recording a minimal one")
            ended = None
        if st.ticket is not None:
            self._learn(st.ticket, ended, st.record)
        if st.conversation is not None:
            self._note_response(st)
        if st.asked and st.record.status_code == 400:
            self._refused_diagnostics(st)
        if st.remote and ended is not None and isinstance(self.store, StoreProcess) and not hooks.wanted(flow, hooks.ROW):
            self._account_remotely(flow, st, ended, self.store)
            return
        task, facts = st.session_task, st.session_facts
        if st.session_ticket is None and task is not None and not task.done():
            if facts is not None and facts.body is not None and len(facts.body) > SHAPE_OFFLOAD_BYTES:
                # The worker process still fingerprints the request's big body: the row waits for
                # it rather than going without its session (issue 26: recorded requests > 32 KB).
                self._awaiting[flow.id] = (flow, st, ended)
                task.add_done_callback(lambda _: self._session_read(flow.id))
                return
            self._session_now(st)  # a small body whose task has not run yet: read it here
        self._finish_row(flow, st, ended)

    def _session_read(self, flow_id: str) -> None:
        entry = self._awaiting.pop(flow_id, None)
        try:  # a loop callback, not a hook: mitmproxy would not catch and report what escapes
            if entry is not None:
                self._finish_row(*entry)
        except Exception:
            logger.exception("tokenpak: could not account for a finished request")

    def _finish_row(self, flow: http.HTTPFlow, st: _FlowState, ended: Outcome | None) -> None:
        """The session columns, the row, and its hand-off (hook, store, export, console); never raises."""
        session: dict[str, Any] = {}
        try:
            session = self._finish_session(flow, st, ended or MINIMAL_OUTCOME)
        except Exception:
            logger.exception("tokenpak: could not diagnose the request's cache; the row goes without it")
        row: TelemetryRow | None = None
        try:
            row = self.accountant.row(st.record, ended, session)
        except Exception:
            logger.exception("tokenpak: could not build the telemetry row; recording a minimal one")
        if row is None:
            row = minimal_row(st.record, session)
        self.rows_emitted += 1
        if hooks.wanted(flow, hooks.ROW):  # before the write: a live checker may annotate the row
            slot = hooks.RowSlot(row)
            hooks.fire(hooks.TokenpakRowHook(flow, slot))
            row = slot.row
        if self.store is not None:
            self.store.submit(row)
        if self.otel is not None:
            self.otel.export(row)
        if self._console:
            logger.info(console_line(row))

    def _account_remotely(self, flow: http.HTTPFlow, st: _FlowState, ended: Outcome, store: StoreProcess) -> None:
        """Hand the finished request to the writer process, which builds, writes and prints its row.

        The error text is redacted here, with this request's own secrets, which never leave the proxy.
        """
        rec = st.record
        try:
            secrets = rec.known_secrets
            if secrets:  # what upstream said about the request may echo them
                ended = ended._replace(error=redact_text(ended.error, secrets))
                x = rec.extract
                x.error_type, x.error_message = redact_text(x.error_type, secrets), redact_text(x.error_message, secrets)
                rec.error_msg = redact_text(rec.error_msg, secrets)
                rec.known_secrets = ()
            began = flow.response.timestamp_start if flow.response is not None else None
            store.account(Finished(rec, ended, began, time.time()))
        except Exception:
            logger.exception("tokenpak: could not hand the request to the store; recording a minimal row")
            store.submit(minimal_row(rec))
        self.rows_emitted += 1

    def _learn(self, ticket: Ticket, ended: Outcome | None, rec: RequestRecord) -> None:
        """Feed the response's usage back to the learning planner (calibration, lost cache entries)."""
        try:
            usage = rec.extract.usage
            if ended is None or (ended.state != "completed" and not usage.input_tokens):
                self.memory.index.forget(ticket.recorded)  # nothing was written upstream
                return
            read, write, fresh = usage.cache_read_tokens, usage.cache_write_tokens, usage.input_tokens
            prompt = None if fresh is None else fresh + (read or 0) + (write or 0)
            observe_usage(self.memory, ticket, prompt_tokens=prompt, read_tokens=read, write_tokens=write)
        except Exception:
            logger.exception("tokenpak: could not feed usage back to the cache planner")

    def _fill_usage(self, flow: http.HTTPFlow, st: _FlowState) -> None:
        rec = st.record
        x = st.tracker.extract
        rec.extract = x
        if x.model is None and rec.route.model_hint is None and rec.request_model is None:
            # Errors and count_tokens name no model in the response: the request does.
            headers = st.req_headers or _HeaderView(flow.request.headers)
            rec.request_model = request_model(flow.request.raw_content, headers.get("content-encoding"))

    def _fill_timing(self, flow: http.HTTPFlow, st: _FlowState) -> None:
        rec, tap, resp = st.record, st.tap, flow.response
        if resp is not None:
            rec.status_code = resp.status_code
            headers = _response_headers(resp, st)
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
            rec.proxy_request_ms = _ms(st.sent_at - flow.request.timestamp_end)
        if resp is not None and resp.timestamp_start:
            rec.ttfb_ms = _ms(resp.timestamp_start - sent)
        if tap is not None and tap.first_content_at is not None:
            rec.ttft_ms = _ms(tap.first_content_at - sent)
        end = (resp.timestamp_end if resp is not None else None) or (tap.last_byte_at if tap else None) or time.time()
        rec.duration_ms = _ms(end - sent)
        if st.remote:
            return  # the stash is for flows saved or recorded (accounted here), whose replays reuse it
        meta = flow.metadata.get(META)
        stash = meta if isinstance(meta, dict) else {}
        stash.update(ttfb_ms=rec.ttfb_ms, ttft_ms=rec.ttft_ms, duration_ms=rec.duration_ms, closed_by=rec.closed_by,
                     proxy_request_ms=rec.proxy_request_ms)
        flow.metadata[META] = stash


def _make_store(path: str) -> StoreProcess | TelemetryStore:
    """SQLite in its own process, so its faults (a truncated ``-shm``: SIGBUS) never reach the proxy.

    A frozen mitmdump (the standalone binaries) has no Python to start ``-m store_writer`` with:
    there the store runs in-process, as before, and says so.
    """
    if getattr(sys, "frozen", False):
        logger.warning("tokenpak: frozen mitmdump: the telemetry store runs inside the proxy process (no fault isolation)")
        store: StoreProcess | TelemetryStore = TelemetryStore(path)
    else:
        store = StoreProcess(path)
    return store


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


_CONVERSATION_APIS = frozenset({"messages", "chat.completions", "responses", "generate_content"})


def _take_labels(headers: http.Headers) -> dict[str, str]:
    """Remove the proxy's own headers from a request; their values, for the session tracker."""
    labels: dict[str, str] = {}
    for name in (SESSION_HEADER, PROJECT_HEADER):
        if name in headers:
            labels[name] = headers.get(name, "")
            del headers[name]
    return labels


class _HeaderView:
    """A message's headers read in one pass: lower-cased name -> value, repeats joined with ", " as
    mitmproxy's ``Headers.get`` joins them, plus the labels taken off the request.

    ``Headers.get`` scans every field on each lookup (about 4 µs with 16 headers, more with the
    25 a provider sends back); the addon reads a flow's headers about 20 times. Values are decoded
    only when read (most are never). mitmproxy's ``Headers`` keeps its fields in a tuple that any
    change replaces, so a view made earlier is still right while ``fields`` is the same object.
    """

    __slots__ = ("_map", "fields", "labelled")

    def __init__(self, headers: http.Headers, labels: dict[str, str] | None = None) -> None:
        self.fields = headers.fields  # kept: the identity `of` compares (and no new tuple can reuse its id)
        found: dict[bytes, bytes] = {}
        for raw_name, raw_value in self.fields:
            name = raw_name.lower()
            found[name] = found[name] + b", " + raw_value if name in found else raw_value
        if labels:
            for key, value in labels.items():
                found[key.encode("utf-8", "surrogateescape")] = value.encode("utf-8", "surrogateescape")
        self._map = found
        self.labelled = bool(labels)

    @classmethod
    def of(cls, headers: http.Headers, earlier: _HeaderView | None, labels: dict[str, str] | None = None) -> _HeaderView:
        """``earlier`` when the headers have not changed since it was made (and no labels are to be
        added), else a new view."""
        if earlier is not None and earlier.fields is headers.fields and earlier.labelled == bool(labels):
            return earlier
        return cls(headers, labels)

    def get(self, name: str, default: None = None, /) -> str | None:
        value = self._map.get(name.lower().encode("utf-8", "surrogateescape"))
        return default if value is None else value.decode("utf-8", "surrogateescape")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower().encode("utf-8", "surrogateescape") in self._map


def _response_headers(resp: http.Response, st: _FlowState) -> _HeaderView:
    """The response's header view as the flow ends, read once for the usage and the row (after
    every addon's responseheaders: a later one may have rewritten them, which `of` notices)."""
    st.resp_headers = _HeaderView.of(resp.headers, st.resp_headers)
    return st.resp_headers


def _pretty_host(req: http.Request, headers: _HeaderView) -> str:
    """``req.pretty_host`` (the host the client named, without port) read from the view, not by
    another scan of the headers."""
    authority = (req.authority or None) if (req.is_http2 or req.is_http3) else None
    authority = authority or headers.get("host")
    return url.parse_authority(authority, check=False)[0] if authority else req.host


COUNT_SLICE = 256 << 10  # bytes counted per turn of the event loop (~0.6 ms on the shared 2-core VM)


async def _objects(body: bytes, limit: int) -> int:
    """The JSON objects (``{`` bytes) in ``body``, counted in slices with a turn of the event loop
    between them (no copy), stopping once past ``limit``: a big body never holds the loop."""
    n = 0
    for start in range(0, len(body), COUNT_SLICE):
        n += body.count(b"{", start, start + COUNT_SLICE)
        if n > limit:
            break
        await asyncio.sleep(0)
    return n


def _shape_input(req: http.Request, headers: _HeaderView) -> bytes | None:
    """The body the session tracker reads (`request_shape.parse_shape`); None when it reads none.

    Only identity-encoded bodies up to the planner's cap are read: decoding a compressed body has
    no size bound here (a small gzip bomb must not cost the proxy its memory), and clients that
    compress requests are rare; their sessions still come from the headers.
    """
    body = req.raw_content
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    if not body or encoding != "identity" or len(body) > PLAN_MAX_BYTES:
        return None  # (too big to plan is too big to fingerprint: its session comes from the headers)
    return body


def closed_by(flow: http.HTTPFlow) -> ClosedBy | None:
    """Whose connection was already closed when the flow failed ("client", "server" or None)."""
    client_closed = flow.client_conn.state is ConnectionState.CLOSED
    server_closed = flow.server_conn.state is ConnectionState.CLOSED
    if client_closed and not server_closed:
        return "client"
    if server_closed and not client_closed:
        return "server"
    return None


def unreachable(flow: http.HTTPFlow) -> bool:
    """The flow failed because the upstream could not be reached: no response, and no connection
    to it was ever set up (TCP refused or timed out, name not resolved, TLS handshake failed).
    A client that left first is not that (mitmproxy names the client in its error text)."""
    srv = flow.server_conn
    never_connected = srv.timestamp_tcp_setup is None or (srv.tls and srv.timestamp_tls_setup is None)
    gone = flow.error is not None and terminal_state_for_error(flow.error.msg) == "client_disconnected"
    return flow.response is None and never_connected and not gone


def _closed_by_word(value: object) -> ClosedBy | None:
    return "client" if value == "client" else "server" if value == "server" else None


def watch_startup(addon: TokenPak, grace: float | None = None) -> None:
    """Say so on stderr when mitmproxy loaded the script but never started the addon.

    mitmproxy 12 drops a script without a word (and keeps proxying, exit 0) when a deferred
    ``--set`` value for one of its options cannot be parsed or is given twice. Traffic would then
    flow with no telemetry and no markers, and nobody would know.
    """
    wait = grace if grace is not None else float(os.environ.get("TOKENPAK_STARTUP_GRACE", "20"))

    def watch() -> None:
        if not addon.started.wait(wait):
            sys.stderr.write(
                "tokenpak: ERROR: the addon was loaded but mitmproxy never started it, so no telemetry is being "
                "recorded. mitmproxy skips a script silently when a --set tokenpak_* value cannot be parsed or is "
                "given twice: check the --set options.\n"
            )
            sys.stderr.flush()

    threading.Thread(target=watch, name="tokenpak-startup-watch", daemon=True).start()


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000.0, 3)
