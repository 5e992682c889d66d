"""insert_markers: exact outgoing bytes per request shape, encodings, and never-corrupt properties."""
from __future__ import annotations

import base64
import gzip
import json
import zlib

import brotli
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.observe.decoders import zstd
from tokenpak_mitm.core.plan import cache_insert
from tokenpak_mitm.core.plan.cache_insert import (
    DECISIONS,
    MAX_BODY_BYTES,
    CacheOptions,
    InsertResult,
    Span,
    count_markers,
    insert_markers,
    remove_spans,
)
from tokenpak_mitm.core.plan.cache_planner import is_eligible_block
from tokenpak_mitm.core.plan.jsonscan import scan

AUTO = CacheOptions()
M = b'"cache_control":{"type":"ephemeral"}'
M1H = b'"cache_control":{"type":"ephemeral","ttl":"1h"}'
LONG = b"L" * 1600  # claude-opus-5 needs 512 tokens = 1536 bytes at 3 bytes/token
HEAD = b'{"model":"claude-opus-5",'


def wrap(string: bytes, marker: bytes = M) -> bytes:
    return b'[{"type":"text","text":' + string + b"," + marker + b"}]"


def check_inserted(body: bytes, result: InsertResult, expected: bytes) -> None:
    assert result.decision == "inserted", result.decision
    assert result.body == expected
    assert remove_spans(result.body, result.spans) == body
    assert list(result.spans) == sorted(result.spans, key=lambda s: s.offset)
    assert result.markers_inserted == count_markers(json.loads(result.body))[0]


def tool_use(i: int) -> bytes:
    return b'{"type":"tool_use","id":"t%d","name":"f","input":{"n":%d}}' % (i, i)


def tool_result(i: int) -> bytes:
    return b'{"type":"tool_result","tool_use_id":"t%d","content":"ok %d"' % (i, i)


# (name, body, opts, expected body) -- every expected body is written out, not computed by the code under test.
CASES = [
    (
        "tools_only",
        HEAD + b'"tools":[{"name":"a","description":"short"},{"name":"b","description":"' + LONG + b'"}],'
        b'"messages":[{"role":"user","content":"hi"}]}',
        AUTO,
        HEAD + b'"tools":[{"name":"a","description":"short"},{"name":"b","description":"' + LONG + b'",' + M + b"}],"
        b'"messages":[{"role":"user","content":' + wrap(b'"hi"') + b"}]}",
    ),
    (
        "system_string",
        HEAD + b'"system":"' + LONG + b'","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}',
        AUTO,
        HEAD + b'"system":' + wrap(b'"' + LONG + b'"') + b',"messages":[{"role":"user","content":[{"type":"text","text":"hi",' + M + b"}]}]}",
    ),
    (
        "system_list",
        HEAD + b'"system":[{"type":"text","text":"A"},{"type":"text","text":"' + LONG + b'"}],"messages":[{"role":"user","content":"q"}]}',
        AUTO,
        HEAD + b'"system":[{"type":"text","text":"A"},{"type":"text","text":"' + LONG + b'",' + M + b"}],"
        b'"messages":[{"role":"user","content":' + wrap(b'"q"') + b"}]}",
    ),
    (
        "long_tool_loop_gets_intermediate",
        HEAD + b'"messages":[{"role":"user","content":"' + LONG + b'"},{"role":"assistant","content":['
        + b",".join(map(tool_use, range(11))) + b']},{"role":"user","content":['
        + b",".join(tool_result(i) + b"}" for i in range(11)) + b"]}]}",
        AUTO,
        HEAD + b'"messages":[{"role":"user","content":' + wrap(b'"' + LONG + b'"') + b'},{"role":"assistant","content":['
        + b",".join(map(tool_use, range(11))) + b']},{"role":"user","content":['
        + b",".join(tool_result(i) + b"}" for i in range(10)) + b"," + tool_result(10) + b"," + M + b"}]}]}",
    ),
    (
        "image_last",
        HEAD + b'"messages":[{"role":"user","content":[{"type":"text","text":"' + LONG + b'"},'
        b'{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]}]}',
        AUTO,
        HEAD + b'"messages":[{"role":"user","content":[{"type":"text","text":"' + LONG + b'"},'
        b'{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="},' + M + b"}]}]}",
    ),
    (
        "document_with_nested_content",
        HEAD + b'"messages":[{"role":"user","content":[{"type":"document","source":{"type":"content","content":'
        b'[{"type":"text","text":"' + LONG + b'"}]}}]}]}',
        AUTO,
        HEAD + b'"messages":[{"role":"user","content":[{"type":"document","source":{"type":"content","content":'
        b'[{"type":"text","text":"' + LONG + b'"}]},' + M + b"}]}]}",
    ),
    (
        "tool_result_block_not_its_content",
        HEAD + b'"messages":[{"role":"user","content":"' + LONG + b'"},{"role":"assistant","content":[' + tool_use(1)
        + b']},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"out"}]}]}]}',
        AUTO,
        HEAD + b'"messages":[{"role":"user","content":"' + LONG + b'"},{"role":"assistant","content":[' + tool_use(1)
        + b']},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"out"}],'
        + M + b"}]}]}",
    ),
    (
        "thinking_blocks_walked_back",
        HEAD + b'"messages":[{"role":"user","content":"' + LONG + b'"},{"role":"assistant","content":['
        b'{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"redacted_thinking","data":"xyz"}]}]}',
        AUTO,
        HEAD + b'"messages":[{"role":"user","content":' + wrap(b'"' + LONG + b'"') + b'},{"role":"assistant","content":['
        b'{"type":"thinking","thinking":"hmm","signature":"sig"},{"type":"redacted_thinking","data":"xyz"}]}]}',
    ),
    (
        "unusual_spelling_and_duplicate_keys",
        b'{ "model" : "claude-opus-5" , "temperature" : 1.0 , "max_tokens" : 1e2 , "system" : "ignored" ,\n'
        b' "system" : [ { "type" : "text" , "text" : "caf\\u00e9 ' + LONG + b'" } ] ,\n'
        b' "messages" : [ { "role" : "user" , "content" : "old" , "content" : [ { "type" : "text" , "text" : "caf\xc3\xa9" } ] } ] }',
        AUTO,
        b'{ "model" : "claude-opus-5" , "temperature" : 1.0 , "max_tokens" : 1e2 , "system" : "ignored" ,\n'
        b' "system" : [ { "type" : "text" , "text" : "caf\\u00e9 ' + LONG + b'" ,' + M + b"} ] ,\n"
        b' "messages" : [ { "role" : "user" , "content" : "old" , "content" : [ { "type" : "text" , "text" : "caf\xc3\xa9" ,'
        + M + b"} ] } ] }",
    ),
    (
        "volatile_last_system_block",
        HEAD + b'"system":[{"type":"text","text":"' + LONG + b'"},{"type":"text","text":"Current time: 2026-08-21T10:15:00Z"}],'
        b'"messages":[{"role":"user","content":"q"}]}',
        AUTO,
        HEAD + b'"system":[{"type":"text","text":"' + LONG + b'",' + M + b'},{"type":"text","text":"Current time: 2026-08-21T10:15:00Z"}],'
        b'"messages":[{"role":"user","content":' + wrap(b'"q"') + b"}]}",
    ),
    (
        "empty_text_blocks_skipped",
        HEAD + b'"messages":[{"role":"user","content":[{"type":"text","text":"' + LONG + b'"},{"type":"text","text":""},'
        b'{"type":"text","text":" \\n "}]}]}',
        AUTO,
        HEAD + b'"messages":[{"role":"user","content":[{"type":"text","text":"' + LONG + b'",' + M + b'},{"type":"text","text":""},'
        b'{"type":"text","text":" \\n "}]}]}',
    ),
    (
        "top_level_mode",
        HEAD + b'"system":"' + LONG + b'","messages":[{"role":"user","content":"q"}]}',
        CacheOptions(mode="top-level"),
        HEAD + b'"system":"' + LONG + b'","messages":[{"role":"user","content":"q"}],' + M + b"}",
    ),
    (
        "one_hour_ttl",
        HEAD + b'"system":"' + LONG + b'","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}',
        CacheOptions(ttl="1h"),
        HEAD + b'"system":' + wrap(b'"' + LONG + b'"', M1H) + b',"messages":[{"role":"user","content":[{"type":"text","text":"hi",'
        + M1H + b"}]}]}",
    ),
    (
        "top_level_mode_one_hour",
        HEAD + b'"messages":[{"role":"user","content":"' + LONG + b'"}]\n}',
        CacheOptions(mode="top-level", ttl="1h"),
        HEAD + b'"messages":[{"role":"user","content":"' + LONG + b'"}]\n,' + M1H + b"}",
    ),
]


@pytest.mark.parametrize("name, body, opts, expected", CASES, ids=[c[0] for c in CASES])
def test_exact_outgoing_bytes(name, body, opts, expected):
    result = insert_markers(body, None, opts)
    check_inserted(body, result, expected)
    assert result.model == "claude-opus-5" and result.client_markers == 0 and result.content_encoding is None
    assert result.prefix_tokens_est is not None and result.prefix_tokens_est >= 512
    again = insert_markers(result.body, None, opts)  # a replayed, already spliced flow gets nothing more
    assert again.decision == "stood_down" and again.body is result.body


UNCHANGED = [
    ("client_block_marker", HEAD + b'"messages":[{"role":"user","content":[{"type":"text","text":"' + LONG + b'",' + M + b"}]}]}",
     AUTO, "stood_down", 1, ("5m",)),
    ("client_nested_tool_result_marker", HEAD + b'"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"a",'
     b'"content":[{"type":"text","text":"' + LONG + b'",' + M + b"}]}]}]}", AUTO, "stood_down", 1, ("5m",)),
    ("client_top_level", HEAD + b'"cache_control":{"type":"ephemeral"},"messages":[{"role":"user","content":"' + LONG + b'"}]}',
     AUTO, "stood_down", 1, ("5m",)),
    ("client_top_level_in_top_level_mode", HEAD + b'"cache_control":{"type":"ephemeral"},"messages":[{"role":"user","content":"'
     + LONG + b'"}]}', CacheOptions(mode="top-level"), "stood_down", 1, ("5m",)),
    ("client_1h_marker", HEAD + b'"system":[{"type":"text","text":"' + LONG + b'",' + M1H + b'}],"messages":[{"role":"user","content":"q"}]}',
     AUTO, "stood_down", 1, ("1h",)),
    ("client_null_marker", HEAD + b'"messages":[{"role":"user","content":[{"type":"text","text":"' + LONG + b'","cache_control":null}]}]}',
     AUTO, "stood_down", 0, ()),
    ("below_minimum", HEAD + b'"system":"short","messages":[{"role":"user","content":"q"}]}', AUTO, "below_minimum", 0, ()),
    ("off", HEAD + b'"messages":[{"role":"user","content":"' + LONG + b'"}]}', CacheOptions(mode="off"), "off", 0, ()),
    ("malformed_json", HEAD + b'"messages":[{"role":"user","content":"x"}', AUTO, "not_json", 0, ()),
    ("invalid_utf8", HEAD + b'"messages":[{"role":"user","content":"\xff\xfe' + LONG + b'"}]}', AUTO, "not_json", 0, ()),
    ("nan", HEAD + b'"temperature":NaN,"messages":[{"role":"user","content":"' + LONG + b'"}]}', AUTO, "not_json", 0, ()),
    ("bom", b"\xef\xbb\xbf" + HEAD + b'"messages":[{"role":"user","content":"' + LONG + b'"}]}', AUTO, "not_json", 0, ()),
    ("not_messages", b'{"model":"claude-opus-5","prompt":"' + LONG + b'"}', AUTO, "not_messages", 0, ()),
    ("json_array", b"[1,2,3]", AUTO, "not_messages", 0, ()),
    ("no_eligible_block", HEAD + b'"messages":[{"role":"user","content":[{"type":"text","text":"  "}]}]}', AUTO, "no_eligible_block", 0, ()),
    ("empty_body", b"", AUTO, "not_json", 0, ()),
]


@pytest.mark.parametrize("name, body, opts, decision, markers, ttls", UNCHANGED, ids=[c[0] for c in UNCHANGED])
def test_body_is_untouched(name, body, opts, decision, markers, ttls):
    result = insert_markers(body, None, opts)
    assert result.decision == decision
    assert result.body is body and result.spans == () and result.markers_inserted == 0
    assert (result.client_markers, result.client_ttls) == (markers, ttls)


def test_telemetry_fields_on_stand_down():
    body = HEAD + b'"system":[{"type":"text","text":"s",' + M1H + b'}],"messages":[{"role":"user","content":[{"type":"text","text":"q",' + M + b"}]}]}"
    result = insert_markers(body, None, AUTO)
    assert (result.decision, result.model, result.client_markers, result.client_ttls) == ("stood_down", "claude-opus-5", 2, ("1h", "5m"))


# ---- Content-Encoding ----------------------------------------------------------------

PLAIN = CASES[1][1]
PLAIN_EXPECTED = CASES[1][3]


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


ENCODINGS = [
    ("gzip", gzip.compress, gzip.decompress),
    ("GZIP", gzip.compress, gzip.decompress),
    ("x-gzip", gzip.compress, gzip.decompress),
    ("deflate", zlib.compress, zlib.decompress),
    ("deflate", raw_deflate, lambda d: zlib.decompress(d, -15)),
    ("br", brotli.compress, brotli.decompress),
    ("zstd", lambda d: zstd.compress(d), lambda d: zstd.decompress(d)),
]


@pytest.mark.parametrize("coding, compress, decompress", ENCODINGS, ids=[f"{e[0]}-{i}" for i, e in enumerate(ENCODINGS)])
def test_encoded_bodies_are_decoded_spliced_and_reencoded(coding, compress, decompress):
    encoded = compress(PLAIN)
    result = insert_markers(encoded, coding, AUTO)
    assert result.decision == "inserted" and result.content_encoding == coding.lower()
    assert decompress(result.body) == PLAIN_EXPECTED
    assert remove_spans(decompress(result.body), result.spans) == PLAIN
    assert result.spans == insert_markers(PLAIN, None, AUTO).spans


def test_encoded_stand_down_returns_the_compressed_original():
    body = gzip.compress(UNCHANGED[0][1])
    result = insert_markers(body, "gzip", AUTO)
    assert result.decision == "stood_down" and result.body is body and result.content_encoding == "gzip"


def test_multi_member_gzip_and_multi_frame_zstd():
    half = len(PLAIN) // 2
    result = insert_markers(gzip.compress(PLAIN[:half]) + gzip.compress(PLAIN[half:]), "gzip", AUTO)
    assert gzip.decompress(result.body) == PLAIN_EXPECTED
    z = zstd
    result = insert_markers(z.compress(PLAIN[:half]) + z.compress(PLAIN[half:]), "zstd", AUTO)
    assert zstd.decompress(result.body) == PLAIN_EXPECTED


@pytest.mark.parametrize("coding", [None, "identity", "", " Identity "])
def test_identity_passes_straight_through(coding):
    result = insert_markers(PLAIN, coding, AUTO)
    assert result.body == PLAIN_EXPECTED and result.content_encoding is None


@pytest.mark.parametrize("body, coding", [
    (PLAIN, "compress"), (gzip.compress(PLAIN), "gzip, br"), (PLAIN, "gzip"), (gzip.compress(PLAIN)[:-8], "gzip"),
    (gzip.compress(PLAIN) + b"junk", "gzip"), (zlib.compress(PLAIN) + b"x", "deflate"), (brotli.compress(PLAIN)[:-4], "br"),
    (b"", "br"), (zstd.compress(PLAIN)[:-3], "zstd"), (PLAIN, "zstd"), (b"\x00" * 10, "deflate"),
])
def test_unsupported_or_undecodable_encodings_leave_the_body_alone(body, coding):
    result = insert_markers(body, coding, AUTO)
    assert result.decision == "encoded_unsupported" and result.body is body


def test_too_large_raw_and_decompression_bombs():
    huge = b" " * (MAX_BODY_BYTES + 1)
    assert insert_markers(huge, None, AUTO).decision == "too_large"
    bomb = b"[" + b" " * (MAX_BODY_BYTES + 10) + b"]"
    for coding, compress in (("gzip", gzip.compress), ("br", lambda d: brotli.compress(d, quality=1)),
                             ("zstd", lambda d: zstd.compress(d))):
        packed = compress(bomb)
        result = insert_markers(packed, coding, AUTO)
        assert result.decision == "too_large" and result.body is packed


# ---- failure containment -------------------------------------------------------------

def test_internal_failure_returns_original_body(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(cache_insert, "plan", boom)
    result = insert_markers(PLAIN, None, AUTO)
    assert result.decision == "error" and result.body is PLAIN


def test_scanner_disagreement_stands_down(monkeypatch):
    monkeypatch.setattr(cache_insert, "agrees_with", lambda obj, bm: False)
    result = insert_markers(PLAIN, None, AUTO)
    assert result.decision == "error" and result.body is PLAIN


@pytest.mark.parametrize("one_pass", [True, False])
def test_wrong_offsets_are_caught_before_sending(monkeypatch, one_pass):
    shifted = PLAIN.replace(b'"messages":', b'"messages" :')  # same structure, offsets off by one
    monkeypatch.setattr(cache_insert, "scan", lambda body: scan(shifted))
    # the map comes with the parse (parse_and_scan), or from scan when that pass hands over
    monkeypatch.setattr(cache_insert, "parse_and_scan", lambda body: (json.loads(body), scan(shifted)) if one_pass else None)
    result = insert_markers(PLAIN, None, AUTO)
    assert result.decision == "error" and result.body is PLAIN


def test_bad_arguments_never_raise():
    assert insert_markers("text", None, AUTO).decision == "error"  # type: ignore[arg-type]
    assert insert_markers(PLAIN, None, None).decision == "error"  # type: ignore[arg-type]
    assert insert_markers(PLAIN, 42, AUTO).decision in DECISIONS  # type: ignore[arg-type]


def test_remove_spans_checks_the_text_is_there():
    with pytest.raises(ValueError):
        remove_spans(b'{"a":1}', [Span(6, b',"x":1')])
    assert remove_spans(b'{"a":1,"x":1}', [Span(6, b',"x":1')]) == b'{"a":1}'
    assert remove_spans(b"abXYc", [Span(2, b"X"), Span(2, b"Y")]) == b"abc"


# ---- 50 MB ---------------------------------------------------------------------------

def test_fifty_megabyte_body():
    image = base64.b64encode(b"\x89PNG" * 2_500_000).decode()  # ~13 MB of base64
    chunk = ("line of tool output with \"quotes\", tabs\t and unicode é — " * 20 + "\n") * 700  # ~0.8 MB
    messages = [{"role": "user", "content": [{"type": "text", "text": "start"}, {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": image}}]}]
    for i in range(45):
        messages.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"t{i}", "name": "read", "input": {"i": i}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}", "content": chunk}]})
    request = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "system": "You are terse.", "messages": messages}
    body = json.dumps(request, indent=1, ensure_ascii=False).encode()
    assert len(body) > 50_000_000
    result = insert_markers(body, None, AUTO)  # over the API's own 32 MB limit: not worth planning
    assert result.decision == "too_large" and result.markers_inserted == 0 and result.body is body
    request["messages"] = messages[:37]  # ~27 MB: under the limit, planned
    body = json.dumps(request, indent=1, ensure_ascii=False).encode()
    assert 20_000_000 < len(body) < 32 << 20
    result = insert_markers(body, None, AUTO)
    assert result.decision == "inserted" and result.markers_inserted == 1
    assert remove_spans(result.body, result.spans) == body
    out = json.loads(result.body)
    assert out["messages"][-1]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert count_markers(out) == (1, ("5m",))


# ---- properties over generated Messages requests -------------------------------------

LONG_TEXTS = st.builds(lambda w, n: w * n, st.sampled_from(["lorem ipsum ", "é字 ", "code();\n", '"q" \\ ', "\u2028/"]),
                       st.integers(1, 600) | st.integers(150, 600))
TEXTS = st.one_of(
    st.just(""), st.just("  \n"), st.text(max_size=20), LONG_TEXTS, LONG_TEXTS,
    st.just("Current time: 2026-08-21T10:15:00Z"),
)
TTLS = st.sampled_from([{"type": "ephemeral"}, {"type": "ephemeral", "ttl": "5m"}, {"type": "ephemeral", "ttl": "1h"}])


def text_block(t):
    return st.fixed_dictionaries({"type": st.just("text"), "text": t})


BLOCKS = st.one_of(
    text_block(TEXTS),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": TEXTS, "signature": st.just("sig")}),
    st.fixed_dictionaries({"type": st.just("redacted_thinking"), "data": st.just("abc")}),
    st.fixed_dictionaries({"type": st.just("image"), "source": st.fixed_dictionaries(
        {"type": st.just("base64"), "media_type": st.just("image/png"), "data": st.text("ABCabc012+/=", max_size=40)})}),
    st.fixed_dictionaries({"type": st.just("document"), "source": st.fixed_dictionaries(
        {"type": st.just("text"), "media_type": st.just("text/plain"), "data": TEXTS})}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": st.just("t1"), "name": st.just("f"),
                           "input": st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5)), max_size=3)}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": st.just("t1"),
                           "content": st.one_of(TEXTS, st.lists(text_block(TEXTS), max_size=3))}),
    st.fixed_dictionaries({"type": st.just("server_mystery"), "x": st.integers()}),
)
MESSAGES = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "user"]),
    "content": st.one_of(TEXTS, st.lists(BLOCKS, max_size=9)),
}), min_size=1, max_size=10)
TOOLS = st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b"]), "input_schema": st.just({"type": "object"})},
                                       optional={"description": TEXTS}), max_size=4)
MODELS = st.sampled_from(["claude-opus-5", "claude-opus-5", "claude-sonnet-4-5", "claude-haiku-4-5", "mystery-model"])


@st.composite
def requests(draw):
    request = {"model": draw(MODELS), "max_tokens": draw(st.sampled_from([1, 1024, 1.0, 1e2])), "messages": draw(MESSAGES)}
    if draw(st.booleans()):
        request["tools"] = draw(TOOLS)
    system = draw(st.one_of(st.none(), TEXTS, st.lists(text_block(TEXTS), max_size=3)))
    if system is not None:
        request["system"] = system
    if draw(st.sampled_from([False, False, False, False, True])):
        add_client_marker(request, draw)
    return request


def add_client_marker(request: dict, draw) -> None:
    """Put a marker somewhere a client could (including nested tool_result content and top level)."""
    spots: list[dict] = [request]
    spots += request.get("tools", [])
    spots += [b for b in request.get("system", []) if isinstance(request.get("system"), list)]
    for message in request["messages"]:
        if isinstance(message["content"], list):
            for block in message["content"]:
                spots.append(block)
                if block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                    spots += block["content"]
    draw(st.sampled_from(spots))["cache_control"] = draw(TTLS)


@st.composite
def spelled(draw, value) -> bytes:
    """Valid JSON with random whitespace, key order, and escaping (ASCII-only, \\u-escaped 'e')."""
    ascii_only, escape_e = draw(st.booleans()), draw(st.booleans())
    ws = st.sampled_from(["", "", " ", "\n  ", "\t", "\r\n"])

    def string(s: str) -> str:
        out = json.dumps(s, ensure_ascii=ascii_only)
        return out.replace("e", "\\u0065") if escape_e and "\\" not in out else out

    def render(v) -> str:
        if isinstance(v, dict):
            items = draw(st.permutations(list(v.items()))) if v else []
            inner = ",".join(f"{draw(ws)}{string(k)}{draw(ws)}:{draw(ws)}{render(x)}{draw(ws)}" for k, x in items)
            return "{" + (inner or draw(ws)) + "}"
        if isinstance(v, list):
            return "[" + (",".join(f"{draw(ws)}{render(x)}{draw(ws)}" for x in v) or draw(ws)) + "]"
        if isinstance(v, str):
            return string(v)
        return json.dumps(v)

    return (draw(ws) + render(value) + draw(ws)).encode("utf-8")


def without_our_markers(out: dict, original: dict) -> dict:
    """Undo exactly what insertion may do: add cache_control, wrap a string as a one-text-block list."""
    out = dict(out)
    if "cache_control" not in original:
        out.pop("cache_control", None)

    def unwrap(value, before):
        if isinstance(before, str) and isinstance(value, list):
            assert len(value) == 1 and set(value[0]) == {"type", "text", "cache_control"}
            assert value[0]["type"] == "text" and value[0]["text"] == before
            return before
        if isinstance(value, list):
            return [{k: v for k, v in b.items() if k != "cache_control" or "cache_control" in a} for b, a in zip(value, before)]
        return value

    if "tools" in out:
        out["tools"] = unwrap(out["tools"], original["tools"])
    if "system" in out:
        out["system"] = unwrap(out["system"], original["system"])
    out["messages"] = [dict(m, content=unwrap(m["content"], o["content"])) for m, o in zip(out["messages"], original["messages"])]
    return out


def marked_blocks(request: dict):
    for block in request.get("tools", []):
        if "cache_control" in block:
            yield "tool", block
    for section in ([request.get("system")] if isinstance(request.get("system"), list) else []) + [
            m["content"] for m in request["messages"] if isinstance(m["content"], list)]:
        for block in section:
            if "cache_control" in block:
                yield "block", block


PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY_SETTINGS
@given(st.data())
def test_generated_requests_are_only_ever_extended(data):
    request = data.draw(requests())
    body = data.draw(spelled(request))
    opts = data.draw(st.sampled_from([AUTO, CacheOptions(ttl="1h"), CacheOptions(mode="top-level"), CacheOptions(mode="top-level", ttl="1h")]))
    client_had_marker = "cache_control" in json.dumps(request)
    result = insert_markers(body, None, opts)
    event(result.decision)
    assert result.decision in DECISIONS and result.decision not in ("error", "not_json", "not_messages")
    assert (result.client_markers, result.client_ttls) == count_markers(request)
    if client_had_marker:
        assert result.decision == "stood_down"
    if result.decision != "inserted":
        assert result.body is body and result.spans == () and result.markers_inserted == 0
        return
    assert remove_spans(result.body, result.spans) == body
    out = json.loads(result.body)
    assert without_our_markers(out, request) == request
    total, ttls = count_markers(out)
    assert total == result.markers_inserted <= 4
    assert "5m" not in ttls or "1h" not in ttls[ttls.index("5m"):]  # never 1h after 5m
    assert set(ttls) == {opts.ttl}
    for kind, block in marked_blocks(out):
        assert kind == "tool" or is_eligible_block(block)
    if opts.mode == "top-level":
        assert out["cache_control"] == opts.marker and total == 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_long_tool_loops_keep_the_previous_breakpoint_in_reach(data):
    """Many blocks per turn: the final marker and (when 20+ blocks away) the previous turn's position are marked."""
    calls = data.draw(st.integers(1, 25))
    filler = "x" * data.draw(st.integers(0, 3000))
    messages = [{"role": "user", "content": [{"type": "text", "text": "task " + filler}]}]
    for turn in range(data.draw(st.integers(1, 3))):
        messages.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"t{turn}-{i}", "name": "f", "input": {}} for i in range(calls)]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{turn}-{i}", "content": "ok"} for i in range(calls)]})
    request = {"model": "claude-opus-5", "messages": messages}
    body = data.draw(spelled(request))
    result = insert_markers(body, None, AUTO)
    event(f"{result.decision} markers={result.markers_inserted}")
    if result.decision != "inserted":
        assert result.decision == "below_minimum" and result.body is body
        return
    out = json.loads(result.body)
    positions = [g for g, block in enumerate(b for m in out["messages"] for b in m["content"]) if "cache_control" in block]
    final = sum(len(m["content"]) for m in messages) - 1
    previous = final - 2 * calls
    assert positions[-1] == final
    if 2 * calls >= 20 and estimate_prefix_ok(body, out, previous):
        assert positions == [previous, final]
    else:
        assert positions == [final]


def estimate_prefix_ok(body: bytes, out: dict, previous: int) -> bool:
    """Whether the previous breakpoint's prefix clears claude-opus-5's 512-token minimum (3 bytes/token)."""
    bm = scan(body)
    blocks = [loc for m in bm.messages for loc in m.blocks]
    return sum(loc.end - loc.start for loc in blocks[: previous + 1]) >= 3 * 512 - 2


# ---- fuzz: arbitrary and mutated bytes never raise and never corrupt ------------------

def mutate(body: bytes, data) -> bytes:
    if not body:
        return body
    pos = data.draw(st.integers(0, len(body) - 1))
    how = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
    if how == "flip":
        return body[:pos] + bytes([data.draw(st.integers(0, 255))]) + body[pos + 1:]
    if how == "insert":
        return body[:pos] + data.draw(st.sampled_from([b",", b"]", b"}", b"{", b'"', b"\\", b"\xc3", b'"cache_control":{}'])) + body[pos:]
    if how == "delete":
        return body[:pos] + body[pos + 1:]
    if how == "duplicate":
        return body[:pos] + body[pos:pos + 20] + body[pos:]
    return body[:pos]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_fuzz_never_raises_and_never_corrupts(data):
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        body = data.draw(st.binary(max_size=200))
    else:
        body = mutate(data.draw(spelled(data.draw(requests()))), data)
    coding = data.draw(st.sampled_from([None, None, "gzip", "br", "zstd", "deflate", "bogus"]))
    if coding in ("gzip", "br", "zstd", "deflate") and data.draw(st.booleans()):
        body = {"gzip": gzip.compress, "br": brotli.compress, "deflate": zlib.compress,
                "zstd": zstd.compress}[coding](body)
    opts = data.draw(st.sampled_from([AUTO, CacheOptions(mode="top-level"), CacheOptions(ttl="1h")]))
    result = insert_markers(body, coding, opts)
    event(result.decision)
    assert result.decision in DECISIONS and result.decision != "error"
    if result.decision != "inserted":
        assert result.body is body and result.spans == ()
        return
    decoded = {None: lambda b: b, "gzip": gzip.decompress, "br": brotli.decompress, "deflate": zlib.decompress,
               "zstd": lambda b: zstd.decompress(b)}
    before = decoded[coding](body)
    after = decoded[coding](result.body)
    assert remove_spans(after, result.spans) == before
    json.loads(after)


def test_model_is_reported_even_when_not_a_messages_request():
    result = insert_markers(b'{"model":"claude-opus-5","prompt":"x"}', None, AUTO)
    assert (result.decision, result.model) == ("not_messages", "claude-opus-5")


def test_planning_moves_off_the_event_loop_by_object_count_as_well_as_bytes():
    from tokenpak_mitm.core.plan.cache_insert import OFFLOAD_OBJECTS, plan_off_loop

    many = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"} for _ in range(26000)]}).encode()
    assert len(many) < 1 << 20 and plan_off_loop(many, None)  # 1 MB of tiny blocks: 0.4-0.8 s of planning
    few = json.dumps({"model": "m", "system": "s" * 500_000, "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert not plan_off_loop(few, None)  # big but few objects: cheap to plan
    assert plan_off_loop(b"{" * (OFFLOAD_OBJECTS + 1), None) and not plan_off_loop(b"{" * OFFLOAD_OBJECTS, None)
    assert plan_off_loop(b"x" * (2 << 20), None)
    assert len(gzip.compress(many)) < 8192 and plan_off_loop(gzip.compress(many), "gzip")  # compressed: always


def test_bodies_over_the_planning_bounds_are_not_planned_and_the_check_is_cheap_on_the_loop():
    from tokenpak_mitm.core.plan.cache_insert import PLAN_MAX_BYTES, PLAN_MAX_OBJECTS, plan_where, too_big_to_plan

    tiny = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"} for _ in range(32000)]}, separators=(",", ":")).encode()
    assert len(tiny) < 1 << 20 and plan_where(tiny, None) == "too_large"  # counted on the loop: one C byte count
    assert plan_where(b"{" * PLAN_MAX_OBJECTS, None) == "off_loop" and plan_where(b"{" * (PLAN_MAX_OBJECTS + 1), None) == "too_large"
    huge = b"x" * (PLAN_MAX_BYTES + 1)
    assert plan_where(huge, None) == "too_large"  # by length alone, nothing read
    big_few = json.dumps({"model": "m", "system": "s" * (2 << 20), "messages": [{"role": "user", "content": "hi"}]}).encode()
    assert plan_where(big_few, None) == "off_loop" and not too_big_to_plan(big_few)  # big but few objects: planned
    big_many = json.dumps({"model": "m", "system": "s" * (2 << 20), "messages": [{"role": "user", "content": "hi"}] * 20000}).encode()
    assert plan_where(big_many, None) == "off_loop" and too_big_to_plan(big_many)  # counted in the worker...
    assert insert_markers(big_many, None, AUTO).decision == "too_large"  # ...where the planner refuses it
    assert insert_markers(gzip.compress(tiny), "gzip", AUTO).decision == "too_large"  # compressed: checked once decoded
    assert insert_markers(big_few, None, AUTO).decision != "too_large"


# ---- fingerprints from the client's bytes change nothing -----------------------------------------

from spelling import MARKABLE, REQUESTS, raw_threshold, spell  # noqa: E402

from tokenpak_mitm.core.plan import prefix_index  # noqa: E402
from tokenpak_mitm.core.plan.learning_planner import Memory  # noqa: E402


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(MARKABLE | REQUESTS, st.integers(0, 2**32), st.booleans()), min_size=1, max_size=3),
       st.sampled_from([CacheOptions(mode="auto", ttl="auto"), CacheOptions(mode="auto"), CacheOptions(mode="top-level")]),
       st.sampled_from([0, 512]))
def test_learning_planner_decides_the_same_with_and_without_the_byte_paths(turns, opts, threshold):
    """A conversation planned with the one-pass parse and fingerprints from the client's bytes (and
    their memo) gives the same bodies, spans, decisions, notes and index as the plain parse."""
    import random

    fast, plain = Memory(), Memory()
    for n, (req, seed, canonical) in enumerate(turns):
        if n and turns[0][0].get("messages"):  # a conversation going on: the previous request plus more
            req = {**turns[0][0], "messages": turns[0][0]["messages"] + req["messages"]}
        body = spell(req, random.Random(seed), canonical).encode()
        with raw_threshold(threshold):
            a = insert_markers(body, None, opts, fast, 100.0 * n)
        with raw_threshold(1 << 40):  # no block from its bytes
            prefix_index._STEPS.clear()
            saved = cache_insert.parse_and_scan
            cache_insert.parse_and_scan = lambda decoded: None  # json.loads, then the reference scan if needed
            try:
                b = insert_markers(body, None, opts, plain, 100.0 * n)
            finally:
                cache_insert.parse_and_scan = saved
        assert (a.body, a.spans, a.decision, a.notes, a.markers_inserted, a.client_markers) == \
            (b.body, b.spans, b.decision, b.notes, b.markers_inserted, b.client_markers)
        assert fast.index.dump() == plain.index.dump()


def test_a_body_dense_with_tiny_objects_is_parsed_by_json_loads_alone(monkeypatch):
    """Thousands of tiny messages: the one-pass parse would cost more than json.loads; the byte map
    is made only when a marker goes in, and the outcome is the same as with the one pass."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": [{"type": "text", "text": f"m{i} " * 400 if i == 0 else f"m{i}"}]}
                for i in range(401)]
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": messages}).encode()
    from tokenpak_mitm.core.plan.jsonscan import one_pass_pays

    assert not one_pass_pays(body)
    dense = insert_markers(body, None, AUTO)
    monkeypatch.setattr(cache_insert, "one_pass_pays", lambda decoded: True)
    assert dense == insert_markers(body, None, AUTO)
    assert dense.decision == "inserted"


def test_a_model_without_cache_facts_is_planned_with_the_fallback_and_the_row_says_why():
    import json as _json

    from tokenpak_mitm.core.plan.cache_insert import insert_markers as _insert

    system = "Rules. " + "Be exact and cite sources. " * 600
    unknown = _json.dumps({"model": "claude-nova-7", "max_tokens": 10, "system": system,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
    result = _insert(unknown, None)
    assert result.decision == "inserted"  # the fallback's 1,024 minimum: a marker below the real one is simply not written
    reasons = _json.loads(result.reasons_json() or "[]")
    assert reasons[-1]["why"] == "no_cache_facts" and "claude-nova-7" in reasons[-1]["detail"]
    known = _insert(unknown.replace(b"claude-nova-7", b"claude-sonnet-4-6"), None)
    assert "no_cache_facts" not in (known.reasons_json() or "")
