"""The conformance observer seam: lets a checker see what the proxy sent and forwarded.

An observer receives each outbound request (the bytes actually sent upstream), each SSE frame
forwarded to the client (in receipt order, raw bytes) and each telemetry row. The addon checks
``active()`` once per flow, so with no observer installed the cost is one tuple truthiness test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tokenpak_mitm.row import TelemetryRow

__all__ = ["ConformanceObserver", "install", "uninstall", "active"]


class ConformanceObserver(Protocol):
    def on_outbound_request(self, flow_id: str, client_bytes: bytes, sent_bytes: bytes, spans: Sequence[tuple[int, bytes]]) -> None: ...

    def on_stream_frame(self, flow_id: str, route_class: str, event_type: str | None, raw: bytes) -> None: ...

    def on_telemetry_row(self, row: TelemetryRow) -> TelemetryRow | None:
        """Sees each row before it is written; may return a replacement (e.g. with violations counted)."""


_observers: tuple[ConformanceObserver, ...] = ()


def install(observer: ConformanceObserver) -> None:
    global _observers
    if observer not in _observers:
        _observers = (*_observers, observer)


def uninstall(observer: ConformanceObserver) -> None:
    global _observers
    _observers = tuple(o for o in _observers if o is not observer)


def active() -> tuple[ConformanceObserver, ...]:
    return _observers
