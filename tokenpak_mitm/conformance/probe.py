"""Evidence probe for replays: ``mitmdump -s probe.py -s addons/tokenpak.py --set tokenpak_probe_out=F``.

TokenPak's hooks (``hooks.py``) are in-process, so whoever collects I1/I6/I10 evidence has to run
inside mitmdump. This script implements them and writes one JSON line per observation to
the file given by ``tokenpak_probe_out`` (or ``$TOKENPAK_PROBE_OUT``): the request as the addon
sent it (with the client's bytes and the spans), every stream frame, the terminal hook and the
row. Loaded *before* the addon, its ``response``/``error`` hooks run before the addon's, so a
``terminal`` line precedes a correct ``row`` line; a row emitted early shows up out of order.
A second, tiny addon appended after every other one at start writes ``settled`` from the same
hooks: mitmproxy runs (and awaits) each addon's hook in order, so once ``settled`` is written the
addon's terminal hook has returned, and a row that is not in by then is missing, not late (the
replayer stops waiting instead of running out its timeout). Bytes are base64. Test-only: it writes every frame synchronously.
"""

from __future__ import annotations

import base64
import json
import os
from typing import IO, Any

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader

from tokenpak_mitm.core.observe.tap import StreamTap
from tokenpak_mitm.core.redact import redact_query
from tokenpak_mitm.proxy import hooks
from tokenpak_mitm.proxy.hooks import RowSlot

ENV = "TOKENPAK_PROBE_OUT"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Settled:
    """Runs after every other addon's terminal hook (appended to the end of the chain)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def response(self, flow: http.HTTPFlow) -> None:
        self.probe._write("settled", flow.id)

    def error(self, flow: http.HTTPFlow) -> None:
        self.probe._write("settled", flow.id)


class Probe:
    def __init__(self) -> None:
        self._out: IO[str] | None = None
        self._seq = 0
        self._settled: _Settled | None = None

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

    def running(self) -> None:
        if self._settled is None:  # after the scripts loaded: the end of the chain is behind the addon
            self._settled = _Settled(self)
            ctx.master.addons.add(self._settled)

    def done(self) -> None:
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
        if self._out is None:
            return
        hooks.want(flow, hooks.OUTBOUND, hooks.STREAM, hooks.ROW)
        self._write("request", flow.id, path=redact_query(flow.request.path))

    def response(self, flow: http.HTTPFlow) -> None:
        self._write("terminal", flow.id, how="response")

    def error(self, flow: http.HTTPFlow) -> None:
        self._write("terminal", flow.id, how="error", error=flow.error.msg if flow.error else None)

    # -- TokenPak's hooks ------------------------------------------------------------------------
    def tokenpak_outbound(self, flow: http.HTTPFlow, client_body: bytes, spans: list[tuple[int, bytes]]) -> None:
        sent = flow.request.raw_content or b""
        self._write("outbound", flow.id, client=_b64(client_body), sent=_b64(sent), spans=[[int(o), _b64(bytes(t))] for o, t in spans])

    def tokenpak_stream(self, flow: http.HTTPFlow, tap: StreamTap) -> None:
        fid = flow.id

        def frame(event_type: str | None, raw: bytes) -> None:
            self._write("frame", fid, event=event_type, raw=_b64(raw))

        tap.add_frame_sink(frame)

    def tokenpak_row(self, flow: http.HTTPFlow, slot: RowSlot) -> None:
        self._write("row", slot.row.request_key, row=slot.row.as_dict())


addons = [Probe()]
