"""One request's accounting (accounting.py): the session columns, the row, the fallbacks, and the
two halves sent by key as the writer process receives them. Pure: no proxy, no store."""

from __future__ import annotations

import json
import time

from tokenpak_mitm.core.account.accounting import Accountant, Finished, SessionFacts, blind_until, console_line, minimal_row
from tokenpak_mitm.core.account.telemetry import RequestRecord, build_row, outcome
from tokenpak_mitm.core.observe.tracker import Extract
from tokenpak_mitm.core.observe.usage import Usage
from tokenpak_mitm.core.routes import classify

ROUTE = classify("POST", "api.anthropic.com", "/v1/messages")
SYSTEM = "You are a careful assistant. " * 400  # ~3,000 tokens: above every minimum


def body(turns: int) -> bytes:
    messages = []
    for i in range(turns):
        messages += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    messages.append({"role": "user", "content": f"question {turns}"})  # each turn extends the one before
    return json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "system": SYSTEM, "messages": messages}).encode()


def record(key: str, usage: Usage, started: float) -> RequestRecord:
    assert ROUTE is not None
    rec = RequestRecord(request_key=key, route=ROUTE, started_at=started, host="api.anthropic.com", path="/v1/messages",
                        status_code=200)
    rec.extract = Extract(model="claude-sonnet-4-6", usage=usage, usage_final=True, terminal_seen=True)
    return rec


def facts(b: bytes, started: float, headers: dict[str, str] | None = None) -> SessionFacts:
    return SessionFacts("anthropic", headers or {}, "scope", started, b)


def test_two_turns_by_key_share_a_session_and_the_miss_is_diagnosed():
    acc = Accountant()
    t0 = 1_800_000_000.0
    acc.open("a", facts(body(1), t0))
    rec = record("a", Usage(input_tokens=10, cache_write_tokens=3000), t0)
    first = acc.close(Finished(rec, outcome(rec), t0 + 0.5, t0 + 1))
    acc.open("b", facts(body(2), t0 + 30))
    rec = record("b", Usage(input_tokens=3100, cache_read_tokens=0, output_tokens=3), t0 + 30)  # read nothing: a miss
    second = acc.close(Finished(rec, outcome(rec), t0 + 30.5, t0 + 31))
    assert first.session_id == second.session_id and (first.turn, second.turn) == (1, 2)
    assert (first.cache_miss_reason, second.cache_miss_reason) == ("cold", "not_marked")  # no marker was sent
    assert second.cost_usd is not None and second.cost_usd > 0


def test_a_request_whose_begin_never_came_still_gets_its_full_row():
    acc = Accountant()
    rec = record("x", Usage(input_tokens=5, output_tokens=2), 1.0)
    row = acc.close(Finished(rec, outcome(rec), None, 2.0))
    assert row == build_row(rec, outcome(rec), {})  # the same row, without session columns
    assert row.session_id is None and row.output_tokens == 2


def test_a_row_that_cannot_be_built_is_the_minimal_row_with_its_session():
    acc = Accountant()
    acc.open("k", facts(body(0), 1.0, {"x-tokenpak-session": "mine"}))
    rec = record("k", Usage(input_tokens=5), 1.0)
    rec.extract = None  # type: ignore[assignment]  # a bug upstream of the row
    row = acc.close(Finished(rec, outcome(record("k", Usage(input_tokens=5), 1.0)), None, 2.0))
    assert row.terminal_state == "proxy_error" and row.error == "telemetry_error"
    assert acc.failures >= 1


def test_open_requests_are_bounded():
    acc = Accountant(max_open=3)
    for i in range(10):
        acc.open(f"k{i}", facts(body(0), float(i)))
    assert list(acc._open) == ["k7", "k8", "k9"]


def test_the_explicit_session_header_names_the_session():
    acc = Accountant()
    acc.open("k", facts(body(0), 1.0, {"x-tokenpak-session": "build-42", "x-tokenpak-project": "web"}))
    rec = record("k", Usage(input_tokens=5), 1.0)
    row = acc.close(Finished(rec, outcome(rec), None, 2.0))
    assert (row.session_id, row.session_source, row.project) == ("build-42", "header", "web")


def test_blind_until_covers_the_longest_ttl_after_the_last_request():
    now = time.time()
    assert blind_until(None, now) is None
    assert blind_until(now - 7200, now) is None
    assert blind_until(now - 60, now) == now - 60 + 3600


def test_the_console_line_reads_the_row():
    rec = record("k", Usage(input_tokens=1, cache_read_tokens=1, cache_write_tokens=1, output_tokens=1), 1.0)
    rec.status_code = 529
    line = console_line(build_row(rec))
    assert "in=1 cache_read=1 cache_write=1 out=1" in line and "error_response" in line and "cache=hit" in line


def test_the_minimal_row_is_a_row():
    assert ROUTE is not None
    rec = RequestRecord(request_key="k", route=ROUTE, started_at=1.0, host="api.anthropic.com", path="/v1/messages")
    r = minimal_row(rec)
    assert r.terminal_state == "proxy_error" and r.usage_source == "absent"


def test_what_crosses_to_the_writer_loads_equal_to_what_was_sent():
    # wire.by_fields: records pickle as their field values; every field must come back.
    import dataclasses
    import pickle

    from tokenpak_mitm.core.observe.usage import ExtraIteration

    rec = record("k", Usage(**{f.name: i + 1 for i, f in enumerate(dataclasses.fields(Usage))}), 1.5)
    for i, f in enumerate(dataclasses.fields(RequestRecord)):
        if f.name not in ("request_key", "route", "extract", "started_at"):
            setattr(rec, f.name, (f"s{i}",) if f.name == "known_secrets" else getattr(rec, f.name) if f.name == "stream" else i)
    rec.stream = True
    rec.extract.extras = (ExtraIteration(*[1] * len(dataclasses.fields(ExtraIteration))),)
    rec.extract.error_type, rec.extract.speed = "overloaded_error", "fast"
    done = Finished(rec, outcome(rec), 2.5, 3.5)
    back = pickle.loads(pickle.dumps(done, protocol=5))
    assert back == done and back.record.route == rec.route and back.record.extract.usage == rec.extract.usage
    facts = SessionFacts("openai_chat", {"x-tokenpak-session": "s"}, "scope", 9.0, b"{}")
    assert pickle.loads(pickle.dumps(facts, protocol=5)) == facts


def test_by_fields_refuses_a_class_it_could_not_rebuild():
    import dataclasses

    import pytest

    from tokenpak_mitm.core.wire import by_fields

    @dataclasses.dataclass
    class Half:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError):
        by_fields(Half)
