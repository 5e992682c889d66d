"""Workload sizes for a full run and for ``--quick`` (a smoke run in well under a minute)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Config", "full", "quick"]


@dataclass(frozen=True)
class Config:
    requests: int = 500  # sequential small non-streamed requests per setup
    rounds: int = 5  # A B C rounds of the streamed workloads
    stream_frames: int = 1000
    stream_interval_us: int = 1000  # paced stream: one frame per ms; the burst stream is unpaced
    ttfb_streams: int = 60  # short streams per setup, for a time-to-first-byte percentile
    concurrent_streams: int = 50
    concurrent_frames: int = 150
    concurrent_interval_us: int = 20_000  # 50 frames/s per stream, a fast model's token rate
    large_reps: int = 30  # repetitions of the 200 KB request per setup
    large_bytes: int = 200 * 1024
    bulk_bytes: int = 1 << 30  # the 1 GB stream
    bulk_frame_bytes: int = 256 * 1024
    deadline_s: float = 120.0  # per streamed read; every loop also stops on its own count


full = Config()
quick = Config(requests=60, rounds=1, stream_frames=200, ttfb_streams=10, concurrent_streams=10,
               concurrent_frames=50, large_reps=5, bulk_bytes=64 << 20, deadline_s=30.0)
