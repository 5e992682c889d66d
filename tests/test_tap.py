"""The stream callable: identity on every input, TTFT from the first content frame, bounded memory."""

from __future__ import annotations

import gzip

from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
from tokenpak_mitm.core.observe.tap import MAX_PENDING_FRAME, StreamTap, observe_buffered_sse

START = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"claude-sonnet-4-6","usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n'
END = b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}\n\n'


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_returns_the_same_object_and_stamps_ttft_at_the_first_content_frame():
    clock = Clock()
    tap = StreamTap(AnthropicTracker(), sse=True, clock=clock)
    for chunk, t in [(START, 100.0), (PING, 100.5), (DELTA, 101.25), (END, 102.0)]:
        clock.t = t
        assert tap(chunk) is chunk
    assert tap(b"") == b"" and tap.finished
    assert tap.first_byte_at == 100.0 and tap.first_content_at == 101.25 and tap.last_byte_at == 102.0
    assert tap.parser.frames == 4 and tap.wire_bytes == len(START + PING + DELTA + END)
    assert tap.tracker.extract.usage.output_tokens == 9


def test_frames_go_to_the_sink_in_order_with_their_event_names():
    seen = []
    tap = StreamTap(AnthropicTracker(), sse=True, on_frame=lambda ev, raw: seen.append((ev, raw)))
    body = START + DELTA + END
    for i in range(0, len(body), 7):
        tap(body[i : i + 7])
    tap(b"")
    assert seen == [("message_start", START), ("content_block_delta", DELTA), ("message_delta", END)]


def test_compressed_stream_is_measured_from_a_decoded_copy():
    wire = gzip.compress(START + DELTA + END)
    tap = StreamTap(AnthropicTracker(), sse=True, content_encoding="gzip")
    pieces = [wire[i : i + 5] for i in range(0, len(wire), 5)]
    assert [tap(p) for p in pieces] == pieces
    tap(b"")
    assert tap.parser.frames == 3 and tap.wire_bytes == len(wire)


def test_an_endless_frame_stops_observation_but_not_the_bytes():
    tap = StreamTap(AnthropicTracker(), sse=True)
    tap(START)
    blob = b"data: " + b"a" * (1 << 20)
    sent = 0
    while sent <= MAX_PENDING_FRAME:
        assert tap(blob) is blob
        sent += len(blob)
    assert tap.failed and tap.parser.pending == 0  # the buffer was released
    assert tap(END) is END  # still identity afterwards
    assert tap.tracker.extract.usage.input_tokens == 3  # what was seen before is kept


def test_unknown_encoding_passes_through_unmeasured():
    tap = StreamTap(AnthropicTracker(), sse=True, content_encoding="x-weird")
    assert tap(START) is START and tap(b"") == b""
    assert tap.tracker.extract.usage.is_empty()


def test_buffered_body_of_a_replay_gives_the_same_figures():
    live = StreamTap(AnthropicTracker(), sse=True)
    for c in (START, DELTA, END, b""):
        live(c)
    replay = StreamTap(AnthropicTracker(), sse=True)
    observe_buffered_sse(replay, START + DELTA + END)
    assert replay.tracker.extract == live.tracker.extract
    assert replay.parser.frames == live.parser.frames


def test_corrupt_gzip_stream_logs_one_line_and_passes_bytes(caplog):
    tap = StreamTap(AnthropicTracker(), sse=True, content_encoding="gzip")
    chunks = [b"\x1f\x8b\x08\x00 not deflate", b"more garbage"]
    with caplog.at_level("WARNING"):
        assert [tap(c) for c in chunks] + [tap(b"")] == [*chunks, b""]
    assert tap.failed
    lines = [r for r in caplog.records if "tokenpak" in r.getMessage()]
    assert len(lines) == 1 and "corrupt gzip data" in lines[0].getMessage() and lines[0].exc_info is None


def test_a_zstd_bomb_chunk_stops_observation_at_the_cap():
    from tokenpak_mitm.core.observe.decoders import MAX_CHUNK_OUTPUT, zstd

    bomb = zstd.compress(b'event: ping\ndata: {"type": "ping"}\n\n' * (4 * MAX_CHUNK_OUTPUT // 35))
    tap = StreamTap(AnthropicTracker(), sse=True, content_encoding="zstd")
    assert tap(bomb) is bomb
    assert tap.failed and tap.parser is not None and tap.parser.frames == 0  # nothing parsed from it
