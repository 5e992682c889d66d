"""``--set tokenpak_conformance=warn|strict``: check the streaming invariants on live traffic.

Runs I6 (every forwarded frame reported once, in order, byte-identical, nothing synthesized),
I8 (every chunk forwarded exactly as received) and I10 (one row per LLM request, after its
terminal event) through TokenPak's hooks (``hooks.py``), on every flow, as it happens:

* ``warn`` logs each violation and writes the flow's count into its row's
  ``conformance_violations`` (``tokenpak_row`` comes before the row is written);
* ``strict`` also makes mitmdump exit non-zero at shutdown, so a test run that enabled it fails;
* ``off`` (default) asks for no hooks: no wrapper, no frame sink, zero cost.

How: when TokenPak fires ``tokenpak_stream``, this addon adds a frame sink to the tap and wraps
``flow.response.stream`` with a thin callable that sees what is returned (i.e. what mitmproxy
forwards), splits it into frames with the checker's own splitter and matches them against the
frames the tap reported for the same chunk.
Memory per flow is one partial frame (capped; a flow with a larger frame is left unchecked).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import ctx, exceptions, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import mode_specs

from tokenpak_mitm.conformance.wire import split_frames
from tokenpak_mitm.core.observe.decoders import incremental_decoder
from tokenpak_mitm.core.observe.tap import StreamTap
from tokenpak_mitm.core.routes import classify, tracker_for
from tokenpak_mitm.core.row import TelemetryRow
from tokenpak_mitm.proxy import hooks
from tokenpak_mitm.proxy.startup import guard_configure

__all__ = ["LiveConformance", "MODES"]

logger = logging.getLogger("tokenpak.conformance")

MODES = ("off", "warn", "strict")
_MAX_PENDING_FRAME = 4 * 1024 * 1024
_MAX_FLOWS = 10_000
ROW_GRACE = 1.0  # seconds an ended flow may still take to emit its row (an awaiting hook)
_LOGGED_PER_FLOW = 5  # a broken tap would otherwise log every frame of every stream


@dataclass
class _LiveFlow:
    flow: weakref.ReferenceType[http.HTTPFlow]
    streamed: bool = False
    final: bool = False  # the stream's final b"" call was forwarded
    rows: int = 0
    violations: list[str] = field(default_factory=list)
    reported: deque[bytes] = field(default_factory=deque)  # frames the tap reported, not yet matched
    buffer: bytearray = field(default_factory=bytearray)  # forwarded, decoded, not yet a frame
    decoder: Any = None
    unchecked: bool = False
    matched: int = 0


class _ForwardCheck:
    """Wraps the stream callable: returns exactly what it returns, and checks it (never raises)."""

    __slots__ = ("inner", "state", "owner")

    def __init__(self, inner: Callable[[bytes], Any], state: _LiveFlow, owner: LiveConformance) -> None:
        self.inner, self.state, self.owner = inner, state, owner

    def __call__(self, data: bytes) -> Any:
        out = self.inner(data)
        try:
            self.owner._forwarded(self.state, data, out)
        except Exception:
            logger.exception("tokenpak: live conformance check failed; traffic unaffected")
        return out


class LiveConformance:
    def __init__(self) -> None:
        self.is_running = False
        self.mode = "off"
        self.violations = 0
        self._flows: OrderedDict[str, _LiveFlow] = OrderedDict()
        self._ended: set[str] = set()  # flows whose end was seen and whose row check is scheduled
        self._exit_hook_added = False

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self, loader: Loader) -> None:
        loader.add_option("tokenpak_conformance", str, "off", "Check streaming invariants (I6, I8, I10) on live traffic: off, warn, or strict (exit non-zero at shutdown on any violation).")

    @staticmethod
    def check_options(opts: Any) -> None:
        """Raise ``OptionsError`` for a bad value (pure; `startup.preflight` runs it before mitmdump starts)."""
        mode = opts.tokenpak_conformance
        if mode not in MODES:
            raise exceptions.OptionsError(f"tokenpak_conformance must be one of {', '.join(MODES)}, not {mode!r}")

    @guard_configure
    def configure(self, updated: set[str]) -> None:
        if "tokenpak_conformance" not in updated:
            return
        self.check_options(ctx.options)
        self.mode = ctx.options.tokenpak_conformance

    def running(self) -> None:
        self.is_running = True
        if self.mode == "strict" and not self._exit_hook_added:
            # Appended after every other addon, so its `done` runs last (after mitmdump's own
            # flushes, e.g. the -w flow file) and can end the process like ErrorCheck does.
            ctx.master.addons.add(_ExitNonZero(self))
            self._exit_hook_added = True
        if self.mode != "off":
            logger.info("tokenpak: live conformance checks on (%s): I6 frame ordering, I8 byte identity, I10 one row per request", self.mode)

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def done(self) -> None:
        for fid in list(self._ended):  # ended flows whose grace had not run out yet
            self._check_row_written(fid, False)
        if self.violations and self.mode != "strict":
            logger.warning("tokenpak: %d conformance violation(s) seen (tokenpak_conformance=warn)", self.violations)

    # -- hooks ----------------------------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.mode == "off":
            return
        req = flow.request
        reverse = isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)
        route = classify(req.method, req.pretty_host, req.path, extra_hosts=ctx.options.tokenpak_hosts, any_host=reverse)
        if route is None or tracker_for(route) is None:
            return
        self._flows[flow.id] = _LiveFlow(weakref.ref(flow))
        while len(self._flows) > _MAX_FLOWS:
            self._flows.popitem(last=False)
        hooks.want(flow, hooks.STREAM, hooks.ROW)

    def tokenpak_stream(self, flow: http.HTTPFlow, tap: StreamTap) -> None:
        st = self._flows.get(flow.id)
        if st is None or flow.response is None or not callable(flow.response.stream):
            return
        st.streamed = True
        st.decoder = incremental_decoder(flow.response.headers.get("content-encoding"))
        st.unchecked = st.decoder is None

        def reported(event_type: str | None, raw: bytes) -> None:
            if not st.unchecked:
                st.reported.append(bytes(raw))

        tap.add_frame_sink(reported)
        flow.response.stream = _ForwardCheck(flow.response.stream, st, self)

    def response(self, flow: http.HTTPFlow) -> None:
        self._end(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._end(flow)

    def _end(self, flow: http.HTTPFlow) -> None:
        """The flow ended: its row must exist. Checked once every addon's hook for this event ran
        (TokenPak may come after this addon in the list), i.e. on the next turn of the loop; a
        flow still without its row then gets ROW_GRACE seconds more (a hook that awaits), and
        whatever is still pending at shutdown is checked in ``done``."""
        if flow.id not in self._flows or flow.id in self._ended:
            return
        self._ended.add(flow.id)
        try:
            asyncio.get_running_loop().call_soon(self._check_row_written, flow.id, True)
        except RuntimeError:  # no loop (driven synchronously, e.g. by a test harness)
            self._check_row_written(flow.id, False)

    def _check_row_written(self, fid: str, may_wait: bool) -> None:
        st = self._flows.get(fid)
        if st is not None and st.rows == 0 and may_wait:
            try:
                asyncio.get_running_loop().call_later(ROW_GRACE, self._check_row_written, fid, False)
                return
            except RuntimeError:
                pass
        self._ended.discard(fid)
        st = self._flows.pop(fid, None)
        if st is not None and st.rows == 0:
            self._violate(fid, st, "I10: no telemetry row was emitted for this LLM request")

    def tokenpak_row(self, flow: http.HTTPFlow, slot: hooks.RowSlot) -> None:
        slot.row = self._on_row(slot.row) or slot.row

    def _on_row(self, row: TelemetryRow) -> TelemetryRow | None:
        fid = row.request_key
        st = self._flows.get(fid)
        if st is None:
            return None
        st.rows += 1
        if st.rows > 1:
            self._violate(fid, st, f"I10: telemetry row #{st.rows} for one request")
        flow = st.flow()
        buffered_done = flow is not None and not st.streamed and flow.response is not None and flow.response.raw_content is not None
        if not (st.final or buffered_done or (flow is not None and flow.error is not None)):
            self._violate(fid, st, "I10: row emitted before the terminal event (stream end, response or error)")
        if st.streamed:
            self._settle(fid, st)
        return dataclasses.replace(row, conformance_violations=len(st.violations))

    # -- checks ---------------------------------------------------------------------------------
    def _forwarded(self, st: _LiveFlow, data: bytes, out: Any) -> None:
        fid = _flow_id(st)
        if not isinstance(out, bytes | bytearray) or bytes(out) != data:
            self._violate(fid, st, f"I8: a {len(data)}-byte chunk was forwarded changed")
        if not data:
            st.final = True
            self._settle(fid, st)
            return
        if st.unchecked:
            return
        st.buffer += st.decoder(bytes(out))
        if len(st.buffer) > _MAX_PENDING_FRAME:
            st.unchecked, st.buffer = True, bytearray()
            return
        self._match(fid, st, final=False)

    def _match(self, fid: str, st: _LiveFlow, *, final: bool) -> None:
        frames, rest = split_frames(bytes(st.buffer), final=final)
        st.buffer = bytearray(rest)
        for frame in frames:
            if not st.reported:
                self._violate(fid, st, f"I6: forwarded frame #{st.matched} was not reported to the observer: {frame[:60]!r}")
            elif st.reported[0] != frame:
                got = st.reported.popleft()
                self._violate(fid, st, f"I6: frame #{st.matched} reported as {got[:60]!r} but forwarded as {frame[:60]!r}")
            else:
                st.reported.popleft()
            st.matched += 1

    def _settle(self, fid: str, st: _LiveFlow) -> None:
        """End of stream (or of the flow): every reported frame must have been forwarded."""
        if st.unchecked:
            return
        self._match(fid, st, final=True)
        while st.reported:
            extra = st.reported.popleft()
            self._violate(fid, st, f"I6: reported frame was never forwarded (synthesized or duplicated): {extra[:60]!r}")

    def _violate(self, fid: str, st: _LiveFlow, message: str) -> None:
        st.violations.append(message)
        self.violations += 1
        if len(st.violations) <= _LOGGED_PER_FLOW:
            logger.warning("tokenpak conformance violation (flow %s): %s", fid[:8], message)
        elif len(st.violations) == _LOGGED_PER_FLOW + 1:
            logger.warning("tokenpak conformance violation (flow %s): further violations on this flow are counted, not logged", fid[:8])


def _flow_id(st: _LiveFlow) -> str:
    flow = st.flow()
    return flow.id if flow is not None else "?"


class _ExitNonZero:
    """The last addon in the chain: in strict mode, any violation makes mitmdump exit 1."""

    def __init__(self, owner: LiveConformance) -> None:
        self.owner = owner

    def done(self) -> None:
        if self.owner.mode == "strict" and self.owner.violations:
            logger.error("tokenpak: %d conformance violation(s) seen; exiting non-zero (tokenpak_conformance=strict)", self.owner.violations)
            raise SystemExit(1)
