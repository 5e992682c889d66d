"""OpenTelemetry export: real OTLP/HTTP protobuf arrives with the GenAI convention VALUES, and a
missing or stalled collector never raises into, or blocks, the caller."""

from __future__ import annotations

import gzip
import logging
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tokenpak_mitm.store.otel import TOKEN_BUCKETS, OtelExporter, OtelUnavailable, inclusive_input_tokens, span_attributes, span_name

STARTED = 1_767_000_000.25
OK_ROW: dict[str, Any] = {
    "request_key": "flow-1", "started_at": STARTED, "provider": "anthropic", "api": "messages", "route_class": "claude-code",
    "host": "api.anthropic.com", "model": "claude-sonnet-4-6", "stream": 1, "status_code": 200, "terminal_state": "completed",
    "stop_reason": "end_turn", "input_tokens": 10, "cache_read_tokens": 100, "cache_write_tokens": 5, "output_tokens": 7,
    "reasoning_tokens": None, "usage_source": "final", "ttft_ms": 250.0, "duration_ms": 900.0, "response_id": "msg_01",
    "cost_usd": 0.0123, "savings_usd": 0.0042, "cache_origin": "proxy", "markers_inserted": 2, "cache_decision": "inserted",
}
ERROR_ROW: dict[str, Any] = {
    **OK_ROW, "request_key": "flow-2", "status_code": 529, "terminal_state": "error_response", "stop_reason": None,
    "error": "overloaded_error", "usage_source": "absent", "input_tokens": None, "cache_read_tokens": None,
    "cache_write_tokens": None, "output_tokens": None, "ttft_ms": None, "duration_ms": 120.0, "response_id": None,
    "cost_usd": None, "savings_usd": None, "cache_origin": "none", "stream": 0,
}


class Collector(ThreadingHTTPServer):
    """A loopback OTLP/HTTP receiver decoding the protobuf bodies; ``hold`` stalls every answer."""

    daemon_threads = True

    def __init__(self, hold: bool = False) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.answered = 0
        super().__init__(("127.0.0.1", 0), _CollectorHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        assert self.headers.get("content-type") == "application/x-protobuf"
        if self.path == "/v1/traces":
            self.server.traces.append(ExportTraceServiceRequest.FromString(body))
        elif self.path == "/v1/metrics":
            self.server.metrics.append(ExportMetricsServiceRequest.FromString(body))
        self.server.arrived.set()
        self.server.release.wait(60)
        self.send_response(200 if self.path in ("/v1/traces", "/v1/metrics") else 404)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
        self.server.answered += 1

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.shutdown()


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind)


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _spans(c: Collector) -> dict[str, Span]:
    return {_attrs(s.attributes)["tokenpak.request_key"]: s
            for req in c.traces for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans}


def _histograms(c: Collector) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for req in c.metrics:
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend(m.histogram.data_points)
    return out


def test_span_and_metric_values(collector: Collector) -> None:
    exporter = OtelExporter(collector.url)
    exporter.export(OK_ROW)
    exporter.export(ERROR_ROW)
    exporter.shutdown()  # flushes both signals
    spans = _spans(collector)
    ok, err = spans["flow-1"], spans["flow-2"]
    assert ok.name == "chat claude-sonnet-4-6" and ok.kind == Span.SPAN_KIND_CLIENT
    assert ok.start_time_unix_nano == int(STARTED * 1e9) and ok.end_time_unix_nano - ok.start_time_unix_nano == 900_000_000
    a = _attrs(ok.attributes)
    assert a["gen_ai.usage.input_tokens"] == 115  # inclusive: 10 fresh + 100 cache read + 5 cache write
    assert a["gen_ai.usage.cache_read.input_tokens"] == 100 and a["gen_ai.usage.cache_creation.input_tokens"] == 5
    assert a["gen_ai.usage.output_tokens"] == 7
    assert a["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.25)
    assert a["gen_ai.provider.name"] == "anthropic" and a["gen_ai.system"] == "anthropic" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "claude-sonnet-4-6"
    assert a["gen_ai.response.id"] == "msg_01" and a["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert a["tokenpak.cost_usd"] == pytest.approx(0.0123) and a["tokenpak.savings_usd"] == pytest.approx(0.0042)
    assert (a["tokenpak.cache_origin"], a["tokenpak.terminal_state"], a["tokenpak.usage_source"]) == ("proxy", "completed", "final")
    assert ok.status.code == Status.STATUS_CODE_UNSET and "error.type" not in a
    e = _attrs(err.attributes)
    assert err.status.code == Status.STATUS_CODE_ERROR and e["error.type"] == "overloaded_error"
    assert not any(k.startswith("gen_ai.usage.") for k in e) and "tokenpak.cost_usd" not in e  # unknown is absent, not 0
    resource = _attrs(collector.traces[0].resource_spans[0].resource.attributes)
    assert resource["service.name"] == "tokenpak-mitm"

    hist = _histograms(collector)
    usage = {_attrs(p.attributes)["gen_ai.token.type"]: p for p in hist["gen_ai.client.token.usage"]}
    assert set(usage) == {"input", "output"}  # the error row reported no usage, so no points
    assert (usage["input"].sum, usage["input"].count, usage["output"].sum) == (115, 1, 7)
    assert list(usage["input"].explicit_bounds) == list(TOKEN_BUCKETS)
    assert _attrs(usage["input"].attributes)["gen_ai.request.model"] == "claude-sonnet-4-6"
    durations = {_attrs(p.attributes).get("error.type"): p for p in hist["gen_ai.client.operation.duration"]}
    assert durations[None].sum == pytest.approx(0.9) and durations["overloaded_error"].sum == pytest.approx(0.12)


def test_unreachable_collector_costs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # bound but not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        exporter = OtelExporter(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=1.0, schedule_delay=0.05, export_interval=0.1)
        with caplog.at_level(logging.DEBUG):
            for n in range(200):
                exporter.export({**OK_ROW, "request_key": f"k{n}"})  # must not raise
            exporter.shutdown()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].name == "tokenpak.otel", [r.getMessage() for r in warnings]
    assert "rows are still stored locally" in warnings[0].getMessage()


def test_stalled_collector_does_not_block_export() -> None:
    """export() returns while the collector holds an export request open: no network on the caller."""
    collector = Collector(hold=True)
    exporter = OtelExporter(collector.url, timeout=30.0, schedule_delay=0.05, export_interval=0.1)
    try:
        exporter.export(OK_ROW)
        assert collector.arrived.wait(30)  # the SDK's worker is now stuck in an export
        done = threading.Event()

        def caller() -> None:
            for n in range(100):
                exporter.export({**OK_ROW, "request_key": f"more-{n}"})
            done.set()

        threading.Thread(target=caller, daemon=True).start()
        assert done.wait(30)
        assert collector.answered == 0 and not collector.release.is_set()  # still stalled while export() returned
    finally:
        collector.release.set()
        exporter.shutdown()
        collector.shutdown()
    assert "more-99" in _spans(collector)  # queued rows were delivered once the collector answered


def test_missing_extra_gives_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(OtelUnavailable, match=r"pip install 'tokenpak-mitm\[otel\]'"):
        OtelExporter("http://127.0.0.1:4318")


def test_attribute_rules() -> None:
    assert span_name({"api": "generate_content", "model": "gemini-2.5-pro"}) == "generate_content gemini-2.5-pro"
    assert span_name({"api": "chat.completions", "model": None}) == "chat"
    assert inclusive_input_tokens({"input_tokens": 3, "cache_read_tokens": None, "cache_write_tokens": 4, "usage_source": "partial"}) == 7
    assert inclusive_input_tokens({"usage_source": "absent", "input_tokens": 3}) is None
    attrs = span_attributes({**OK_ROW, "provider": "gemini", "api": "generate_content"})
    assert attrs["gen_ai.provider.name"] == "gcp.gemini" and attrs["gen_ai.system"] == "gemini"
    assert None not in attrs.values()


def test_export_after_shutdown_is_ignored(collector: Collector) -> None:
    exporter = OtelExporter(collector.url)
    exporter.shutdown()
    exporter.export(OK_ROW)
    exporter.shutdown()
    assert _spans(collector) == {}


def test_session_and_miss_attributes_reach_the_collector_but_not_the_metrics(collector: Collector) -> None:
    row = {**OK_ROW, "request_key": "flow-s", "session_id": "cc-1", "session_source": "claude-code", "project": "billing",
           "turn": 3, "cache_miss_reason": "prefix_changed", "miss_section": "system", "miss_block": 0,
           "miss_change": "volatile", "miss_expected_tokens": 3000, "miss_cost_usd": 0.0104, "cache_warm_until": STARTED + 300}
    exporter = OtelExporter(collector.url)
    exporter.export(row)
    exporter.shutdown()
    a = _attrs(_spans(collector)["flow-s"].attributes)
    assert (a["session.id"], a["tokenpak.session_source"], a["tokenpak.project"], a["tokenpak.turn"]) == ("cc-1", "claude-code", "billing", 3)
    assert (a["tokenpak.cache_miss_reason"], a["tokenpak.miss_section"], a["tokenpak.miss_block"], a["tokenpak.miss_change"]) == (
        "prefix_changed", "system", 0, "volatile")
    assert a["tokenpak.miss_cost_usd"] == pytest.approx(0.0104) and a["tokenpak.cache_warm_until"] == pytest.approx(STARTED + 300)
    for points in _histograms(collector).values():
        assert all("session.id" not in _attrs(p.attributes) for p in points)  # no per-session metric series
