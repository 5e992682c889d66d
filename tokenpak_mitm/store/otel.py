"""OpenTelemetry export of telemetry rows: one span and a few metric points per LLM request.

Why it looks like this:

* The addon calls ``export(row)`` on mitmproxy's event loop, once per request, after the response
  hook. It must never block or raise there, so spans go to a ``BatchSpanProcessor`` and metrics to
  in-memory histograms read by a ``PeriodicExportingMetricReader``; all network I/O happens on
  the SDK's worker threads.
* An unreachable collector must cost nothing but one warning: the OTLP exporters are wrapped so a
  failed export logs once (and once more when it recovers), and the SDK's own per-batch error
  logs for these exporters are muted.
* Names follow the OpenTelemetry GenAI semantic conventions. Their ``gen_ai.usage.input_tokens``
  is INCLUSIVE of cache reads and writes, while our rows store exclusive buckets (fresh input
  only), so the attribute is ``input + cache_read + cache_write``; the cache buckets are also
  reported on their own. Rows keep a single model name (the response's, or the URL's for Gemini),
  which is reported as both request and response model.
* The OpenTelemetry packages are an optional extra (``tokenpak-mitm[otel]``), imported only when
  an exporter is built.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from tokenpak_mitm import __version__
from tokenpak_mitm.core.row import TelemetryRow

__all__ = ["OtelExporter", "OtelUnavailable", "span_name", "span_attributes", "inclusive_input_tokens"]

logger = logging.getLogger("tokenpak.otel")

OPERATIONS = {"messages": "chat", "chat.completions": "chat", "responses": "chat", "generate_content": "generate_content",
              "messages.count_tokens": "count_tokens"}
PROVIDER_NAMES = {"anthropic": "anthropic", "openai": "openai", "gemini": "gcp.gemini"}  # gen_ai.provider.name
LEGACY_SYSTEMS = {"anthropic": "anthropic", "openai": "openai", "gemini": "gemini"}  # gen_ai.system (older name)
# Bucket boundaries recommended by the GenAI metric conventions.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_MUTED_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.common.http",
)
INSTALL_HINT = "OpenTelemetry export needs the otel extra: pip install 'tokenpak-mitm[otel]'"


class OtelUnavailable(RuntimeError):
    """The optional OpenTelemetry packages are not installed."""


RowLike = TelemetryRow | Mapping[str, Any]


def _row(row: RowLike) -> TelemetryRow:
    return row if isinstance(row, TelemetryRow) else TelemetryRow.from_stored(row)


def operation_name(row: RowLike) -> str:
    api = _row(row).api
    return OPERATIONS.get(api or "", api or "chat")


def span_name(row: RowLike) -> str:
    """``{gen_ai.operation.name} {gen_ai.request.model}``, e.g. ``chat claude-sonnet-4-6``."""
    r = _row(row)
    return f"{operation_name(r)} {r.model}" if r.model else operation_name(r)


def inclusive_input_tokens(row: RowLike) -> int | None:
    """GenAI ``input_tokens``: fresh + cache read + cache write (None when nothing was reported)."""
    r = _row(row)
    parts = [r.input_tokens, r.cache_read_tokens, r.cache_write_tokens]
    if r.usage_source == "absent" or all(p is None for p in parts):
        return None
    return sum(p or 0 for p in parts)


def _failed(row: TelemetryRow) -> bool:
    return (row.terminal_state or "completed") != "completed"


def span_attributes(row: RowLike) -> dict[str, Any]:
    """Span attributes for one row; None values are left out (OpenTelemetry rejects them)."""
    r = _row(row)
    provider = r.provider or ""
    ttft = r.ttft_ms
    usage = r.usage_source != "absent"
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation_name(r),
        "gen_ai.provider.name": PROVIDER_NAMES.get(provider, provider or None),
        "gen_ai.system": LEGACY_SYSTEMS.get(provider, provider or None),
        "gen_ai.request.model": r.model,
        "gen_ai.response.model": r.model,
        "gen_ai.response.id": r.response_id,
        "gen_ai.response.finish_reasons": [r.stop_reason] if r.stop_reason else None,
        "gen_ai.usage.input_tokens": inclusive_input_tokens(r),
        "gen_ai.usage.output_tokens": r.output_tokens if usage else None,
        "gen_ai.usage.cache_read.input_tokens": r.cache_read_tokens if usage else None,
        "gen_ai.usage.cache_creation.input_tokens": r.cache_write_tokens if usage else None,
        "gen_ai.usage.reasoning.output_tokens": r.reasoning_tokens if usage else None,
        "gen_ai.response.time_to_first_chunk": None if ttft is None else ttft / 1000.0,
        "server.address": r.host,
        "http.response.status_code": r.status_code,
        "error.type": (r.error or r.terminal_state) if _failed(r) else None,
        "tokenpak.cost_usd": r.cost_usd,
        "tokenpak.savings_usd": r.savings_usd,
        "tokenpak.cache_origin": r.cache_origin,
        "tokenpak.terminal_state": r.terminal_state,
        "tokenpak.usage_source": r.usage_source,
        "tokenpak.route_class": r.route_class,
        "tokenpak.cache_decision": r.cache_decision,
        "tokenpak.markers_inserted": r.markers_inserted,
        "tokenpak.stream": None if r.stream is None else bool(r.stream),
        "tokenpak.price_version": r.price_version,
        "tokenpak.request_key": r.request_key or None,
        "session.id": r.session_id,
        "tokenpak.session_id": r.session_id,
        "tokenpak.session_source": r.session_source,
        "tokenpak.project": r.project,
        "tokenpak.turn": r.turn,
        "tokenpak.cache_miss_reason": r.cache_miss_reason,
        "tokenpak.miss_section": r.miss_section,
        "tokenpak.miss_block": r.miss_block,
        "tokenpak.miss_change": r.miss_change,
        "tokenpak.miss_expected_tokens": r.miss_expected_tokens,
        "tokenpak.miss_cost_usd": r.miss_cost_usd,
        "tokenpak.provider_miss_reason": r.provider_miss_reason,
        "tokenpak.provider_missed_tokens": r.provider_missed_tokens,
        "tokenpak.cache_warm_until": r.cache_warm_until,
    }
    return {k: v for k, v in attrs.items() if v is not None}


def _metric_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model", "server.address")
    return {k: attrs[k] for k in keep if k in attrs}


def _signal_url(endpoint: str, signal: str) -> str:
    base = endpoint.rstrip("/")
    for suffix in ("/v1/traces", "/v1/metrics"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return f"{base}/v1/{signal}"


class _MuteFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


class _FailureReporter:
    """One warning when exports start failing, one info line when they work again."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.failing = False
        self.failures = 0
        self._lock = threading.Lock()

    def report(self, signal: str, ok: bool, error: BaseException | None = None) -> None:
        with self._lock:
            if ok:
                if self.failing:
                    logger.info("tokenpak: OpenTelemetry collector %s reachable again", self.endpoint)
                self.failing = False
                return
            self.failures += 1
            if self.failing:
                return
            self.failing = True
        detail = f" ({type(error).__name__}: {error})" if error else ""
        logger.warning("tokenpak: cannot export %s to the OpenTelemetry collector %s%s; rows are still stored "
                       "locally, and further failures are not logged", signal, self.endpoint, detail)


def _wrap_exporters(reporter: _FailureReporter) -> tuple[type, type]:
    """Exporter wrappers that report failures once and never raise into the SDK threads."""
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class QuietSpanExporter(SpanExporter):
        def __init__(self, inner: SpanExporter) -> None:
            self._inner = inner

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            try:
                result = self._inner.export(spans)
                reporter.report("traces", result == SpanExportResult.SUCCESS)
                return result
            except Exception as e:
                reporter.report("traces", False, e)
                return SpanExportResult.FAILURE

        def shutdown(self) -> None:
            try:
                self._inner.shutdown()
            except Exception:
                logger.debug("span exporter shutdown failed", exc_info=True)

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self._inner.force_flush(timeout_millis)

    class QuietMetricExporter(MetricExporter):
        def __init__(self, inner: MetricExporter) -> None:
            super().__init__(preferred_temporality=inner._preferred_temporality, preferred_aggregation=inner._preferred_aggregation)
            self._inner = inner

        def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
            try:
                result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
                reporter.report("metrics", result == MetricExportResult.SUCCESS)
                return result
            except Exception as e:
                reporter.report("metrics", False, e)
                return MetricExportResult.FAILURE

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return self._inner.force_flush(timeout_millis)

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            try:
                self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)
            except Exception:
                logger.debug("metric exporter shutdown failed", exc_info=True)

    return QuietSpanExporter, QuietMetricExporter


def require_otel() -> None:
    """Raise ``OtelUnavailable`` (with the install hint) unless the otel extra is installed."""
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as e:
        raise OtelUnavailable(f"{INSTALL_HINT} ({e})") from e


class OtelExporter:
    """Send telemetry rows to an OTLP/HTTP collector (e.g. ``http://127.0.0.1:4318``).

    ``export`` only records in memory and queues; ``shutdown`` flushes, bounded by ``timeout``.
    """

    def __init__(self, endpoint_url: str, *, timeout: float = 5.0, export_interval: float = 15.0, schedule_delay: float = 2.0) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError as e:
            raise OtelUnavailable(f"{INSTALL_HINT} ({e})") from e
        self.endpoint = endpoint_url.rstrip("/")
        self.timeout = timeout
        self._kind, self._status, self._error_code = SpanKind.CLIENT, Status, StatusCode.ERROR
        for name in _MUTED_LOGGERS:
            if not any(isinstance(f, _MuteFilter) for f in logging.getLogger(name).filters):
                logging.getLogger(name).addFilter(_MuteFilter())
        self._reporter = _FailureReporter(self.endpoint)
        quiet_spans, quiet_metrics = _wrap_exporters(self._reporter)
        resource = Resource.create({"service.name": "tokenpak-mitm", "service.version": __version__})
        self._tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._tracer_provider.add_span_processor(BatchSpanProcessor(
            quiet_spans(OTLPSpanExporter(endpoint=_signal_url(self.endpoint, "traces"), timeout=timeout)),
            max_queue_size=8192, schedule_delay_millis=schedule_delay * 1000, export_timeout_millis=timeout * 1000,
        ))
        self._tracer = self._tracer_provider.get_tracer("tokenpak_mitm", __version__)
        reader = PeriodicExportingMetricReader(
            quiet_metrics(OTLPMetricExporter(endpoint=_signal_url(self.endpoint, "metrics"), timeout=timeout)),
            export_interval_millis=export_interval * 1000, export_timeout_millis=timeout * 1000,
        )
        self._meter_provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
        meter = self._meter_provider.get_meter("tokenpak_mitm", __version__)
        self._token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._closed = False

    def export(self, row: RowLike) -> None:
        """Queue one row as a span and metric points; never raises, never does network I/O."""
        if self._closed:
            return
        try:
            self._export(row)
        except Exception:
            logger.warning("tokenpak: could not convert a row for OpenTelemetry; skipped", exc_info=True)

    def _export(self, row: RowLike) -> None:
        row = _row(row)
        attrs = span_attributes(row)
        start_ns = int(float(row.started_at) * 1e9)
        duration_ms = row.duration_ms
        end_ns = start_ns + int(float(duration_ms) * 1e6) if duration_ms is not None else None
        span = self._tracer.start_span(span_name(row), kind=self._kind, start_time=start_ns, attributes=attrs)
        if _failed(row):
            span.set_status(self._status(self._error_code, str(attrs.get("error.type", row.terminal_state))))
        span.end(end_time=end_ns)
        metric_attrs = _metric_attributes(attrs)
        input_tokens = attrs.get("gen_ai.usage.input_tokens")
        if input_tokens is not None:
            self._token_usage.record(input_tokens, {**metric_attrs, "gen_ai.token.type": "input"})
        output_tokens = attrs.get("gen_ai.usage.output_tokens")
        if output_tokens is not None:
            self._token_usage.record(output_tokens, {**metric_attrs, "gen_ai.token.type": "output"})
        if duration_ms is not None:
            if "error.type" in attrs:
                metric_attrs["error.type"] = attrs["error.type"]
            self._duration.record(float(duration_ms) / 1000.0, metric_attrs)

    def shutdown(self) -> None:
        """Flush and stop; bounded (an unreachable collector delays exit by at most ~2x timeout)."""
        if self._closed:
            return
        self._closed = True
        workers = [threading.Thread(target=self._quietly, args=(fn,), name=f"tokenpak-otel-{n}", daemon=True)
                   for n, fn in (("traces", self._tracer_provider.shutdown), ("metrics", self._meter_provider.shutdown))]
        for w in workers:
            w.start()
        for w in workers:
            w.join(2 * self.timeout + 1)

    @staticmethod
    def _quietly(fn: Any) -> None:
        try:
            fn()
        except Exception:
            logger.debug("OpenTelemetry shutdown step failed", exc_info=True)
