"""The custom mitmproxy hooks through which the TokenPak addon talks to the addons that build on it.

The recorder, the live conformance checker and the conformance probe need to see what only the
TokenPak addon knows: the client's original body next to the one sent upstream, the stream tap it
attached, and each telemetry row before it is written. Instead of a process-global registry they
implement these hooks, which TokenPak fires through mitmproxy's own ``addons.trigger``, so it does
not matter where they sit in the addon list:

* ``tokenpak_outbound(flow, client_body, spans)`` — in ``request``, after marker insertion;
* ``tokenpak_stream(flow, tap)`` — in ``responseheaders``, right after ``flow.response.stream``
  became the tap: wrap ``flow.response.stream`` (it stays an identity on the bytes) or add a
  frame sink to the tap now, before the first chunk;
* ``tokenpak_row(flow, slot)`` — once per request, before the row is written; ``slot.row`` may be
  replaced (the live checker writes its violation count into it).

Firing a hook walks every addon (~50 us per trigger in mitmdump), so TokenPak fires one only for a
flow that asked for it: an addon calls :func:`want` from its ``requestheaders`` hook, which every
addon's runs before any ``request`` or ``responseheaders``, whatever the order of the list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from mitmproxy import ctx, hooks, http

from tokenpak_mitm.core.observe.tap import StreamTap
from tokenpak_mitm.core.row import TelemetryRow

__all__ = ["OUTBOUND", "ROW", "STREAM", "RowSlot", "TokenpakOutboundHook", "TokenpakRowHook", "TokenpakStreamHook", "fire", "want"]

logger = logging.getLogger("tokenpak")

WANT_KEY: Final = "tokenpak_hooks"  # flow.metadata: names of the hooks some addon wants for this flow
OUTBOUND: Final = "tokenpak_outbound"
STREAM: Final = "tokenpak_stream"
ROW: Final = "tokenpak_row"


@dataclass
class TokenpakOutboundHook(hooks.Hook):
    """The request goes upstream: ``client_body`` as the client sent it, ``flow.request`` as sent."""

    name = OUTBOUND
    flow: http.HTTPFlow
    client_body: bytes
    spans: list[tuple[int, bytes]]  # (offset in the client body, inserted bytes)


@dataclass
class TokenpakStreamHook(hooks.Hook):
    """The tap now observes ``flow.response.stream``; wrap it or add a frame sink before any chunk."""

    name = STREAM
    flow: http.HTTPFlow
    tap: StreamTap


@dataclass(slots=True)
class RowSlot:
    row: TelemetryRow


@dataclass
class TokenpakRowHook(hooks.Hook):
    """The flow's one telemetry row, before it is written; handlers may replace ``slot.row``."""

    name = ROW
    flow: http.HTTPFlow
    slot: RowSlot


def want(flow: http.HTTPFlow, *names: str) -> None:
    """Ask TokenPak to fire these hooks for this flow (call from ``requestheaders``)."""
    have = flow.metadata.get(WANT_KEY)
    wanted = set(have) if isinstance(have, list) else set()
    wanted.update(names)
    flow.metadata[WANT_KEY] = sorted(wanted)  # a list: metadata is saved with the flow


def wanted(flow: http.HTTPFlow, name: str) -> bool:
    have = flow.metadata.get(WANT_KEY)
    return isinstance(have, list) and name in have


def fire(hook: TokenpakOutboundHook | TokenpakStreamHook | TokenpakRowHook) -> None:
    """Trigger ``hook`` on every addon if some addon wants it for this flow; never raises."""
    if not wanted(hook.flow, hook.name):
        return
    try:
        ctx.master.addons.trigger(hook)
    except Exception:  # mitmproxy logs a handler's own exception; this is the dispatch failing
        logger.exception("tokenpak: could not deliver %s", hook.name)
