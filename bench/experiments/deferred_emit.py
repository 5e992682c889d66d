"""Experiment: emit the telemetry row after mitmproxy has sent the response, not before.

mitmproxy runs the ``response`` hook before it writes the end of the message to the client
(research §0.4), so everything ``_emit`` does (timing, pricing, queueing, console line) is
client-visible latency. Here ``TokenPak._emit`` is scheduled with ``loop.call_soon`` instead: the
hook returns at once, the core sends the response, then the row is built on the same thread.
Same CPU, different place on the timeline; the difference to a normal run is the latency gain.
"""

import asyncio

from tokenpak_mitm.addon import TokenPak

_emit_now = TokenPak._emit


def _emit_later(self: TokenPak, flow: object, st: object) -> None:
    st.emitted = True  # type: ignore[attr-defined]  # keep exactly-once while the call is queued
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _emit_now(self, flow, st)
        return
    loop.call_soon(_emit_now, self, flow, st)


TokenPak._emit = _emit_later  # type: ignore[method-assign]
