"""cache_miss: the verdict on evidence built by hand (the simulator-driven cases are in test_sessions)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.account.cache_miss import Evidence, Known, Prior, change_between, diagnose
from tokenpak_mitm.core.account.request_shape import Shape, shape_of

SYSTEM = "Today is 2026-11-30. " + "Be exact and cite sources. " * 400


def _shape(system: str = SYSTEM, model: str = "claude-sonnet-4-6", marked: bool = True, **extra: object) -> Shape:
    req = {"model": model, "system": system, "messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"},
                                                         {"role": "user", "content": "q1"}], **extra}
    if marked:
        req["cache_control"] = {"type": "ephemeral"}
    shape = shape_of(req)
    assert shape is not None
    return shape


def test_change_classes():
    base = _shape()
    assert change_between(base, _shape(model="claude-opus-4-8")) == (0, "model_params")
    assert change_between(base, _shape(SYSTEM.replace("2026-11-30", "2026-12-01"))) == (0, "volatile")
    assert change_between(base, _shape(SYSTEM + " Answer in French.")) == (0, "system")
    assert change_between(base, _shape(thinking={"type": "enabled", "budget_tokens": 1024})) == (1, "model_params")
    assert change_between(base, base) is None


def _evidence(read: int, expected_cached_at: float | None, now: float = 100.0, marked: bool = True) -> Evidence:
    shape = _shape(marked=marked)
    last = len(shape.blocks) - 1
    cached = Known(last, True, True, expected_cached_at, 300.0) if expected_cached_at is not None else None
    total = 3000
    return Evidence(shape, now, read, total - read, 0, 1024, cached, cached, None)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.floats(0, 1000))
def test_a_full_read_is_never_a_miss_and_a_miss_names_one_cause(read: int, age: float):
    v = diagnose(_evidence(read, 100.0 - age))
    if read >= 0.9 * 3000:
        assert v is None
    else:
        assert v is not None and v.expected_tokens == 3000
        expected = "ttl_expired" if age >= 305 else "unknown" if age > 295 else "provider_evicted"
        assert v.reason == expected


def test_nothing_known_is_cold_and_a_read_of_the_unknown_is_not_a_miss():
    assert diagnose(_evidence(0, None)).reason == "cold"  # type: ignore[union-attr]
    assert diagnose(_evidence(2000, None)) is None


def test_an_unmarked_request_is_not_marked():
    v = diagnose(_evidence(0, 50.0, marked=False))
    assert v is not None and v.reason == "not_marked"


def test_prefix_change_from_the_previous_request_names_where():
    prev, cur = _shape(), _shape(SYSTEM + " Answer in French.")
    last = len(prev.blocks) - 1
    ev = Evidence(cur, 100.0, 0, 3000, 0, 1024, None, None, Prior(prev, last, 2900, 90.0, 300.0))
    v = diagnose(ev)
    assert v is not None and (v.reason, v.section, v.block, v.change, v.expected_tokens) == ("prefix_changed", "system", None, "system", 2900)  # a string system has no block index
    expired = Evidence(cur, 500.0, 0, 3000, 0, 1024, None, None, Prior(prev, last, 2900, 90.0, 300.0))
    assert diagnose(expired).reason == "ttl_expired"  # type: ignore[union-attr]


def test_a_model_change_points_at_no_section():
    prev, cur = _shape(), _shape(model="claude-opus-4-8")
    ev = Evidence(cur, 100.0, 0, 3000, 0, 1024, None, None, Prior(prev, len(prev.blocks) - 1, 2900, 90.0, 300.0))
    v = diagnose(ev)
    assert v is not None and (v.reason, v.section, v.block, v.change) == ("prefix_changed", None, None, "model_params")


# -- the provider's verdict (cache diagnostics) and the rule when it disagrees ------------------------
def test_reconcile_the_provider_wins_for_the_reason_ours_keeps_the_cost_and_the_where():
    from tokenpak_mitm.core.account.cache_miss import Verdict, as_provider_reason, reconcile

    ours = Verdict("provider_evicted", 3000)
    assert reconcile(ours, None) is ours and reconcile(None, "system_changed") is None  # no miss is made up
    moved = reconcile(ours, "system_changed")
    assert moved == Verdict("prefix_changed", 3000, None, None, "system")
    changed = Verdict("prefix_changed", 2000, "system", 0, "volatile")
    assert as_provider_reason(changed.reason, changed.section, changed.change) == "system_changed"
    assert reconcile(changed, "system_changed") is changed  # agreement: ours is finer (a volatile value)
    assert reconcile(changed, "tools_changed") == Verdict("prefix_changed", 2000, "system", 0, "tools")
    assert reconcile(Verdict("unknown", 10), "model_changed") == Verdict("prefix_changed", 10, None, None, "model_params")
    for stands in ("below_minimum", "ttl_expired", "not_marked"):  # would have missed without the divergence
        assert reconcile(Verdict(stands, 5), "messages_changed") == Verdict(stands, 5)  # type: ignore[arg-type]
    for silent in ("none", "previous_message_not_found", "unavailable", "some_future_type"):
        assert reconcile(changed, silent) is changed


def test_a_mid_conversation_system_message_is_history_not_the_system_prompt():
    shape = shape_of({"model": "claude-opus-4-8", "system": "s", "messages": [
        {"role": "user", "content": "q"}, {"role": "system", "content": "now in French"}]})
    assert shape is not None
    assert [b.part for b in shape.blocks] == ["system", "messages", "messages"]
    openai = shape_of({"model": "gpt-5.6", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]}, "openai_chat")
    assert openai is not None and [b.part for b in openai.blocks] == ["system", "messages"]
