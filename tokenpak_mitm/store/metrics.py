"""Prometheus metrics of the rows written: ``--set tokenpak_metrics=127.0.0.1:9464`` serves ``/metrics``.

Why it looks like this:

* **Counted where rows are written.** The store calls ``observe`` with exactly the rows a
  transaction inserted (a row already in the database, e.g. from a spill file imported twice, is
  not), so the counters equal the rows in the database that this process wrote: the same source
  of truth as ``tokenpak report``. Rows waiting in a spill file are counted when they are imported.
* **Served by the store's writer process** (docs/architecture.md, "Metrics"): the rows are built
  and written there, so counting costs the proxy's event loop nothing and a scrape never takes
  the proxy's GIL. A writer that is hung or dead answers no scrape, which Prometheus reports as
  ``up == 0`` (the ``TokenpakInstanceDown`` alert): the instance's accounting is down.
* **Bounded labels.** Provider, model, terminal state, token bucket and miss reason only; never a
  session, key, host or path. Terminal states and miss reasons are the row's ``Literal``
  vocabularies (anything else is ``other``); a process labels at most ``MODEL_LABELS`` distinct
  models per provider (later ones are ``other``) and cuts a model name at ``MODEL_CHARS``.
* **Counters only go up.** ``savings_usd`` is negative for a request whose cache write cost more
  than it saved; Prometheus counters cannot fall, so savings are two counters:
  ``tokenpak_saved_usd_total`` (rows that saved) and ``tokenpak_cache_overspend_usd_total``
  (rows that overspent, as a positive amount). Net savings, the report's figure, is their difference.
* ``prometheus_client`` is the optional ``team`` extra, imported only when metrics are asked for.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenpak_mitm.core.row import MISS_REASONS, PROVIDER_VERDICTS, TERMINAL_STATES, TelemetryRow

__all__ = [
    "INSTALL_HINT",
    "Backlog",
    "Metrics",
    "MetricsUnavailable",
    "ServeMetrics",
    "SpillRows",
    "parse_address",
    "require_prometheus",
]

logger = logging.getLogger("tokenpak.metrics")

INSTALL_HINT = "Prometheus metrics need the team extra: pip install 'tokenpak-mitm[team]'"
MODEL_LABELS = 50  # distinct model label values per provider and process; later models are "other"
MODEL_CHARS = 80
OTHER = "other"
RETRY_BIND_SECONDS = 10.0
# Seconds. TTFT of cached prompts is tens of ms; long generations run minutes.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BUCKETS = (("input", "input_tokens"), ("cache_read", "cache_read_tokens"), ("cache_write", "cache_write_tokens"), ("output", "output_tokens"))
_STATES = frozenset(TERMINAL_STATES)
_REASONS = frozenset(MISS_REASONS)
_VERDICTS = frozenset(PROVIDER_VERDICTS)


class MetricsUnavailable(RuntimeError):
    """prometheus_client (the team extra) is not installed."""


def require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError as e:
        raise MetricsUnavailable(INSTALL_HINT) from e


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ValueError with the reason."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            host = ""
    elif ":" in host:
        host = ""  # an IPv6 address without brackets: its port is ambiguous
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536 or any(c.isspace() or c in "/?#@" for c in host):
        raise ValueError(f"tokenpak_metrics must be host:port (e.g. 127.0.0.1:9464), not {value!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class Backlog:
    """A note the proxy sends the writer when these change: rows sent or queued and not yet
    acknowledged, and rows lost since the proxy started (written nowhere, counted by cause)."""

    rows: int
    lost: int = 0


@dataclass(frozen=True, slots=True)
class ServeMetrics:
    """A note to the writer: serve the metrics on ``address`` (host:port) from now on; None: stop."""

    address: str | None


class SpillRows:
    """Rows now waiting in spill files, counted incrementally (only bytes appended since the last
    look are read; a replaced or removed file is recounted)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self._seen: dict[Path, tuple[tuple[int, int], int, int]] = {}  # path -> (identity, bytes read, rows)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return sum(self._count(p) for p in self.paths)

    def _count(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            self._seen.pop(path, None)
            return 0
        try:
            st = os.fstat(fd)
            identity = (st.st_dev, st.st_ino)
            old = self._seen.get(path)
            start, rows = (old[1], old[2]) if old and old[0] == identity and old[1] <= st.st_size else (0, 0)
            os.lseek(fd, start, os.SEEK_SET)
            while chunk := os.read(fd, 1 << 20):
                rows += chunk.count(b"\n")
                start += len(chunk)
            self._seen[path] = (identity, start, rows)
            return rows
        finally:
            os.close(fd)


@dataclass(slots=True)
class _Series:
    tokens: list[Any]
    cost: Any
    saved: Any
    overspend: Any
    ttft: Any
    duration: Any
    requests: dict[str, Any] = field(default_factory=dict)  # by terminal state, as they occur


class Metrics:
    """The counters, histograms and gauges of one writer process, in their own registry."""

    def __init__(self, backlog: Callable[[], float] = lambda: 0.0, spill_rows: Callable[[], float] = lambda: 0.0,
                 lost: Callable[[], float] = lambda: 0.0) -> None:
        require_prometheus()
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
        from prometheus_client.core import CounterMetricFamily
        from prometheus_client.registry import Collector

        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: half the series, and Prometheus 2 ignores them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        pm = ("provider", "model")
        self.requests = Counter("tokenpak_requests", "LLM requests whose row was written, by terminal state.", (*pm, "state"), registry=r)
        self.tokens = Counter("tokenpak_tokens", "Tokens by exclusive bucket (input is fresh input only).", (*pm, "bucket"), registry=r)
        self.cost = Counter("tokenpak_cost_usd", "What the requests cost, in US dollars (unpriced requests add nothing).", pm, registry=r)
        self.saved = Counter("tokenpak_saved_usd", "Savings of the requests whose prompt caching saved money: cost without caching minus cost, in US dollars.", pm, registry=r)
        self.overspend = Counter("tokenpak_cache_overspend_usd", "What prompt caching cost beyond no caching on requests where it did not pay (negative savings, as a positive amount); net savings = saved - overspend.", pm, registry=r)
        self.miss_cost = Counter("tokenpak_cache_miss_cost_usd", "What cache misses cost beyond the cache read they could have been, by diagnosed reason, in US dollars.", (*pm, "reason"), registry=r)
        self.verdicts = Counter("tokenpak_provider_cache_verdicts", "Requests whose response carried the provider's own cache verdict "
                                "(cache diagnostics), by that verdict.", (*pm, "reason"), registry=r)
        self.ttft = Histogram("tokenpak_ttft_seconds", "Time to the first content token of streamed responses.", pm, buckets=TTFT_BUCKETS, registry=r)
        self.duration = Histogram("tokenpak_request_duration_seconds", "Request start to the response's last byte.", pm, buckets=DURATION_BUCKETS, registry=r)
        Gauge("tokenpak_writer_backlog_rows", "Rows handed to the store's writer and not yet durable (database or spill file).", registry=r).set_function(backlog)
        Gauge("tokenpak_spill_rows", "Rows waiting in spill files for the database to take them.", registry=r).set_function(spill_rows)

        class _Lost(Collector):  # the proxy's own count (it outlives a writer restart): a counter we read, not one we increment
            def collect(self) -> Iterable[Any]:
                yield CounterMetricFamily("tokenpak_rows_lost", "Requests whose row could be neither written nor spilled, since the proxy started "
                                          "(`tokenpak doctor` shows the causes).", value=lost())

        r.register(_Lost())
        self._models: dict[str, set[str]] = {}
        self._children: dict[tuple[str, str], _Series] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self._thread: Any = None
        self._closed = threading.Event()

    # -- counting (the store's writer thread) ------------------------------------------------------
    def model_label(self, provider: str, model: str | None) -> str:
        name = (model or "unknown")[:MODEL_CHARS]
        with self._lock:
            seen = self._models.setdefault(provider, set())
            if name in seen:
                return name
            if len(seen) >= MODEL_LABELS:
                return OTHER
            seen.add(name)
            return name

    def observe(self, rows: Iterable[TelemetryRow]) -> None:
        """Count rows that were just written to the database (each exactly once)."""
        for row in rows:
            try:
                self._observe(row)
            except Exception:  # noqa: BLE001 - a metric must never cost a row
                logger.exception("tokenpak: a row could not be counted in the metrics")

    def _series(self, provider: str, model: str) -> _Series:
        """The children of one (provider, model): ``labels()`` costs microseconds a call, so each
        label set is looked up once (bounded like the labels themselves)."""
        key = (provider, model)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = _Series(
                tokens=[self.tokens.labels(provider, model, bucket) for bucket, _ in BUCKETS],
                cost=self.cost.labels(provider, model), saved=self.saved.labels(provider, model),
                overspend=self.overspend.labels(provider, model), ttft=self.ttft.labels(provider, model),
                duration=self.duration.labels(provider, model),
            )
        return series

    def _observe(self, row: TelemetryRow) -> None:
        provider = row.provider or "unknown"
        model = self.model_label(provider, row.model)
        series = self._series(provider, model)
        state = row.terminal_state if row.terminal_state in _STATES else OTHER
        child = series.requests.get(state)
        if child is None:
            child = series.requests[state] = self.requests.labels(provider, model, state)
        child.inc()
        for counter, (_, name) in zip(series.tokens, BUCKETS):
            counter.inc(max(0, getattr(row, name) or 0))
        series.cost.inc(max(0.0, row.cost_usd or 0.0))
        savings = row.savings_usd or 0.0
        series.saved.inc(max(0.0, savings))
        series.overspend.inc(max(0.0, -savings))
        if row.cache_miss_reason is not None:
            reason = row.cache_miss_reason if row.cache_miss_reason in _REASONS else OTHER
            self.miss_cost.labels(provider, model, reason).inc(max(0.0, row.miss_cost_usd or 0.0))
        if row.provider_miss_reason is not None:
            said = row.provider_miss_reason if row.provider_miss_reason in _VERDICTS else OTHER
            self.verdicts.labels(provider, model, said).inc()
        if row.ttft_ms is not None and row.ttft_ms >= 0:
            series.ttft.observe(row.ttft_ms / 1000.0)
        if row.duration_ms is not None and row.duration_ms >= 0:
            series.duration.observe(row.duration_ms / 1000.0)

    # -- serving --------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on ``host:port`` from a daemon thread. A port that is taken costs one
        warning line; the bind is retried every ``RETRY_BIND_SECONDS`` until it works (the usual
        holder is this instance's previous writer, still flushing after a restart)."""
        if not self._bind(host, port, warn=True):
            threading.Thread(target=self._retry, args=(host, port), name="tokenpak-metrics-bind", daemon=True).start()

    def _bind(self, host: str, port: int, *, warn: bool) -> bool:
        from prometheus_client import start_http_server

        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            if warn:
                logger.warning("tokenpak: metrics not served: cannot listen on %s:%d (%s); the proxy carries on, retrying every %g s",
                               host, port, e.strerror or e, RETRY_BIND_SECONDS)
            return False
        if not warn:
            logger.warning("tokenpak: metrics now served on http://%s:%d/metrics", host, port)
        return True

    def _retry(self, host: str, port: int) -> None:
        while not self._closed.wait(RETRY_BIND_SECONDS):
            if self._bind(host, port, warn=False):
                if self._closed.is_set():
                    self.close()
                return

    def close(self) -> None:
        """Stop serving (the last scrape may have seen the final counts; a later one is refused)."""
        self._closed.set()
        server, self._server = self._server, None
        if server is not None:
            try:
                server.shutdown()
                server.server_close()
            except Exception:  # noqa: BLE001 - shutting down: nothing to save here
                pass
