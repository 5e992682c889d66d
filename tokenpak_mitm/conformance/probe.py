"""Evidence probe for replays: ``mitmdump -s probe.py -s addons/tokenpak.py --set tokenpak_probe_out=F``.

The ``ConformanceObserver`` seam is in-process, so whoever collects I1/I6/I10 evidence has to run
inside mitmdump. This script installs an observer and writes one JSON line per observation to
the file given by ``tokenpak_probe_out`` (or ``$TOKENPAK_PROBE_OUT``): the request as the addon
sent it (with the client's bytes and the spans), every stream frame, the terminal hook and the
row. Loaded *before* the addon, its ``response``/``error`` hooks run before the addon's, so a
``terminal`` line precedes a correct ``row`` line; a row emitted early shows up out of order.
Bytes are base64. Test-only: it writes every frame synchronously.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from typing import IO, Any

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from tokenpak_mitm import observer
from tokenpak_mitm.redact import redact_query

ENV = "TOKENPAK_PROBE_OUT"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Probe:
    def __init__(self) -> None:
        self._out: IO[str] | None = None
        self._seq = 0

    def load(self, loader: Loader) -> None:
        loader.add_option("tokenpak_probe_out", str, os.environ.get(ENV, ""), "Conformance probe: JSONL evidence file (replays only).")

    def configure(self, updated: set[str]) -> None:
        if "tokenpak_probe_out" in updated:
            if self._out is not None:
                self._out.close()
                self._out = None
            target = ctx.options.tokenpak_probe_out
            if target:
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._out = os.fdopen(fd, "a", encoding="utf-8")
                observer.install(self)
            else:
                observer.uninstall(self)

    def done(self) -> None:
        observer.uninstall(self)
        if self._out is not None:
            self._out.close()
            self._out = None

    def _write(self, kind: str, flow_id: str, **fields: Any) -> None:
        if self._out is None:
            return
        self._seq += 1
        self._out.write(json.dumps({"seq": self._seq, "kind": kind, "flow": flow_id, **fields}, separators=(",", ":")) + "\n")
        self._out.flush()

    # -- hooks (run before the TokenPak addon's) ----------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._write("request", flow.id, path=redact_query(flow.request.path))

    def response(self, flow: http.HTTPFlow) -> None:
        self._write("terminal", flow.id, how="response")

    def error(self, flow: http.HTTPFlow) -> None:
        self._write("terminal", flow.id, how="error", error=flow.error.msg if flow.error else None)

    # -- observer -------------------------------------------------------------------------------
    def on_outbound_request(self, flow_id: str, client_bytes: bytes, sent_bytes: bytes, spans: Any) -> None:
        self._write("outbound", flow_id, client=_b64(client_bytes), sent=_b64(sent_bytes), spans=[[int(o), _b64(bytes(t))] for o, t in spans])

    def on_stream_frame(self, flow_id: str, route_class: str, event_type: str | None, raw: bytes) -> None:
        self._write("frame", flow_id, event=event_type, raw=_b64(raw))

    def on_telemetry_row(self, row: Mapping[str, Any]) -> None:
        self._write("row", str(row.get("request_key")), row=dict(row))


addons = [Probe()]
