"""Shared by the dialect tests: drive a tracker the way the tap does, and any-JSON values."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from tokenpak_mitm.core.observe.sse import SSEParser
from tokenpak_mitm.core.observe.tracker import Tracker

# Any JSON value, with the awkward ones providers never send but a broken server might.
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def feed_split(tracker: Tracker, data: bytes, cuts: Sequence[int] = ()) -> list[bool]:
    """Drive the tracker the way the tap does: parser chunks at ``cuts``, then close()."""
    parser = SSEParser()
    flags: list[bool] = []
    prev = 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]:
        flags += [tracker.feed_frame(f) for f in parser.feed(data[prev:cut])]
        prev = cut
    more, rest = parser.close()
    flags += [tracker.feed_frame(f) for f in more]
    if rest.strip():
        tracker.feed_frame(rest)
    return flags


def mutated(data: bytes, draw: st.DataObject) -> bytes:
    """``data`` with 1-8 bytes overwritten at drawn positions (a corrupted real recording)."""
    raw = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 8))):
        raw[draw.draw(st.integers(0, len(raw) - 1))] = draw.draw(st.integers(0, 255))
    return bytes(raw)
