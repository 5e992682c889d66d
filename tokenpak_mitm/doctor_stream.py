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
import os
import re
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Mitmdump", "mitmdump_command", "StreamCheck", "check_streaming", "SseStub", "FRAMES"]

_LISTENING = re.compile(r"listening at \[?([0-9a-fA-F.:]+?)\]?:(\d+)\.?\s*$")
_ADDON_RUNNING = "tokenpak-mitm"
PAUSE = 5.0  # seconds the upstream holds the rest of the stream when the first frame is not seen


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


MODEL = "tokenpak-doctor"
FRAMES: tuple[bytes, ...] = (
    _sse("message_start", {"type": "message_start", "message": {
        "id": "msg_doctor", "type": "message", "role": "assistant", "model": MODEL, "content": [], "stop_reason": None,
        "usage": {"input_tokens": 11, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1}}}),
    _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ok"}}),
    _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
    _sse("message_stop", {"type": "message_stop"}),
)


def mitmdump_command() -> list[str]:
    """mitmdump of *this* environment: the script beside the interpreter, else the module."""
    script = Path(sys.executable).parent / "mitmdump"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())"]


@dataclass
class Mitmdump:
    """A mitmdump subprocess; ``start`` returns once every listener reports its port."""

    args: Sequence[str]
    expect_listeners: int = 1
    expect_addon: bool = True
    env: dict[str, str] | None = None
    output: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _addon_seen: bool = False

    def start(self, timeout: float = 60.0) -> Mitmdump:
        self.proc = subprocess.Popen(
            [*mitmdump_command(), *self.args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=self.env, start_new_session=True,
        )
        threading.Thread(target=self._read, name="mitmdump-output", daemon=True).start()
        if not self._ready.wait(timeout) or len(self.ports) < self.expect_listeners:
            self.stop()
            raise RuntimeError("mitmdump did not start listening:\n" + self.text)
        if self.expect_addon and not self._addon_seen:
            self.stop()
            raise RuntimeError("mitmdump started but the tokenpak addon did not load:\n" + self.text)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))
            m = _LISTENING.search(line)
            if m:
                self.ports.append(int(m[2]))
            if _ADDON_RUNNING in line and "running" in line:
                self._addon_seen = True
            if len(self.ports) >= self.expect_listeners and (self._addon_seen or not self.expect_addon):
                self._ready.set()
        self._ready.set()  # exited: let start() report the output

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def text(self) -> str:
        return "\n".join(self.output)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (mitmdump runs its ``done`` hooks, so the store flushes), then kill."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        return self.proc.returncode

    def __enter__(self) -> Mitmdump:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SseStub(socketserver.ThreadingTCPServer):
    """Loopback upstream: first frame, then the rest only once ``release`` is set (or PAUSE ends)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, pause: float = PAUSE) -> None:
        self.pause = pause
        self.release = threading.Event()
        self.rest_sent = threading.Event()
        super().__init__(("127.0.0.1", 0), _StubHandler)
        threading.Thread(target=self.serve_forever, name="doctor-sse-stub", daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _StubHandler(socketserver.StreamRequestHandler):
    server: SseStub

    def handle(self) -> None:
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        self.rfile.read(length)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        self.wfile.write(head + _chunk(FRAMES[0]))
        self.wfile.flush()
        self.server.release.wait(self.server.pause)
        self.server.rest_sent.set()
        self.wfile.write(b"".join(_chunk(f) for f in FRAMES[1:]) + b"0\r\n\r\n")
        self.wfile.flush()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@dataclass(frozen=True, slots=True)
class StreamCheck:
    ok: bool
    unbuffered: bool
    intact: bool
    recorded: bool
    detail: str
    row: dict[str, Any] | None = None


def _addon_script(tmp: Path) -> str:
    from tokenpak_mitm.setup_cmd import addon_script_path

    script = Path(addon_script_path())
    if script.is_file():
        return str(script)
    fallback = tmp / "tokenpak_addon.py"  # installed without the checkout: same two lines
    from tokenpak_mitm.files import write_private

    write_private(fallback, "from tokenpak_mitm.addon import TokenPak\naddons = [TokenPak()]\n")
    return str(fallback)


def check_streaming(pause: float = PAUSE, timeout: float = 60.0) -> StreamCheck:
    """Run the whole check in a throwaway confdir and database; never touches the user's."""
    with tempfile.TemporaryDirectory(prefix="tokenpak-doctor-") as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "doctor.db"
        stub = SseStub(pause)
        args = ["--listen-host", "127.0.0.1", "-p", "0", "--mode", f"reverse:http://127.0.0.1:{stub.port}",
                "-s", _addon_script(tmp), "--set", f"tokenpak_db={db}", "--set", f"confdir={tmp / 'confdir'}"]
        proxy = Mitmdump(args)
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


def _stream_once(port: int, stub: SseStub, timeout: float) -> tuple[bool, bytes]:
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
        unbuffered = received == FRAMES[0] and not stub.rest_sent.is_set()
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

