"""jsonscan: offsets must be exact, acceptance must match json.loads, and no other exception may escape."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.plan.jsonscan import JsonScanError, agrees_with, scan


def strict_loads(body: bytes) -> object:
    """json.loads as the addon uses it: strict UTF-8, no NaN/Infinity."""

    def reject(name: str) -> object:
        raise ValueError(name)

    return json.loads(body.decode("utf-8"), parse_constant=reject)


def accepts(body: bytes) -> bool:
    try:
        scan(body)
    except JsonScanError:
        return False
    return True


def loads_accepts(body: bytes) -> bool:
    try:
        strict_loads(body)
    except ValueError:
        return False
    return True


def value_at(body: bytes, loc) -> object:
    return json.loads(body[loc.start:loc.end])


SAMPLE = (
    b'{ "model" : "claude-opus-5" , "tools":[{"name":"a","input_schema":{"type":"object",'
    b'"properties":{"q":{"type":"string","enum":[1,2.5e3,null,true]}}}}, {"name":"b"}],'
    b'\n"system" : [ {"type":"text","text":"S1"} ,{"type":"text","text":"S\\u00e9\\"2"}\t],'
    b'"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"thinking",'
    b'"thinking":"t","signature":"s"},{"type":"text","text":"caf\xc3\xa9"},{}]}],"max_tokens":10}'
)


def test_sample_offsets_are_exact():
    bm = scan(SAMPLE)
    obj = strict_loads(SAMPLE)
    assert agrees_with(obj, bm)
    assert (bm.root.start, bm.root.end) == (0, len(SAMPLE))
    assert SAMPLE[bm.root.close:bm.root.end] == b"}"
    assert [value_at(SAMPLE, loc) for loc in bm.tools] == obj["tools"]
    assert [value_at(SAMPLE, loc) for loc in bm.system_blocks] == obj["system"]
    assert value_at(SAMPLE, bm.system) == obj["system"]
    for loc in bm.tools + bm.system_blocks:
        assert SAMPLE[loc.close:loc.end] == b"}"
    first, second = bm.messages
    assert first.blocks is None and value_at(SAMPLE, first.content) == "hi"
    assert first.content.kind == "string" and SAMPLE[first.content.start:first.content.end] == b'"hi"'
    assert [value_at(SAMPLE, loc) for loc in second.blocks] == obj["messages"][1]["content"]
    assert second.blocks[2].empty and not second.blocks[1].empty
    assert {k: value_at(SAMPLE, loc) for k, loc in bm.keys.items()} == obj


def test_unusual_spellings_and_escaped_keys():
    body = (
        b'{"m\\u0065ssages" :[ {"content" : [ {"type":"text","text":"\\u00e9"} ] , "role":"user"} ],'
        b' "n":1.0,"e":1e2,"E":-0.5E-3,"z":-0,"s":"\\/\\b\\f\\n\\r\\t"}'
    )
    bm = scan(body)
    assert agrees_with(strict_loads(body), bm)
    assert set(bm.keys) == {"messages", "n", "e", "E", "z", "s"}
    assert value_at(body, bm.messages[0].blocks[0]) == {"type": "text", "text": "é"}


def test_non_ascii_key_is_decoded_properly():
    body = '{"clé":1,"messages":[]}'.encode()
    assert set(scan(body).keys) == {"clé", "messages"}


def test_duplicate_keys_last_wins_like_json_loads():
    body = (
        b'{"messages":[{"role":"user","content":"old"}],"system":"a","system":[{"type":"text","text":"b"}],'
        b'"messages":[{"role":"user","content":"x","content":[{"type":"text","text":"new"}]}]}'
    )
    bm = scan(body)
    obj = strict_loads(body)
    assert agrees_with(obj, bm)
    assert value_at(body, bm.system) == obj["system"] == [{"type": "text", "text": "b"}]
    (message,) = bm.messages
    assert message.content.kind == "array"
    assert value_at(body, message.blocks[0]) == {"type": "text", "text": "new"}


def test_duplicate_key_switching_type_drops_earlier_elements():
    body = b'{"tools":[{"name":"a"}],"tools":"none","messages":[]}'
    bm = scan(body)
    assert bm.tools is None and bm.keys["tools"].kind == "string"
    assert agrees_with(strict_loads(body), bm)


def test_non_object_roots_and_missing_sections():
    for body in (b"[]", b'"x"', b"3", b"null", b" {} "):
        bm = scan(body)
        assert bm.messages is None and bm.tools is None and bm.system is None
        assert agrees_with(strict_loads(body), bm)
    bm = scan(b'{"messages":{"a":1},"system":null}')
    assert bm.messages is None and bm.system.kind == "scalar" and bm.system_blocks is None


def test_deep_nesting_has_no_recursion_limit():
    depth = 200_000
    body = b'{"messages":[{"role":"user","content":[{"type":"text","text":"x","meta":' + b"[" * depth + b"]" * depth + b"}]}]}"
    bm = scan(body)
    assert bm.messages[0].blocks[0].end == len(body) - 4
    with pytest.raises(JsonScanError):
        scan(b"[" * depth + b"]" * (depth - 1))


INVALID = [
    b"", b" ", b"{", b"}", b"[1,]", b'{"a":1,}', b'{"a" 1}', b'{"a":}', b"[1 2]", b"01", b"1.", b".5", b"-",
    b"+1", b"1e", b"NaN", b"Infinity", b"-Infinity", b"nul", b"True", b"'a'", b'"a', b'"\x01"', b'"\\x"',
    b'"\\u12"', b'"\\u12g4"', b"{}}", b"[]]", b"{} {}", b'{"a":1}x', b"\xef\xbb\xbf{}", b'"\xff"', b'"\xc3"',
    b'"\xed\xa0\x80"', b"[\x00]", b'{1:2}', b"[,1]", b'{"a":1,,"b":2}', b"[1,,2]", b"\x0b[]", b"[\xa0]",
]


@pytest.mark.parametrize("body", INVALID)
def test_invalid_json_is_rejected_like_json_loads(body):
    assert not loads_accepts(body)
    with pytest.raises(JsonScanError):
        scan(body)


def test_rejects_non_bytes_with_its_own_error():
    with pytest.raises(JsonScanError):
        scan("{}")  # type: ignore[arg-type]


def test_agrees_with_detects_mismatches():
    body = b'{"tools":[{"name":"a"}],"system":"s","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]}'
    bm = scan(body)
    obj = strict_loads(body)
    assert agrees_with(obj, bm)
    for mutate in (
        lambda o: o["tools"].append({}),
        lambda o: o.__setitem__("system", [{"type": "text", "text": "s"}]),
        lambda o: o["messages"][0].__setitem__("content", "x"),
        lambda o: o["messages"][0]["content"].append({}),
        lambda o: o["messages"].append({"role": "user", "content": "y"}),
        lambda o: o.__setitem__("extra", 1),
        lambda o: o.pop("system"),
    ):
        changed = strict_loads(body)
        mutate(changed)
        assert not agrees_with(changed, bm)
    assert not agrees_with([], bm)


# ---- properties ----------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=5)),
    max_leaves=30,
)
WHITESPACE = st.sampled_from(["", "", "", " ", "\n", "\t", "\r\n", "  "])


@st.composite
def spelled(draw, value: object) -> str:
    """Serialize with random whitespace, key order and escaping (all valid JSON)."""
    ascii_only = draw(st.booleans())

    def ws() -> str:
        return draw(WHITESPACE)

    def render(v: object) -> str:
        if isinstance(v, dict):
            items = draw(st.permutations(list(v.items()))) if v else []
            inner = ",".join(f"{ws()}{json.dumps(k, ensure_ascii=ascii_only)}{ws()}:{ws()}{render(x)}{ws()}" for k, x in items)
            return "{" + (inner or ws()) + "}"
        if isinstance(v, list):
            inner = ",".join(f"{ws()}{render(x)}{ws()}" for x in v)
            return "[" + (inner or ws()) + "]"
        return json.dumps(v, ensure_ascii=ascii_only)

    return ws() + render(value) + ws()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_valid_json_scans_and_agrees(data):
    value = data.draw(json_values)
    body = data.draw(spelled(value)).encode()
    bm = scan(body)
    assert agrees_with(strict_loads(body), bm)
    assert value_at(body, bm.root) == strict_loads(body)


texts = st.text(max_size=8)
blocks = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": texts, "content": st.lists(
        st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=3)}),
    json_values,
)
requests = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                                 "content": st.one_of(texts, st.lists(blocks, max_size=4))}), max_size=4)},
    optional={
        "tools": st.lists(st.dictionaries(st.text(max_size=4), json_values, max_size=3), max_size=3),
        "system": st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), max_size=3)),
        "model": texts,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_request_structures_are_located_exactly(data):
    request = data.draw(requests)
    body = data.draw(spelled(request)).encode()
    bm = scan(body)
    assert agrees_with(request, bm)
    for loc, tool in zip(bm.tools or (), request.get("tools", [])):
        assert value_at(body, loc) == tool
    if "system" in request:
        assert value_at(body, bm.system) == request["system"]
    for where, message in zip(bm.messages, request["messages"]):
        assert value_at(body, where.loc) == message
        assert value_at(body, where.content) == message["content"]
        for loc, block in zip(where.blocks or (), message["content"]):
            assert value_at(body, loc) == block
            if loc.kind == "object":
                assert body[loc.close:loc.end] == b"}"


def mutate(body: bytes, data) -> bytes:
    if not body:
        return data.draw(st.binary(max_size=4))
    pos = data.draw(st.integers(0, len(body) - 1))
    how = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
    if how == "flip":
        return body[:pos] + bytes([data.draw(st.integers(0, 255))]) + body[pos + 1:]
    if how == "insert":
        return body[:pos] + data.draw(st.sampled_from([b",", b"]", b"}", b"{", b'"', b"\\", b" ", b"\xff", b":"])) + body[pos:]
    if how == "delete":
        return body[:pos] + body[pos + 1:]
    return body[:pos]


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_acceptance_matches_json_loads_on_mutated_and_random_bytes(data):
    if data.draw(st.booleans()):
        body = data.draw(st.binary(max_size=40))
    else:
        body = mutate(data.draw(spelled(data.draw(json_values))).encode(), data)
    try:
        bm = scan(body)
    except JsonScanError:
        assert not loads_accepts(body)
        return
    assert loads_accepts(body)
    assert agrees_with(strict_loads(body), bm)


# ---- the fast path (C-scanner skipping) gives exactly the reference walker's answer -------------

from tokenpak_mitm.core.plan import jsonscan  # noqa: E402
from tokenpak_mitm.core.plan.jsonscan import scan_reference  # noqa: E402


def both(body: bytes, messages_key: str = "messages") -> object:
    """scan's answer and the reference walker's, asserted equal (a map, or both reject)."""
    try:
        expected: object = scan_reference(body, messages_key)
    except JsonScanError:
        expected = JsonScanError
    try:
        got: object = scan(body, messages_key)
    except JsonScanError:
        got = JsonScanError
    assert got == expected
    return got


responses_items = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.one_of(texts, st.lists(blocks, max_size=3))}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": texts,
                           "output": st.one_of(texts, st.lists(blocks, max_size=3))}),
    json_values,
), max_size=4)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_path_equals_reference_on_requests(data):
    if data.draw(st.booleans()):
        request, key = data.draw(requests), "messages"
    else:
        request, key = {"input": data.draw(responses_items), **data.draw(st.fixed_dictionaries({}, optional={"tools": st.lists(json_values, max_size=2), "instructions": texts}))}, "input"
    body = data.draw(spelled(request)).encode()
    assert both(body, key) is not JsonScanError
    # the fast path itself answered (it only hands over on bodies it rejects or nests past C recursion)
    assert jsonscan._fast(body.decode("latin-1"), key) == scan_reference(body, key)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fast_path_equals_reference_on_mutated_bodies(data):
    request = data.draw(requests)
    body = mutate(data.draw(spelled(request)).encode(), data)
    if data.draw(st.booleans()):
        body = mutate(body, data)
    both(body, data.draw(st.sampled_from(["messages", "input"])))


@pytest.mark.parametrize("body", INVALID + [b'{"messages":[{"content":[NaN]}]}', b'{"tools":[-Infinity]}',
                                            b'{"messages":[{"role":"user","content":[1,]}]}', b'{"system":[{"a":1}}]}'])
def test_fast_path_rejects_what_the_reference_rejects(body):
    assert both(body) is JsonScanError


def test_fast_path_hands_deep_values_to_the_reference():
    depth = 5000
    body = b'{"messages":[{"role":"user","content":[{"type":"text","meta":' + b"[" * depth + b"]" * depth + b"}]}]}"
    with pytest.raises(jsonscan._Fallback):
        jsonscan._fast(body.decode("latin-1"), "messages")
    assert both(body).messages[0].blocks[0].end == len(body) - 4


# ---- parse_and_scan: json.loads and scan in one pass ------------------------------------------

import random  # noqa: E402

from spelling import spell  # noqa: E402

from tokenpak_mitm.core.plan.jsonscan import parse_and_scan  # noqa: E402


@st.composite
def spelled_request(draw, value: object) -> str:
    """Spellings json.dumps would not write: escapes, duplicate names, -0, exponents (spelling.py)."""
    return spell(value, random.Random(draw(st.integers(0, 2**32))), canonical=False)


def same_json(a: object, b: object) -> bool:
    """Equal, with the same types (1 vs 1.0 vs True) and the same key order."""
    return a == b and json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


def check_parse_and_scan(body: bytes, messages_key: str = "messages") -> bool:
    got = parse_and_scan(body, messages_key)
    if got is None:
        return False
    obj, bm = got
    assert same_json(obj, strict_loads(body))
    assert bm == scan_reference(body, messages_key)
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_parse_and_scan_is_json_loads_and_scan(data):
    if data.draw(st.booleans()):
        request, key = data.draw(requests), "messages"
    else:
        request, key = {"input": data.draw(responses_items)}, "input"
    body = data.draw(spelled(request)).encode()
    assert check_parse_and_scan(body, key)  # a valid body is always answered
    body = data.draw(spelled_request(request)).encode()  # escapes, duplicate names, -0, exponents
    assert check_parse_and_scan(body, key)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_parse_and_scan_answers_only_what_json_loads_accepts(data):
    body = mutate(data.draw(spelled(data.draw(requests))).encode(), data)
    if not check_parse_and_scan(body):
        return
    assert loads_accepts(body)


def test_parse_and_scan_hands_over_deep_and_invalid_bodies():
    deep = b'{"messages":[{"role":"user","content":[{"type":"text","meta":' + b"[" * 5000 + b"]" * 5000 + b"}]}]}"
    assert parse_and_scan(deep) is None
    for body in INVALID:
        assert parse_and_scan(body) is None
