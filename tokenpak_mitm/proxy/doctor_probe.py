"""The doctor's probe, answered: a request carrying ``x-tokenpak-probe: <nonce>`` gets this proxy's
version, process and database (see ``probe``); it never goes upstream and leaves no row."""

from __future__ import annotations

import os

from mitmproxy import http
from mitmproxy.proxy import mode_specs

from tokenpak_mitm import __version__
from tokenpak_mitm.proxy.handoff import SinkHandle
from tokenpak_mitm.proxy.probe import PROBE_HEADER, ProbeAnswer, answer_body, valid_nonce

__all__ = ["DoctorProbe"]


class DoctorProbe:
    """Answers ``tokenpak doctor``'s probe with the store the accounting hand-off writes to."""

    name = "tokenpak_doctor_probe"

    def __init__(self, handle: SinkHandle) -> None:
        self._handle = handle  # the hand-off's chosen sink (shared at composition)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if PROBE_HEADER not in flow.request.headers:
            return
        nonce = flow.request.headers.get(PROBE_HEADER)
        if not valid_nonce(nonce):
            flow.response = http.Response.make(400, b"bad probe", {"content-type": "text/plain"})
            return
        assert nonce is not None
        sink = self._handle.sink
        identity = None
        if sink is not None:
            try:
                st = os.stat(sink.path)
                identity = (st.st_dev, st.st_ino)
            except OSError:
                pass
        mode = flow.client_conn.proxy_mode
        answer = ProbeAnswer(version=__version__, pid=os.getpid(), db=sink.name if sink else None, db_identity=identity,
                             rows_written=getattr(sink, "written", 0), store_error=getattr(sink, "last_error", None),
                             upstream=mode.data if isinstance(mode, mode_specs.ReverseMode) else None)
        flow.response = http.Response.make(200, answer_body(nonce, answer), {"content-type": "application/json", "cache-control": "no-store"})
