"""The doctor's end-to-end check: one streamed request through a temporary mitmdump.

Why this shape: a buffering proxy breaks every streaming client silently (the text arrives all at
once at the end), and only a real mitmdump process with the real addon script can show it. The
proof needs no clock: the loopback upstream sends the first SSE frame and then *holds the rest*
until the client reports that frame arrived (or a pause runs out). If the client saw the first
frame while the rest was still held, nothing buffered it. The temporary database then shows
whether the addon recorded the request.
"""

from __future__ import annotations

import http.client
import json
import signal
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenpak_mitm.proxy.launch import SCRIPT  # inside the package: a pip install has it too
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.replies import Reply, render_frames
from tokenpak_mitm.sim.upstream import FakeUpstream, Script, Step

__all__ = ["StreamCheck", "check_streaming", "FRAMES"]
PAUSE = 5.0  # seconds the upstream holds the rest of the stream when the first frame is not seen
MODEL = "tokenpak-doctor"
# One short Messages stream, written by the fake upstream's dialect layer: "ok", 11 in, 2 out.
FRAMES: tuple[bytes, ...] = tuple(render_frames("anthropic", Reply(
    id="msg_doctor", model=MODEL, text="ok", text_deltas=1,
    usage={"input_tokens": 11, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 2},
)))


class _HeldStream:
    """The loopback upstream (the shared FakeUpstream): the first frame, then the rest only once
    ``release`` is set or ``pause`` ends; ``rest_step.waited`` stays empty while it is held."""

    def __init__(self, pause: float = PAUSE) -> None:
        self.release = threading.Event()
        self.rest_step = Step(b"".join(FRAMES[1:]), wait_for=self.release, wait_timeout=pause)
        script = Script(headers=[("content-type", "text/event-stream")], steps=[Step(FRAMES[0]), self.rest_step], close=True)
        self.upstream = FakeUpstream(lambda _req: script).start()

    @property
    def port(self) -> int:
        return self.upstream.port

    @property
    def rest_sent(self) -> bool:
        return bool(self.rest_step.waited)

    def close(self) -> None:
        self.release.set()
        self.upstream.stop()


@dataclass(frozen=True, slots=True)
class StreamCheck:
    ok: bool
    unbuffered: bool
    intact: bool
    recorded: bool
    detail: str
    row: dict[str, Any] | None = None


def check_streaming(pause: float = PAUSE, timeout: float = 60.0) -> StreamCheck:
    """Run the whole check in a throwaway confdir and database; never touches the user's."""
    with tempfile.TemporaryDirectory(prefix="tokenpak-doctor-") as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "doctor.db"
        stub = _HeldStream(pause)
        args = ["--listen-host", "127.0.0.1", "-p", "0", "--mode", f"reverse:http://127.0.0.1:{stub.port}",
                "-s", str(SCRIPT), "--set", f"tokenpak_db={db}", "--set", f"confdir={tmp / 'confdir'}"]
        # SIGTERM and its own session: a Ctrl-C at the doctor's terminal is not also sent to it.
        proxy = MitmdumpProcess.from_args(args, stop_signal=signal.SIGTERM, start_new_session=True)
        try:
            try:
                proxy.start(timeout)
            except RuntimeError as e:
                return StreamCheck(False, False, False, False, str(e))
            unbuffered, body = _stream_once(proxy.port, stub, pause + timeout)
        except OSError as e:
            return StreamCheck(False, False, False, False, f"request through the proxy failed: {e}\n{proxy.text}")
        finally:
            stub.close()
            proxy.stop()
        intact = body == b"".join(FRAMES)
        row = _recorded_row(db)
        recorded = bool(row and row.get("terminal_state") == "completed" and row.get("output_tokens") == 2)
        problems = []
        if not unbuffered:
            problems.append("the first SSE frame reached the client only after the upstream sent the rest: the response was buffered")
        if not intact:
            problems.append("the streamed body arrived changed")
        if not recorded:
            problems.append(f"the addon did not record the request as completed with usage (row: {row})")
        return StreamCheck(not problems, unbuffered, intact, recorded, "; ".join(problems) or "first frame arrived before the rest was sent; row recorded", row)


def _stream_once(port: int, stub: _HeldStream, timeout: float) -> tuple[bool, bytes]:
    """Returns (first frame seen while the rest was still held, whole body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = json.dumps({"model": MODEL, "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "ping"}]})
        conn.request("POST", "/v1/messages", body=body, headers={"content-type": "application/json", "anthropic-version": "2023-06-01"})
        resp = conn.getresponse()
        received = b""
        while not received.endswith(b"\n\n"):
            line = resp.readline()
            if not line:
                break
            received += line
        unbuffered = received == FRAMES[0] and not stub.rest_sent
        stub.release.set()
        return unbuffered, received + resp.read()
    finally:
        conn.close()


def _recorded_row(db: Path) -> dict[str, Any] | None:
    """The row the addon wrote (the store flushes on mitmdump's clean shutdown)."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            if db.is_file():
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                conn.row_factory = sqlite3.Row
                try:
                    row = conn.execute("SELECT * FROM requests ORDER BY id LIMIT 1").fetchone()
                finally:
                    conn.close()
                if row is not None:
                    return dict(row)
        except sqlite3.Error:
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)

