"""Reading a recorded flow (``tokenpak_record`` output) into what a replay and the checkers need.

A recorded ``.mitm`` file is an ordinary mitmproxy flow (``mitmdump -nr`` and mitmweb read it):
``request`` is what went upstream, ``response.raw_content`` the wire body. Our additions live in
``flow.metadata["tokenpak_record"]`` (see ``recorder.py``): the client's own request bytes and
headers, the inserted spans, chunk sizes and receive offsets, and how the exchange ended.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import http, io

from tokenpak_mitm.conformance.invariants import Evidence
from tokenpak_mitm.core.routes import classify
from tokenpak_mitm.proxy.recorder import RECORD_KEY

__all__ = ["Recording", "load_recording", "find_flow_files", "golden_path"]

_FRAMING = ("transfer-encoding", "content-length")


def _s(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


@dataclass
class Recording:
    path: Path
    flow: http.HTTPFlow
    record: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.stem

    # -- request ---------------------------------------------------------------------------------
    @property
    def client(self) -> dict[str, Any]:
        return self.record.get("client") or {}

    @property
    def method(self) -> str:
        return _s(self.client.get("method") or self.flow.request.method)

    @property
    def request_path(self) -> str:
        return _s(self.client.get("path") or self.flow.request.path)

    @property
    def client_headers(self) -> list[tuple[str, str]]:
        raw = self.client.get("headers")
        if raw is None:
            return [(_s(k), _s(v)) for k, v in self.flow.request.headers.fields]
        return [(_s(k), _s(v)) for k, v in raw]

    @property
    def client_body(self) -> bytes:
        body = self.client.get("body")
        return body if body is not None else (self.flow.request.raw_content or b"")

    @property
    def spans(self) -> list[tuple[int, bytes]]:
        return [(int(o), t if isinstance(t, bytes) else str(t).encode()) for o, t in self.record.get("spans") or []]

    @property
    def dialect(self) -> str | None:
        route = classify(self.method, self.flow.request.pretty_host, self.request_path, any_host=True)
        return route.dialect if route else None

    # -- response --------------------------------------------------------------------------------
    @property
    def has_response(self) -> bool:
        return self.flow.response is not None

    @property
    def status(self) -> int | None:
        return self.flow.response.status_code if self.flow.response else None

    @property
    def reason(self) -> str:
        return self.flow.response.reason if self.flow.response else ""

    @property
    def response_headers(self) -> list[tuple[str, str]]:
        """Recorded response headers without the framing ones (a replay upstream adds its own)."""
        if self.flow.response is None:
            return []
        return [(_s(k), _s(v)) for k, v in self.flow.response.headers.fields if _s(k).lower() not in _FRAMING]

    @property
    def streamed(self) -> bool:
        return bool((self.record.get("response") or {}).get("streamed"))

    @property
    def chunked(self) -> bool:
        """Replay with chunked framing: it was chunked, or it was streamed (HTTP/2 has no chunking,
        but its DATA frames are boundaries worth keeping)."""
        if self.flow.response is None:
            return False
        return "chunked" in self.flow.response.headers.get("transfer-encoding", "").lower() or self.streamed

    @property
    def response_body(self) -> bytes:
        return (self.flow.response.raw_content or b"") if self.flow.response else b""

    @property
    def chunks(self) -> list[tuple[float, int]]:
        rec = self.record.get("response") or {}
        out = [(float(ms), int(n)) for ms, n in rec.get("chunks") or []]
        return out or ([(0.0, len(self.response_body))] if self.response_body else [])

    @property
    def truncated(self) -> bool:
        return bool((self.record.get("response") or {}).get("truncated") or self.client.get("request_truncated"))

    @property
    def ttfb_ms(self) -> float | None:
        return (self.record.get("response") or {}).get("ttfb_ms")

    # -- ending ----------------------------------------------------------------------------------
    @property
    def end(self) -> dict[str, Any]:
        return self.record.get("end") or {"path": "completed"}

    @property
    def end_path(self) -> str:
        return str(self.end.get("path") or "completed")

    # -- golden ----------------------------------------------------------------------------------
    @property
    def golden_path(self) -> Path:
        return golden_path(self.path)

    @property
    def header_changes(self) -> dict[str, str]:
        """Request headers the proxy recorded as its own change (the cache-diagnostics beta header)."""
        meta = self.flow.metadata.get("tokenpak")
        asked = meta.get("diagnostics") if isinstance(meta, dict) else None
        beta = asked.get("anthropic_beta") if isinstance(asked, dict) else None
        return {"anthropic-beta": beta} if isinstance(beta, str) else {}

    def golden(self) -> dict[str, Any] | None:
        p = self.golden_path
        return json.loads(p.read_text()) if p.exists() else None

    def evidence_at_rest(self) -> Evidence:
        """What the file alone proves: request side, the recorded response, the file's own bytes."""
        sent_headers = [(_s(k), _s(v)) for k, v in self.flow.request.headers.fields]
        resp_headers = [(_s(k), _s(v)) for k, v in self.flow.response.headers.fields] if self.flow.response else None
        golden = self.golden()
        return Evidence(
            dialect=self.dialect,
            client_request_headers=self.client_headers,
            client_request_body=self.client_body,
            sent_request_headers=sent_headers,
            sent_request_body=self.flow.request.raw_content,
            spans=self.spans,
            header_changes=self.header_changes,
            status_code=self.status,
            upstream_response_headers=resp_headers,
            upstream_response_body=self.response_body if self.flow.response else None,
            path=self.end_path,
            rows=[golden] if golden else None,
            artifacts={self.path.name: self.path.read_bytes()},
        )


def golden_path(flow_path: Path) -> Path:
    return flow_path.with_name(flow_path.stem + ".golden.json")


def load_recording(path: str | Path) -> Recording:
    path = Path(path)
    with open(path, "rb") as fo:
        flows = [f for f in io.FlowReader(fo).stream() if isinstance(f, http.HTTPFlow)]
    if len(flows) != 1:
        raise ValueError(f"{path}: expected one HTTP flow, found {len(flows)}")
    flow = flows[0]
    record = flow.metadata.get(RECORD_KEY)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: not recorded by tokenpak_record (no {RECORD_KEY!r} metadata)")
    return Recording(path, flow, record)


def find_flow_files(paths: Iterable[str | Path]) -> list[Path]:
    """``.mitm`` files named directly or found (sorted) under directories."""
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.mitm")) if p.is_dir() else [p]
    return out
