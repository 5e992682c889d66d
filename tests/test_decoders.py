"""The one content-encoding module: every coding round-trips in any chunking, output is capped,
and a corrupt body is one clear DecodeError (never a traceback, never unbounded memory)."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpak_mitm.core.observe.decoders import (
    DecodeError,
    DecodeLimit,
    decode_body,
    identity,
    incremental_decoder,
    zstd,
)

DATA = b'data: {"type":"content_block_delta","delta":{"text":"hello"}}\n\n' * 400

ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": lambda d: zlib.compress(d)[2:-4],
    "br": brotli.compress,
    "zstd": zstd.compress,
}


def _coding(name: str) -> str:
    return name.split("-")[0]


@pytest.mark.parametrize("name", sorted(ENCODERS))
@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_any_chunking_decodes_to_the_same_bytes(name: str, cuts: list[int]):
    enc = ENCODERS[name](DATA)
    decode = incremental_decoder(_coding(name))
    assert decode is not None
    points = sorted({c % (len(enc) + 1) for c in cuts})
    pieces = [enc[a:b] for a, b in zip([0, *points], [*points, len(enc)])]
    assert b"".join(decode(p) for p in pieces) == DATA
    assert decode_body(enc, _coding(name), len(DATA)) == DATA


def test_concatenated_gzip_members_and_zstd_frames_decode_whole():
    assert decode_body(gzip.compress(b"one ") + gzip.compress(b"two"), "gzip", 100) == b"one two"
    assert decode_body(zstd.compress(b"one ") + zstd.compress(b"two"), "zstd", 100) == b"one two"


def test_stacked_codings_are_undone_in_reverse_order():
    assert decode_body(brotli.compress(gzip.compress(DATA)), "gzip, br", len(DATA)) == DATA


def test_identity_and_unknown():
    assert incremental_decoder(None) is identity and incremental_decoder("identity") is identity
    assert incremental_decoder("compress") is None and incremental_decoder("gzip, br") is None
    with pytest.raises(DecodeError, match="unknown content-encoding"):
        decode_body(b"x", "compress", 10)


@pytest.mark.parametrize("name", ["gzip", "br", "zstd"])
def test_a_bomb_costs_at_most_the_cap(name: str):
    bomb = ENCODERS[name](b"\0" * (256 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024
    cap = 4 * 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(DecodeLimit, match="compression bomb"):
            incremental_decoder(name, cap)(bomb)  # type: ignore[misc]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * cap  # not the 256 MiB the body expands to


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_corrupt_and_truncated_bodies_are_one_line_errors(name: str):
    enc = ENCODERS[name](DATA)
    with pytest.raises(DecodeError) as e:
        decode_body(enc[: len(enc) // 2], _coding(name), len(DATA))
    assert "\n" not in str(e.value)
    assert decode_body(enc[: len(enc) // 2], _coding(name), len(DATA), strict=False) == DATA[: len(decode_body(enc[: len(enc) // 2], _coding(name), len(DATA), strict=False))]
    with pytest.raises(DecodeError) as e:
        incremental_decoder("gzip")(b"\x1f\x8b\x08\x00 not deflate data at all")  # type: ignore[misc]
    assert str(e.value).startswith("corrupt gzip data") and "\n" not in str(e.value)
