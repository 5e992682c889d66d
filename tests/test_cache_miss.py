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
