"""Experiment: the tokenpak addon with a stream callable that only returns its input.

Separates what our per-chunk work costs (parse, track, timestamps) from what mitmproxy charges
for having a stream *callable* at all (versus ``stream = True``). Telemetry of streams is wrong in
this mode (nothing is observed); only the timings matter.
"""

from tokenpak_mitm.tap import StreamTap


def _identity(self: StreamTap, data: bytes) -> bytes:
    if not data:
        self.finished = True
    return data


StreamTap.__call__ = _identity  # type: ignore[method-assign]
