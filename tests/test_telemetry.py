"""Row-building rules: terminal states, usage source, attribution and cost, without a proxy."""

from __future__ import annotations

import pytest

from tokenpak_mitm.core.account.telemetry import RequestRecord, build_row, cache_verdict, error_label, terminal_state_for_error
from tokenpak_mitm.core.observe.tracker import Extract
from tokenpak_mitm.core.observe.usage import Usage
from tokenpak_mitm.core.routes import Route

ANTHROPIC = Route("anthropic", "messages", "anthropic", inserts=True)


def record(**kw) -> RequestRecord:
    base = dict(request_key="k", route=ANTHROPIC, started_at=1.0, host="api.anthropic.com", path="/v1/messages", status_code=200)
    base.update(kw)
    return RequestRecord(**base)


def extract(usage: Usage, final: bool = True, **kw) -> Extract:
    return Extract(model="claude-sonnet-4-6", usage=usage, usage_final=final, **kw)


@pytest.mark.parametrize(
    "msg, state",
    [
        ("Client disconnected.", "client_disconnected"),
        ("stream reset by client (CANCEL)", "client_disconnected"),
        ("HTTP/1 protocol error: peer closed connection without sending complete message body (incomplete chunked read)", "upstream_disconnected"),
        ("server closed connection", "upstream_disconnected"),
        ("Connection killed.", "proxy_error"),
    ],
)
def test_error_messages_map_to_who_ended_the_flow(msg, state):
    assert terminal_state_for_error(msg) == state


@pytest.mark.parametrize(
    "msg, closed_by, state",
    [
        ("peer closed connection", "client", "client_disconnected"),  # an HTTP/2 client went away
        ("peer closed connection", "server", "upstream_disconnected"),
        ("peer closed connection", None, "upstream_disconnected"),
        ("Client disconnected.", "server", "client_disconnected"),  # the text names the side
    ],
)
def test_ambiguous_error_text_is_settled_by_which_connection_closed(msg, closed_by, state):
    assert terminal_state_for_error(msg, closed_by) == state


def test_proxy_is_credited_only_when_it_inserted():
    u = Usage(input_tokens=10, cache_read_tokens=5000, cache_write_tokens=0, output_tokens=5)
    assert build_row(record(extract=extract(u), markers_inserted=2))["cache_origin"] == "proxy"
    assert build_row(record(extract=extract(u), client_markers=1))["cache_origin"] == "client"
    # Cache reads with no marker from anyone: never credited to the proxy.
    assert build_row(record(extract=extract(u)))["cache_origin"] == "unknown"
    assert build_row(record(extract=extract(Usage(input_tokens=10, output_tokens=5))))["cache_origin"] == "none"


def test_disconnect_downgrades_final_usage_to_partial_without_terminal_event():
    x = extract(Usage(input_tokens=1, output_tokens=2), final=True)
    row = build_row(record(extract=x, error_msg="Client disconnected."))
    assert row["terminal_state"] == "client_disconnected" and row["usage_source"] == "partial"


def test_a_client_closing_after_the_terminating_event_completed_the_stream():
    # Issue 26 item 10: the OpenAI SDK closes right after [DONE], before the body's last chunk.
    chat = Route("openai", "chat.completions", "openai_chat")
    x = Extract(model="gpt-4.1", usage=Usage(input_tokens=12, output_tokens=2), usage_final=True, terminal_seen=True)
    row = build_row(record(route=chat, stream=True, extract=x, error_msg="Client disconnected.", closed_by="client"))
    assert (row["terminal_state"], row["usage_source"], row["error"]) == ("completed", "final", None)
    x = Extract(model="gpt-4.1", usage=Usage(input_tokens=12, output_tokens=2), usage_final=True, terminal_seen=False)
    row = build_row(record(route=chat, stream=True, extract=x, error_msg="Client disconnected.", closed_by="client"))
    assert (row["terminal_state"], row["usage_source"]) == ("client_disconnected", "partial")  # before the end: still a disconnect
    x = Extract(model="gpt-4.1", usage=Usage(input_tokens=12, output_tokens=2), usage_final=True, terminal_seen=True)
    row = build_row(record(route=chat, stream=True, extract=x, error_msg="peer closed connection", closed_by="server"))
    assert row["terminal_state"] == "upstream_disconnected"  # only the client's own close is forgiven


def test_absent_usage_is_null_not_zero_and_unpriced():
    row = build_row(record(extract=Extract(model="claude-sonnet-4-6")))
    assert row["usage_source"] == "absent"
    assert row["input_tokens"] is None and row["output_tokens"] is None and row["cost_usd"] is None


def test_unknown_model_has_null_cost():
    row = build_row(record(extract=Extract(model="claude-imaginary-9", usage=Usage(input_tokens=5, output_tokens=5), usage_final=True)))
    assert row["cost_usd"] is None and row["savings_usd"] is None


def test_negative_savings_when_a_write_is_not_read():
    u = Usage(input_tokens=10, cache_read_tokens=0, cache_write_tokens=4000, cache_write_5m_tokens=4000, cache_write_1h_tokens=0, output_tokens=5)
    row = build_row(record(extract=extract(u), markers_inserted=1))
    assert row["savings_usd"] == pytest.approx(-(4000 * (3.75 - 3.0)) / 1e6)
    assert row["cost_usd"] == pytest.approx((10 * 3 + 4000 * 3.75 + 5 * 15) / 1e6)


def test_one_hour_writes_are_priced_at_twice_input():
    u = Usage(input_tokens=0, cache_read_tokens=0, cache_write_tokens=1000, cache_write_5m_tokens=0, cache_write_1h_tokens=1000, output_tokens=0)
    row = build_row(record(extract=extract(u), markers_inserted=1))
    assert row["cost_usd"] == pytest.approx(1000 * 6.0 / 1e6)


def test_count_tokens_is_not_billable():
    route = Route("anthropic", "messages.count_tokens", "anthropic", billable=False)
    row = build_row(record(route=route, extract=Extract(usage=Usage(input_tokens=40))))
    assert row["billable"] == 0 and row["cost_usd"] is None


def test_error_text_is_redacted():
    row = build_row(record(extract=Extract(), error_msg="upstream said: invalid x-api-key sk-ant-api03-abcdefghijklmnop"))
    assert "sk-ant-api03" not in row["error"]


@pytest.mark.parametrize(
    "row, verdict",
    [
        ({"input_tokens": 1, "cache_read_tokens": 10}, "hit"),
        ({"input_tokens": 1, "cache_read_tokens": 0, "cache_write_tokens": 10}, "write"),
        ({"input_tokens": 1, "cache_read_tokens": 0, "cache_write_tokens": 0, "markers_inserted": 1}, "miss"),
        ({"input_tokens": 1, "cache_read_tokens": 0, "cache_write_tokens": 0}, "none"),
        ({"input_tokens": None, "cache_read_tokens": None}, "none"),
    ],
)
def test_cache_verdict(row, verdict):
    assert cache_verdict(row) == verdict


def test_an_error_row_takes_its_model_from_the_request():
    row = build_row(record(status_code=529, extract=Extract(error_type="overloaded_error"), request_model="claude-sonnet-4-6"))
    assert row["model"] == "claude-sonnet-4-6" and row["terminal_state"] == "error_response"
    assert error_label(row) == "529 overloaded_error"
    assert row["cost_usd"] is None  # a 5xx is not "rejected": its cost stays unknown, not $0
    answered = build_row(record(extract=extract(Usage(input_tokens=1, output_tokens=1)), request_model="asked-for-model"))
    assert answered["model"] == "claude-sonnet-4-6"  # the response's model wins


@pytest.mark.parametrize("status", [400, 401, 404, 413, 429])
def test_a_rejected_request_without_usage_costs_zero_not_unknown(status):
    row = build_row(record(status_code=status, extract=Extract(error_type="rate_limit_error"), request_model="claude-sonnet-4-6"))
    assert row["cost_usd"] == 0.0 and row["savings_usd"] == 0.0 and row["price_version"] == "unbilled"
    assert error_label(row) == f"{status} rate_limit_error"


def test_error_label_for_states_without_status():
    assert error_label({"terminal_state": "completed", "status_code": 200}) is None
    assert error_label({"terminal_state": "error_response", "status_code": 500, "error": "http_500"}) == "500"
    assert error_label({"terminal_state": "client_disconnected", "status_code": 200, "error": "Client disconnected."}) == "Client disconnected."


# -- issue 15, point 8 ----------------------------------------------------------------------------


def _frames_row(frames: list[bytes], **kw) -> dict:
    from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker

    t = AnthropicTracker()
    for f in frames:
        t.feed_frame(f)
    return build_row(record(stream=True, extract=t.extract, **kw))


_START = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"claude-sonnet-4-6","usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
_DELTA = b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":42}}\n\n'
_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def test_usage_of_only_malformed_values_is_absent_not_final():
    bad = b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":"x","output_tokens":-1}}}\n\n'
    bad_delta = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":"many"}}\n\n'
    row = _frames_row([bad, bad_delta, _STOP])
    assert row["input_tokens"] is None and row["output_tokens"] is None
    assert row["usage_source"] == "absent"


def test_a_reordered_stream_keeps_message_delta_final_output_tokens():
    row = _frames_row([_DELTA, _START, _STOP])
    assert row["output_tokens"] == 42 and row["input_tokens"] == 10 and row["usage_source"] == "final"


def test_an_anthropic_stream_without_message_delta_or_stop_is_not_completed():
    row = _frames_row([_START])
    assert row["terminal_state"] == "upstream_disconnected" and row["usage_source"] == "partial"
    assert _frames_row([_START, _DELTA, _STOP])["terminal_state"] == "completed"
    assert _frames_row([_START, _DELTA])["terminal_state"] == "completed"  # final usage arrived


def test_frames_naming_their_kind_only_in_the_event_line():
    start = b'event: message_start\ndata: {"message":{"id":"m","usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
    delta = b'event: message_delta\ndata: {"delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}\n\n'
    row = _frames_row([start, delta, b"event: message_stop\ndata: {}\n\n"])
    assert (row["input_tokens"], row["output_tokens"], row["usage_source"], row["terminal_state"]) == (10, 7, "final", "completed")
    err = b'event: error\ndata: {"error":{"type":"overloaded_error","message":"busy"}}\n\n'
    row = _frames_row([start, err])
    assert row["terminal_state"] == "stream_error" and row["error"] == "overloaded_error"


def test_proxy_shutdown_is_a_terminal_state_with_partial_usage():
    x = extract(Usage(input_tokens=5, output_tokens=3))
    row = build_row(record(stream=True, extract=x, error_msg="Connection killed.", terminal_override="proxy_shutdown"))
    assert row["terminal_state"] == "proxy_shutdown" and row["usage_source"] == "partial"


def test_the_requests_own_secret_values_leave_the_error_text():
    x = extract(Usage(), final=False, error_type="gw-token-of-no-shape-123 rejected")
    row = build_row(record(status_code=401, extract=x, known_secrets=("gw-token-of-no-shape-123",)))
    assert "gw-token" not in row["error"]


def test_a_body_not_parsed_says_why():
    row = build_row(record(observe_note="response_body_too_large"))
    assert row["error"] == "response_body_too_large" and row["terminal_state"] == "completed" and row["usage_source"] == "absent"


def test_the_providers_cache_verdict_is_copied_to_the_row():
    rec = RequestRecord(request_key="k", route=Route("anthropic", "messages", "anthropic"), started_at=0.0, host="h", path="/v1/messages")
    rec.extract.provider_miss_reason, rec.extract.provider_missed_tokens = "system_changed", 1234
    row = build_row(rec)
    assert (row.provider_miss_reason, row.provider_missed_tokens) == ("system_changed", 1234)
    assert build_row(RequestRecord(request_key="j", route=rec.route, started_at=0.0, host="h", path="/")).provider_miss_reason is None
