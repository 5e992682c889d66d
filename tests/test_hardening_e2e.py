"""Issue 15's defects, each through a real mitmdump: every one of these failed before the fix.

* the database's ``-shm`` truncated (SQLite's memory-mapped WAL index: SIGBUS killed the proxy)
  or made immutable: the proxy keeps serving, rows are kept;
* a zstd bomb as a JSON body and as an SSE stream: the proxy's peak memory stays bounded;
* a read-only database directory: rows spilled to the owner-only fallback and imported later;
* a full disk at shutdown: rows counted and logged as lost (they used to vanish without a word);
* a duplicated ``x-api-key`` and a custom ``x-gateway-token`` with recording and OTLP on: the
  canaries reach no file, log line or span;
* SIGTERM with streams in flight: ``terminal_state='proxy_shutdown'``;
* a body of 9,000 small messages still gets its markers (planned off the event loop); over the
  planning bounds (30,000 tiny messages, 40 MB) a body goes upstream untouched, `too_large`;
* a corrupt gzip SSE response: one warning line, no traceback.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Stack, _handler, make_stack, wait_for_rows
from test_faults_e2e import FRAMES, _assert_exactly_once, _burst, _ids, _in_flight
from test_otel import Collector

from tokenpak_mitm.core.observe.decoders import zstd
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.upstream import FakeUpstream, Received, Script, Step, sse_script
from tokenpak_mitm.store.sqlite import fallback_spill_path

pytestmark = pytest.mark.e2e


def _stack(tmp: Path, options: list[str] | None = None, env: dict[str, str] | None = None) -> Stack:
    scripts: dict = {}
    up = FakeUpstream(_handler(scripts)).start()
    db = tmp / "db" / "tokenpak.db"
    db.parent.mkdir(exist_ok=True)
    proxy = MitmdumpProcess(f"reverse:{up.url}", db=db, confdir=tmp, options=options or [], env=env).start()
    return Stack(upstream=up, proxy=proxy, db=db, scripts=scripts)


def _chattr(path: Path, on: bool) -> None:
    r = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, check=False)
    if r.returncode != 0 and on:
        pytest.skip(f"chattr unavailable here: {r.stderr.decode(errors='replace').strip()}")


def _alive(stack: Stack) -> bool:
    return stack.proxy.proc is not None and stack.proxy.proc.poll() is None


# -- the database's -shm -------------------------------------------------------------------------


def test_truncated_shm_costs_the_proxy_nothing_and_no_row(tmp_path: Path):
    stack = _stack(tmp_path)
    try:
        before = _burst(stack, 5)
        _assert_exactly_once(stack.db, before)
        shm = Path(str(stack.db) + "-shm")
        assert shm.exists()
        os.truncate(shm, 0)  # another process of the user shrinks the memory-mapped WAL index
        during = _burst(stack, 20)  # every response still byte-identical (asserted in _burst)
        assert _alive(stack), stack.proxy.output()[-2000:]
        _assert_exactly_once(stack.db, before + during)
    finally:
        stack.close()
    assert stack.proxy.proc is not None and stack.proxy.proc.returncode in (0, -signal.SIGINT)


def test_immutable_shm_spills_rows_and_the_next_start_imports_them(tmp_path: Path):
    stack = _stack(tmp_path)
    shm = Path(str(stack.db) + "-shm")
    try:
        before = _burst(stack, 3)
        _assert_exactly_once(stack.db, before)
        os.truncate(shm, 0)
        _chattr(shm, True)
        try:
            during = _burst(stack, 15)
            assert _alive(stack), stack.proxy.output()[-2000:]
        finally:
            stack.close()
    finally:
        _chattr(shm, False)
    out = stack.proxy.output()
    assert "LOST" not in out, out[-3000:]
    stack = _stack(tmp_path)  # imports whatever was spilled
    try:
        _assert_exactly_once(stack.db, before + during)
    finally:
        stack.close()


# -- bounded decoding ------------------------------------------------------------------------------

_BOMB_SIZE = 512 * 1024 * 1024


def _zstd_bomb(unit: bytes) -> bytes:
    """``unit`` repeated to 512 MiB, zstd-compressed (a few KB), without holding 512 MiB here."""
    comp = zstd.ZstdCompressor(level=1)
    block = unit * (1024 * 1024 // len(unit))
    parts = [comp.compress(block) for _ in range(_BOMB_SIZE // len(block))]
    return b"".join(parts) + comp.flush()


def _peak_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["json", "sse"])
def test_zstd_bomb_costs_bounded_memory(tmp_path: Path, kind: str):
    if kind == "json":
        bomb = _zstd_bomb(b" ")  # whitespace: a JSON body that never ends
        headers = [("content-type", "application/json"), ("content-encoding", "zstd")]
    else:
        bomb = _zstd_bomb(b'event: ping\ndata: {"type": "ping"}\n\n')  # valid frames, half a GiB of them
        headers = [("content-type", "text/event-stream"), ("content-encoding", "zstd")]
    assert len(bomb) < 1024 * 1024
    stack = make_stack(tmp_path)
    try:
        assert stack.proxy.proc is not None
        pid = stack.proxy.proc.pid
        _, warm = stack.call(sse_script(FRAMES))  # the proxy's steady-state peak, before the bomb
        stack.row(warm)
        base = _peak_kib(pid)
        resp, key = stack.call(Script(headers=headers, steps=[Step(bomb)], chunked=kind == "sse"))
        assert resp.body == bomb  # passed through unchanged, compressed
        row = stack.row(key)
        grown_mib = (_peak_kib(pid) - base) / 1024
        assert grown_mib < 128, f"peak memory grew {grown_mib:.0f} MiB (it was ~1.5 GiB before the fix)"
        if kind == "json":
            assert row["error"] == "response_body_too_large" and row["usage_source"] == "absent"
        assert "compression bomb" in stack.proxy.output() or kind == "json"
        _, after = stack.call(sse_script(FRAMES))  # and the proxy still serves
        assert stack.row(after)["terminal_state"] == "completed"
    finally:
        stack.close()


def test_corrupt_gzip_sse_logs_one_line_not_a_traceback(tmp_path: Path):
    stack = make_stack(tmp_path)
    try:
        garbage = b"\x1f\x8b\x08\x00garbage that is not deflate at all" * 4
        resp, key = stack.call(Script(headers=[("content-type", "text/event-stream"), ("content-encoding", "gzip")], steps=[Step(garbage)]))
        assert resp.body == garbage
        stack.row(key)
    finally:
        stack.close()
    out = stack.proxy.output()
    assert "Traceback" not in out, out[-3000:]
    assert len([line for line in out.splitlines() if "corrupt gzip data" in line]) == 1


# -- no silent loss -------------------------------------------------------------------------------


def test_readonly_database_directory_spills_to_the_fallback_and_is_imported(tmp_path: Path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"TMPDIR": str(tmpdir)}
    stack = _stack(tmp_path, env=env)
    db_dir = stack.db.parent
    stack.close()  # the database exists (and its -wal/-shm are gone after a clean close)
    for side in ("-wal", "-shm"):
        Path(str(stack.db) + side).unlink(missing_ok=True)
    _chattr(db_dir, True)
    try:
        stack = _stack(tmp_path, env=env)
        keys = _burst(stack, 18)
        stack.close()
    finally:
        _chattr(db_dir, False)
    out = stack.proxy.output()
    assert "LOST" not in out, out[-3000:]
    spilled = tmpdir / f"tokenpak-{os.getuid()}" / fallback_spill_path(stack.db).name  # the proxy's TMPDIR
    assert spilled.exists(), out[-3000:]
    assert (spilled.parent.stat().st_mode & 0o777) == 0o700 and (spilled.stat().st_mode & 0o777) == 0o600
    assert set(keys) <= {json.loads(line)["upstream_request_id"] for line in spilled.read_text().splitlines()}
    stack = _stack(tmp_path, env=env)  # the next start imports the fallback too
    try:
        _assert_exactly_once(stack.db, keys)
    finally:
        stack.close()
    assert not spilled.exists()


def test_full_disk_at_shutdown_counts_and_logs_every_lost_row(tmp_path: Path):
    stack = make_stack(tmp_path)
    assert stack.proxy.proc is not None
    _, warm = stack.call(sse_script(FRAMES))
    stack.row(warm)  # the database exists before the disk fills
    limited = [stack.proxy.proc.pid, stack.proxy.store_writer_pid()]
    for pid in limited:  # no file of either process can grow: database, spill files, ledger
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    keys = _burst(stack, 50)
    stack.close()
    out = stack.proxy.output()
    counted = sum(int(n) for n in re.findall(r"store closed: (\d+) telemetry rows LOST", out))
    stored = set(_ids(stack.db)) & set(keys)
    assert counted + len(stored) == 50, out[-3000:]  # every row written or counted, none silent
    assert counted > 0


# -- secrets by rule --------------------------------------------------------------------------------

DUP_KEY = "dupKEYvalueOfNoKnownShape77"
GATEWAY = "gwTOKENvalueOfNoKnownShape88"
CUSTOM = "customHEADERvalueNoShape99"


def test_duplicated_and_custom_auth_headers_reach_no_file_log_or_span(tmp_path: Path):
    record = tmp_path / "recorded"
    collector = Collector()
    stack = make_stack(tmp_path, options=[f"tokenpak_record={record}", f"tokenpak_otlp={collector.url}", "tokenpak_secret_headers=x-corp-pass"])
    secrets = [("x-api-key", DUP_KEY), ("x-gateway-token", GATEWAY), ("x-corp-pass", CUSTOM)]
    echo = f"invalid x-api-key {DUP_KEY}, gateway {GATEWAY}, corp {CUSTOM}"
    try:
        err = json.dumps({"type": "error", "error": {"type": "authentication_error", "message": echo}}).encode()
        _, k1 = stack.call(Script(status=401, headers=[("content-type", "application/json")], steps=[Step(err)], chunked=False), headers=secrets)
        _, k2 = stack.call(sse_script(FRAMES), headers=secrets)
        stack.call(Script(raw=f"{echo} 200 OK\r\n\r\n".encode()), headers=secrets)  # echoed into mitmproxy's error text
        assert stack.row(k1)["terminal_state"] == "error_response" and stack.row(k2)["terminal_state"] == "completed"
        assert len(wait_for_rows(stack.db, "1", (), n=3)) == 3
        deadline = time.monotonic() + 15
        while not collector.traces and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stack.close()
        collector.shutdown()
    assert list(record.glob("*.mitm")), "the recorder wrote no flow: the scan below would be vacuous"
    needles = (DUP_KEY, GATEWAY, CUSTOM)
    leaks = [(str(p), n) for p in tmp_path.rglob("*") if p.is_file() for n in needles if n.encode() in p.read_bytes()]
    assert leaks == []
    ours = "\n".join(line for line in stack.proxy.lines if "tokenpak" in line)  # mitmproxy's own lines are not ours
    assert not [n for n in needles if n in ours]
    assert collector.traces, "no span arrived: the OTLP check would be vacuous"
    exported = b"".join(t.SerializeToString() for t in collector.traces) + b"".join(m.SerializeToString() for m in collector.metrics)
    assert not [n for n in needles if n.encode() in exported]


def test_session_label_headers_of_ours_are_not_redacted():
    from tokenpak_mitm.core.redact import is_secret_header, secret_values

    assert not is_secret_header("x-tokenpak-session")
    assert secret_values([("x-tokenpak-session", "my-session-label-1")]) == ()


# -- shutdown and planning ----------------------------------------------------------------------------


def test_sigterm_with_streams_in_flight_records_proxy_shutdown(tmp_path: Path):
    stack = make_stack(tmp_path)
    keys, threads, gate = _in_flight(stack, 5)
    assert stack.proxy.proc is not None
    try:
        stack.proxy.proc.send_signal(signal.SIGTERM)
        stack.proxy.proc.wait(30)
    finally:
        gate.set()
        stack.upstream.stop()
    for t in threads:
        t.join(10)
    stack = make_stack(tmp_path)  # imports anything spilled at shutdown
    try:
        _assert_exactly_once(stack.db, keys)
        con = sqlite3.connect(stack.db)
        states = [r[0] for r in con.execute(f"SELECT terminal_state FROM requests WHERE upstream_request_id IN ({','.join('?' * len(keys))})", keys)]
        con.close()
        assert states == ["proxy_shutdown"] * len(keys)
    finally:
        stack.close()


@pytest.mark.parametrize("history", ["true", "false"])
def test_a_body_of_many_small_messages_under_the_bound_still_gets_its_markers(tmp_path: Path, history: str):
    """Offloaded by object count to the worker process with or without history: stateless planning
    whole, the learning planner split (the worker fingerprints and decides, the proxy keeps the
    memory: the second identical request is planned from what the first left there)."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(9000)]  # under PLAN_MAX_OBJECTS
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "system": "s" * 8000, "messages": msgs}).encode()
    assert len(body) < 1 << 20  # under the byte threshold: only the object count offloads it
    stack = make_stack(tmp_path, options=[f"tokenpak_cache_history={history}"])
    try:
        resp, key = stack.call(sse_script(FRAMES), body)
        assert resp.body == b"".join(FRAMES)
        row = stack.row(key)
        assert row["cache_decision"] == "inserted" and row["markers_inserted"] >= 1
        assert stack.proxy.proc is not None
        children = [Path(f"/proc/{c}/cmdline").read_bytes() for t in Path(f"/proc/{stack.proxy.proc.pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
        assert any(b"spawn_main" in c for c in children)  # planning ran in the worker process
        _, again = stack.call(sse_script(FRAMES), body)
        second = stack.row(again)
        if history == "true":  # the proxy's memory was recorded and read: no longer "nothing seen before"
            assert second["cache_reasons"] and "no_history" not in second["cache_reasons"]
        else:  # fixed rules, no memory: the same markers again
            assert second["cache_decision"] == "inserted" and second["cache_reasons"] is None
    finally:
        stack.close()
    assert "planning worker process unavailable" not in stack.proxy.output()


@pytest.mark.parametrize("history", ["true", "false"])
def test_an_openai_body_of_many_small_messages_under_the_bound_is_planned_in_the_worker(tmp_path: Path, history: str):
    """The same for a GPT-5.6 Chat Completions body: with history on the learning planner is split
    (the worker fingerprints, decides and splices; the proxy looks up and records), so the second
    identical request is planned from what the first left in the proxy's memory."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(9000)]  # under PLAN_MAX_OBJECTS
    body = json.dumps({"model": "gpt-5.6", "max_completion_tokens": 8, "messages": [{"role": "system", "content": "s" * 8000}, *msgs]}).encode()
    assert len(body) < 1 << 20
    def ok(req: Received) -> Script:  # OpenAI's request id header names the row
        return Script(headers=[("content-type", "application/json"), ("x-request-id", req.header("x-test-id") or "")], chunked=False,
                      steps=[Step(b'{"object":"chat.completion","usage":{"prompt_tokens":1,"completion_tokens":1}}')])

    stack = make_stack(tmp_path, options=[f"tokenpak_cache_history={history}"])
    try:
        _, key = stack.call(ok, body, path="/v1/chat/completions")
        row = stack.row(key)
        assert row["cache_decision"] == "inserted" and row["markers_inserted"] == 1
        assert "no_history" in row["cache_reasons"]
        assert stack.proxy.proc is not None
        children = [Path(f"/proc/{c}/cmdline").read_bytes() for t in Path(f"/proc/{stack.proxy.proc.pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
        assert any(b"spawn_main" in c for c in children)  # planning ran in the worker process
        _, again = stack.call(ok, body, path="/v1/chat/completions")
        second = stack.row(again)
        assert second["cache_decision"] == "inserted"
        if history == "true":  # the proxy's memory was recorded and read
            assert "no_history" not in second["cache_reasons"] and "repeat" in second["cache_reasons"]
        else:
            assert "no_history" in second["cache_reasons"]
    finally:
        stack.close()
    assert "planning worker process unavailable" not in stack.proxy.output()


def test_a_big_body_gets_its_session_off_the_event_loop(tmp_path: Path):
    """A big body's session fingerprints are taken outside the proxy's process (live flows: by the
    store's writer, which receives the body out of band; others: the worker process): the
    continued conversation is still recognised, turn by turn."""
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(2001)]
    first = {"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "messages": msgs}
    second = {**first, "messages": [*msgs, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and then?"}]}
    stack = make_stack(tmp_path)
    try:
        keys = []
        for request in (first, second):
            body = json.dumps(request).encode()
            assert len(body) > 32 << 10
            _, key = stack.call(sse_script(FRAMES, delay=0.2), body)
            keys.append(key)
        rows = [stack.row(k) for k in keys]
        assert rows[0]["session_id"] is not None and rows[0]["session_id"] == rows[1]["session_id"]
        assert [r["turn"] for r in rows] == [1, 2]
    finally:
        stack.close()


# -- point 8, through the proxy ------------------------------------------------------------------------

_S = b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"claude-sonnet-4-6","usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
_D = b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":42}}\n\n'
_E = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_BAD_S = b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":"x","output_tokens":-1}}}\n\n'
_BAD_D = b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":"many"}}\n\n'
_UNTYPED_S = b'event: message_start\ndata: {"message":{"id":"m","usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
_UNTYPED_ERR = b'event: error\ndata: {"error":{"type":"overloaded_error","message":"busy"}}\n\n'


@pytest.mark.parametrize(("frames", "expect"), [
    ([_BAD_S, _BAD_D, _E], {"usage_source": "absent", "input_tokens": None, "output_tokens": None}),
    ([_D, _S, _E], {"output_tokens": 42, "input_tokens": 10, "usage_source": "final", "terminal_state": "completed"}),
    ([_S], {"terminal_state": "upstream_disconnected", "usage_source": "partial"}),
    ([_UNTYPED_S, _UNTYPED_ERR], {"terminal_state": "stream_error", "error": "overloaded_error", "input_tokens": 10}),
], ids=["malformed-usage", "reversed", "no-delta-no-stop", "event-line-only"])
def test_point_8_stream_rules_through_the_proxy(stack: Stack, frames: list[bytes], expect: dict):
    resp, key = stack.call(sse_script(frames))
    assert resp.body == b"".join(frames)
    row = stack.row(key)
    assert {k: row[k] for k in expect} == expect


def test_a_corrupt_gzip_json_response_is_one_line_and_the_row_says_why(stack: Stack):
    garbage = b"\x1f\x8b\x08\x00 this is not a gzip member"
    resp, key = stack.call(Script(headers=[("content-type", "application/json"), ("content-encoding", "gzip")], steps=[Step(garbage)], chunked=False))
    assert resp.body == garbage
    row = stack.row(key)
    assert row["error"] == "response_body_undecodable" and row["usage_source"] == "absent"
    lines = [line for line in stack.proxy.lines if "response body not decoded" in line]
    assert len(lines) == 1 and "corrupt gzip data" in lines[0]


@pytest.mark.parametrize("shape", ["30k_tiny_messages", "32k_tiny_messages_over_1mib", "40_mb"])
def test_a_body_over_the_planning_bounds_goes_upstream_untouched_and_the_row_says_why(tmp_path: Path, shape: str):
    """Issue 27: planning 32,000 tiny messages took 1.5 s (the request waited for it); a body over
    PLAN_MAX_BYTES is not worth reading at all. Both are forwarded byte for byte, `too_large`."""
    if shape == "30k_tiny_messages":
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(30000)]  # (32,000 go over 1 MiB: planned off the loop)
        body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "system": "s" * 8000, "messages": msgs}, separators=(",", ":")).encode()
        assert len(body) < 1 << 20
    elif shape == "32k_tiny_messages_over_1mib":  # counted by the proxy in slices between event-loop turns
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(32000)]
        body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "messages": msgs}).encode()
        assert 1 << 20 < len(body) < 2 << 20
    else:
        msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 1000} for i in range(40000)]
        body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True, "system": "s" * 8000, "messages": msgs}).encode()
        assert len(body) > 32 << 20
    stack = make_stack(tmp_path)
    try:
        resp, key = stack.call(sse_script(FRAMES), body)
        assert resp.body == b"".join(FRAMES)
        assert stack.received(key).body == body  # untouched
        row = stack.row(key)
        assert row["cache_decision"] == "too_large" and row["markers_inserted"] == 0
        assert row["terminal_state"] == "completed"
    finally:
        stack.close()
