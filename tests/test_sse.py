"""SSE parser: one test per WHATWG rule, plus split-invariance properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.observe.sse import Event, SSEParser, event_name, parse_event


def frames_of(chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    p = SSEParser()
    out: list[bytes] = []
    for c in chunks:
        out += p.feed(c)
    tail, rest = p.close()
    return out + tail, rest


def events_of(data: bytes) -> list[Event]:
    frames, _ = frames_of([data])
    return [e for i, f in enumerate(frames) if (e := parse_event(f, first=i == 0)) is not None]


def test_lf_frames_keep_their_exact_bytes():
    data = b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\n"
    frames, rest = frames_of([data])
    assert frames == [b"event: a\ndata: 1\n\n", b"event: b\ndata: 2\n\n"]
    assert rest == b""


def test_crlf_frames():
    data = b"data: {\"a\":1}\r\n\r\ndata: 2\r\n\r\n"
    frames, _ = frames_of([data])
    assert frames == [b"data: {\"a\":1}\r\n\r\n", b"data: 2\r\n\r\n"]
    assert [e.data for e in events_of(data)] == ['{"a":1}', "2"]


def test_cr_only_frames():
    frames, _ = frames_of([b"data: 1\r\rdata: 2\r\r"])
    assert frames == [b"data: 1\r\r", b"data: 2\r\r"]


def test_crlf_split_across_chunks_is_one_terminator():
    # The CR at the end of chunk 1 must not be taken as a line end of its own.
    frames, _ = frames_of([b"data: 1\r\n\r", b"\ndata: 2\r\n\r\n"])
    assert frames == [b"data: 1\r\n\r\n", b"data: 2\r\n\r\n"]


def test_trailing_cr_is_released_at_close():
    p = SSEParser()
    assert p.feed(b"data: 1\r\r") == []  # held: the next byte could be LF
    frames, rest = p.close()
    assert frames == [b"data: 1\r\r"] and rest == b""


def test_comment_lines_are_ignored():
    ev = events_of(b": keep-alive\ndata: x\n: another\n\n")
    assert ev == [Event(event="message", data="x")]


def test_comment_only_frame_is_not_dispatched_but_kept_as_bytes():
    frames, _ = frames_of([b": ping\n\ndata: x\n\n"])
    assert frames == [b": ping\n\n", b"data: x\n\n"]
    assert parse_event(frames[0]) is None


def test_multiline_data_is_joined_with_lf():
    assert events_of(b"data: a\ndata: b\ndata:\n\n")[0].data == "a\nb\n"


def test_fields_event_id_retry():
    ev = events_of(b"event: delta\nid: 7\nretry: 1500\ndata: x\n\n")[0]
    assert ev == Event(event="delta", data="x", id="7", retry=1500)


def test_retry_must_be_digits_and_id_must_not_contain_nul():
    ev = events_of(b"retry: 1.5\nid: a\x00b\ndata: x\n\n")[0]
    assert ev.retry is None and ev.id is None


def test_only_one_leading_space_is_removed():
    assert events_of(b"data:  two\n\n")[0].data == " two"
    assert events_of(b"data:none\n\n")[0].data == "none"


def test_field_without_colon_and_unknown_fields():
    assert events_of(b"data\nfoo: bar\n\n")[0].data == ""


def test_several_frames_in_one_chunk_and_one_frame_in_many_chunks():
    data = b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\nevent: c\ndata: 3\n\n"
    assert frames_of([data])[0] == frames_of([bytes([b]) for b in data])[0]


def test_final_frame_without_blank_line_stays_in_remainder():
    frames, rest = frames_of([b"data: 1\n\ndata: {\"type\":\"message_stop\"}"])
    assert frames == [b"data: 1\n\n"]
    assert rest == b'data: {"type":"message_stop"}'


def test_blank_lines_between_frames_are_their_own_frames():
    frames, _ = frames_of([b"data: 1\n\n\ndata: 2\n\n"])
    assert frames == [b"data: 1\n\n", b"\n", b"data: 2\n\n"]


def test_bom_stripped_once_at_stream_start():
    assert events_of(b"\xef\xbb\xbfdata: 1\n\n")[0].data == "1"
    # A second BOM is content, so this line's field name is "\ufeffdata": not dispatched.
    assert events_of(b"\xef\xbb\xbf\xef\xbb\xbfdata: 1\n\n") == []


def test_wpt_mixed_terminators_and_comments():
    body = b"data:1\r:\x00\n:\r\ndata:2\n:" + b"x" * 2048 + b"\rdata:3\n:data:fail\r:" + b"y" * 2048 + b"\ndata:4\n\n"
    assert [e.data for e in events_of(body)] == ["1\n2\n3\n4"]


def test_event_name_fast_path():
    assert event_name(b"event: content_block_delta\ndata: {}\n\n") == "content_block_delta"
    assert event_name(b"event:ping\r\ndata: {}\r\n\r\n") == "ping"
    assert event_name(b"data: {}\n\n") is None


def test_invalid_utf8_is_replaced_not_raised():
    assert events_of(b"data: \xff\xfe\n\n")[0].data == "\ufffd\ufffd"


def test_work_is_per_chunk_on_a_long_line():
    # A 1 MB line fed in 4 KB chunks: nothing is emitted until its blank line arrives.
    p = SSEParser()
    line = b"data: " + b"a" * (1 << 20)
    for i in range(0, len(line), 4096):
        assert p.feed(line[i : i + 4096]) == []
    assert p.feed(b"\n\n") == [line + b"\n\n"]


# -- properties -------------------------------------------------------------------------------
sse_ish = st.lists(
    st.sampled_from([b"data: x", b"event: e", b"id: 1", b": c", b"\r", b"\n", b"\r\n", b"data:", b"retry: 5", b"\xff", b"{\"a\": 1}"]),
    max_size=40,
).map(b"".join)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


@settings(max_examples=400)
@given(data=st.one_of(sse_ish, st.binary(max_size=300)), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_split_reproduces_input_and_unsplit_frames(data, cuts):
    whole_frames, whole_rest = frames_of([data])
    assert b"".join(whole_frames) + whole_rest == data
    frames, rest = frames_of(_split(data, cuts))
    assert b"".join(frames) + rest == data
    assert frames == whole_frames
    assert rest == whole_rest


@given(data=sse_ish, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_remainder_is_exact_before_close(data, cuts):
    p = SSEParser()
    got: list[bytes] = []
    for c in _split(data, cuts):
        got += p.feed(c)
        assert b"".join(got) + p.remainder == data[: len(b"".join(got)) + len(p.remainder)]
    assert b"".join(got) + p.remainder == data
