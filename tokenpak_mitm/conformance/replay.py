"""Replay recorded flows through a REAL mitmdump and collect the evidence the checkers need.

One rig per run: a loopback :class:`FakeUpstream`, and ``mitmdump -s probe.py -s
addons/tokenpak.py`` in reverse mode in front of it (temporary db, confdir, probe file and
re-recording directory). Flows are replayed one at a time:

* the upstream re-emits the recorded response with its recorded chunk boundaries and
  inter-chunk gaps (or a fixed 1 ms pace with ``fast``), resets where the upstream reset, and
  holds the stream open where the client hung up;
* the client sends the original client request bytes, with every redacted secret replaced by a
  per-flow canary key (I4 then proves none of them reaches the db, logs, traces or files), and
  hangs up after as many bytes as the recorded client got.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenpak_mitm.conformance.flowfile import Recording
from tokenpak_mitm.conformance.invariants import Evidence
from tokenpak_mitm.conformance.wire import header_pairs
from tokenpak_mitm.core.redact import PLACEHOLDER, SECRET_HEADERS
from tokenpak_mitm.sim.client import Response, request
from tokenpak_mitm.sim.mitmdump import ADDON_SCRIPT, MitmdumpProcess
from tokenpak_mitm.sim.upstream import FakeUpstream, Received, Script, Step

__all__ = ["ReplayRig", "ReplayResult", "canaries_for"]

PROBE_SCRIPT = Path(__file__).with_name("probe.py")
FAST_PACE = 0.001  # seconds between chunks with --fast
MAX_GAP = 2.0  # a recorded stall longer than this is replayed as this (keeps CI bounded)
RESET_GRACE = 0.05  # let the proxy drain the last chunk before the RST (a RST can discard unread data)
SETTLED_GRACE = 1.0  # after every terminal hook returned without a row: how long a late row may still take


def canaries_for(index: int) -> dict[str, str]:
    """Per-flow fake keys, key-shaped on purpose, so a leak names the flow that leaked it."""
    tag = f"CANARY{index:04d}"
    return {
        "anthropic": f"sk-ant-api03-{tag}0tokenpak0canary0key0DO0NOT0LEAK",
        "openai": f"sk-proj-{tag}0tokenpak0canary0key0DO0NOT0LEAK",
        "google": f"AIzaSy{tag}0tokenpak0canary0key0DONOTLEAK",
    }


def _secret_value(name: str, keys: dict[str, str]) -> str:
    name = name.lower()
    if name in ("authorization", "proxy-authorization"):
        return f"Bearer {keys['openai']}"
    if name == "x-goog-api-key":
        return keys["google"]
    if name in ("cookie", "set-cookie"):
        return f"session={keys['anthropic']}"
    return keys["anthropic"]


@dataclass
class ReplayResult:
    recording: Recording
    evidence: Evidence
    response: Response | None = None
    flow_id: str | None = None
    skipped: str | None = None  # why this flow could not be replayed
    sent_chunks: list[bytes] = field(default_factory=list)  # what the upstream wrote, per chunk
    canaries: list[bytes] = field(default_factory=list)


class ReplayRig:
    def __init__(self, workdir: Path | None = None, *, fast: bool = False, extra_options: list[str] | None = None, extra_scripts: list[str] | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="tokenpak-conformance-") if workdir is None else None
        self.workdir = Path(self._tmp.name) if self._tmp is not None else Path(workdir or ".")
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fast = fast
        self.db = self.workdir / "replay.db"
        self.probe_out = self.workdir / "probe.jsonl"
        self.rerecord = self.workdir / "rerecorded"
        self.extra_options = extra_options or []
        self.extra_scripts = extra_scripts or []
        self._script: Script | None = None
        self.upstream: FakeUpstream | None = None
        self.proxy: MitmdumpProcess | None = None
        self._probe_offset = 0
        self.index = 0
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> ReplayRig:
        self.upstream = FakeUpstream(self._handle).start()
        args = ["-s", str(PROBE_SCRIPT), "-s", str(ADDON_SCRIPT)]
        for script in self.extra_scripts:
            args += ["-s", script]
        options = [
            f"tokenpak_db={self.db}", f"tokenpak_probe_out={self.probe_out}", f"tokenpak_record={self.rerecord}",
            "tokenpak_conformance=warn", "flow_detail=0",
            # Each recorded flow is checked alone: with the planner's memory of the flows replayed
            # before it, a flow's markers (and golden row) would depend on the replay order.
            "tokenpak_cache_history=false", *self.extra_options,
        ]
        self.proxy = MitmdumpProcess(f"reverse:{self.upstream.url}", confdir=self.workdir, addon=False, options=options, extra_args=args)
        self.proxy.addon = True  # the addon IS loaded (after the probe): wait for its startup line
        self.proxy.start()
        return self

    def stop(self) -> None:
        """Stop both processes (idempotent); the proxy's shutdown flushes every row."""
        if self._stopped:
            return
        self._stopped = True
        if self.proxy is not None:
            self.proxy.stop()
        if self.upstream is not None:
            self.upstream.stop()

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> ReplayRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()

    def _handle(self, received: Received) -> Script:
        script, self._script = self._script, None
        return script or Script(status=500, reason="No Script", headers=[("content-type", "text/plain")], steps=[Step(b"no replay script")], chunked=False)

    # -- one flow ---------------------------------------------------------------------------------
    def replay(self, rec: Recording) -> ReplayResult:
        assert self.proxy is not None and self.upstream is not None
        self.index += 1
        keys = canaries_for(self.index)
        result = ReplayResult(rec, Evidence(dialect=rec.dialect, path=rec.end_path), canaries=[k.encode() for k in keys.values()])
        if rec.truncated:
            result.skipped = "the recording was cut by tokenpak_record_max_bytes"
            return result
        if rec.end_path == "proxy_error":
            result.skipped = "a proxy-side failure cannot be re-created by replaying traffic"
            return result
        if rec.end_path == "client_disconnected" and int(rec.end.get("after_bytes") or 0) == 0:
            result.skipped = "the client left before any response byte"
            return result
        release = threading.Event()
        script, result.sent_chunks = self._build_script(rec, release)
        self._script = script
        raw = self._client_request(rec, keys)
        received_before = len(self.upstream.received)
        after = int(rec.end.get("after_bytes") or 0)

        def hang_up(piece: bytes, resp: Response) -> bool:
            return rec.end_path == "client_disconnected" and len(resp.body) >= after

        try:
            result.response = request(self.proxy.port, raw, on_piece=hang_up, timeout=30)
        finally:
            release.set()
        events = self._probe_events(wait_for_row=True)
        flow_ids = [e["flow"] for e in events if e["kind"] == "request"]
        result.flow_id = flow_ids[0] if flow_ids else None
        received = self.upstream.received[received_before:]
        result.evidence = self._evidence(rec, result, events, received[0] if received else None, script)
        return result

    def _build_script(self, rec: Recording, release: threading.Event) -> tuple[Script, list[bytes]]:
        if not rec.has_response:
            return Script(raw=b""), []  # the upstream closed before answering
        body, pieces, times, pos = rec.response_body, [], [], 0
        for ms, n in rec.chunks:
            pieces.append(body[pos:pos + n])
            times.append(ms)
            pos += n
        if pos < len(body):  # chunk table shorter than the body: send the rest as one chunk
            pieces.append(body[pos:])
            times.append(times[-1] if times else 0.0)
        steps = []
        for i, piece in enumerate(pieces):
            gap = 0.0 if i == 0 else (FAST_PACE if self.fast else min(MAX_GAP, max(0.0, times[i] - times[i - 1]) / 1000.0))
            steps.append(Step(piece, delay=gap))
        script = Script(status=rec.status or 200, reason=rec.reason or "OK", headers=rec.response_headers, steps=steps, chunked=rec.chunked or rec.end_path != "completed")
        if not script.chunked:
            script.steps = [Step(b"".join(pieces))]
        if rec.end_path == "client_disconnected":
            script.steps.append(Step(b"", wait_for=release, wait_timeout=15))  # hold until the client is gone
            script.close = True
        elif rec.end_path == "upstream_disconnected":
            script.steps.append(Step(b"", delay=RESET_GRACE))
            script.reset_after = len(script.steps)
        return script, [s.data for s in script.steps if s.data]

    def _client_request(self, rec: Recording, keys: dict[str, str]) -> bytes:
        body = rec.client_body
        lines = [f"{rec.method} {rec.request_path.replace(PLACEHOLDER, keys['google'])} HTTP/1.1"]
        # The body is re-sent whole with a Content-Length, whatever framing the client used.
        headers = [(k, v) for k, v in rec.client_headers if k.lower() != "transfer-encoding"]
        if not any(k.lower() == "host" for k, _ in headers):  # recorded over HTTP/2 (:authority)
            headers = [("host", ""), *headers]
        if not any(k.lower() == "content-length" for k, _ in headers):
            headers = [*headers, ("content-length", "")]
        for name, value in headers:
            low = name.lower()
            if low == "host":
                value = f"127.0.0.1:{self.proxy.port if self.proxy else 0}"
            elif low == "content-length":
                value = str(len(body))
            elif low in SECRET_HEADERS and PLACEHOLDER in value:
                value = _secret_value(low, keys)
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    # -- evidence ---------------------------------------------------------------------------------
    def _probe_events(self, *, wait_for_row: bool, timeout: float = 15.0) -> list[dict[str, Any]]:
        """New probe lines since the last call; first waits until a row and a terminal are in, or
        until every addon's terminal hook has returned without a row (``settled``, then a grace)."""
        deadline = time.monotonic() + timeout
        while wait_for_row and time.monotonic() < deadline:
            kinds = {e["kind"] for e in self._read_probe(consume=False)}
            if {"row", "terminal"} <= kinds:
                break
            if "settled" in kinds:  # no row from the terminal hook: allow a little for a late one, no more
                deadline = min(deadline, time.monotonic() + SETTLED_GRACE)
            time.sleep(0.01)
        time.sleep(0.02)  # a duplicate row would be written in the same hook: catch it too
        return self._read_probe(consume=True)

    def _read_probe(self, *, consume: bool) -> list[dict[str, Any]]:
        data = self.probe_out.read_bytes() if self.probe_out.exists() else b""
        fresh = data[self._probe_offset:]
        complete = fresh[: fresh.rfind(b"\n") + 1]  # a line being written is read next time
        if consume:
            self._probe_offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def _evidence(self, rec: Recording, result: ReplayResult, events: list[dict[str, Any]], received: Received | None, script: Script) -> Evidence:
        fid = result.flow_id
        mine = [e for e in events if e["flow"] == fid]
        outbound = next((e for e in mine if e["kind"] == "outbound"), None)
        resp = result.response
        client_raw = self._client_request(rec, canaries_for(self.index))
        head, _, client_body = client_raw.partition(b"\r\n\r\n")
        framing = [("transfer-encoding", "chunked")] if script.chunked else [("content-length", str(sum(len(s.data) for s in script.steps)))]
        upstream_headers = [*script.headers, *framing] if rec.has_response else None
        spans = [(int(o), base64.b64decode(t)) for o, t in outbound["spans"]] if outbound else []
        return Evidence(
            dialect=rec.dialect,
            client_request_headers=header_pairs(head + b"\r\n\r\n"),
            client_request_body=client_body,
            sent_request_headers=list(received.headers) if received else None,
            sent_request_body=received.body if received else None,
            spans=spans,
            expected_host=self.upstream.url.split("://", 1)[1] if self.upstream else None,
            status_code=rec.status,
            upstream_response_headers=upstream_headers,
            upstream_response_body=b"".join(result.sent_chunks) if rec.has_response else None,
            client_response_headers=list(resp.headers) if resp is not None and resp.status else None,
            client_response_body=resp.body if resp is not None and resp.status else None,
            path=rec.end_path,
            observed_frames=[base64.b64decode(e["raw"]) for e in mine if e["kind"] == "frame"],
            rows=None,  # filled from the database once the proxy has flushed (see rows_by_flow)
            timeline=[e["kind"] for e in mine if e["kind"] in ("frame", "terminal", "row")],
            canaries=result.canaries,
        )

    def rows_by_flow(self) -> dict[str, list[dict[str, Any]]]:
        """Every row in the replay database, by request_key (call after ``stop``: rows flushed)."""
        out: dict[str, list[dict[str, Any]]] = {}
        if not self.db.exists():
            return out
        con = sqlite3.connect(self.db)
        con.row_factory = sqlite3.Row
        try:
            for row in con.execute("SELECT * FROM requests ORDER BY id"):
                out.setdefault(row["request_key"], []).append(dict(row))
        finally:
            con.close()
        return out

    def artifacts(self) -> dict[str, bytes]:
        """Everything this run wrote that must hold no secret: db (+wal, spill), logs, trace, re-recordings."""
        out: dict[str, bytes] = {}
        for path in [self.db, Path(f"{self.db}-wal"), Path(f"{self.db}.spill.jsonl"), self.probe_out]:
            if path.exists():
                out[path.name] = path.read_bytes()
        if self.rerecord.exists():
            for f in sorted(self.rerecord.glob("*")):
                out[f"rerecorded/{f.name}"] = f.read_bytes()
        if self.proxy is not None:
            out["mitmdump log"] = self.proxy.output().encode("utf-8", "replace")
        return out
