"""Faults through a real mitmdump: the client's bytes never change and every request gets one row.

Stream faults (client hang-up and upstream reset at every frame index, a stalled upstream, an
upstream that does not speak HTTP) check the traffic promise and the row's partial usage against
an offline replay of exactly the frames that were delivered. Database faults (read-only, deleted,
locked by another process, disk full, SIGINT, SIGKILL) check the accounting promise: no row lost
(beyond the documented crash window), none doubled, the database never corrupted.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import Stack, make_stack, wait_for_rows

from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
from tokenpak_mitm.sim.client import build_request, request
from tokenpak_mitm.sim.upstream import Script, Step, sse_script
from tokenpak_mitm.store.sqlite import SPILL_SUFFIX, TelemetryStore

pytestmark = pytest.mark.e2e

_START = {"type": "message_start", "message": {"id": "msg_f", "type": "message", "role": "assistant", "model": "claude-sonnet-4-6", "content": [], "stop_reason": None,
          "usage": {"input_tokens": 21, "cache_creation_input_tokens": 40, "cache_read_input_tokens": 900, "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 0}, "output_tokens": 1}}}


def _frame(event: str, obj: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(obj)}\n\n".encode()


def _delta(text: str) -> bytes:
    return _frame("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})


FRAMES: list[bytes] = [
    _frame("message_start", _START),
    _frame("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    _frame("ping", {"type": "ping"}),
    _delta("One"),
    _delta(" two"),
    _delta(" three"),
    _delta(" four"),
    _frame("content_block_stop", {"type": "content_block_stop", "index": 0}),
    _frame("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 17}}),
    _frame("message_stop", {"type": "message_stop"}),
]
BUCKETS = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_5m_tokens", "output_tokens")


def offline_usage(frames: list[bytes]) -> dict:
    """What the tracker reports for exactly these frames: the truth the row must match."""
    t = AnthropicTracker()
    for f in frames:
        t.feed_frame(f)
    return {k: getattr(t.extract.usage, k) for k in BUCKETS}


def rows_with(db: Path, where: str, args: tuple, timeout: float = 15.0) -> list[dict]:
    rows = wait_for_rows(db, where, args, timeout=timeout)
    time.sleep(0.3)  # a second row would arrive in the same flush window: look again
    return wait_for_rows(db, where, args, timeout=0.1) or rows


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory):
    s = make_stack(tmp_path_factory.mktemp("faults"))
    yield s
    s.close()


# -- client disconnect at every frame index -------------------------------------------------------


def _hang_up_after_headers(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
        return buf.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in buf else b""


@pytest.mark.parametrize("k", range(len(FRAMES) + 1))
def test_client_disconnect_after_k_frames(fstack: Stack, k: int):
    gate = threading.Event()  # the upstream sends nothing past frame k until the row exists
    steps = [Step(f, wait_for=gate if i == k else None, wait_timeout=30) for i, f in enumerate(FRAMES)]
    steps.append(Step(b"", wait_for=gate if k == len(FRAMES) else None, wait_timeout=30))
    script = Script(headers=[("content-type", "text/event-stream")], steps=steps)
    want = b"".join(FRAMES[:k])
    try:
        if k == 0:
            key = f"req_{uuid.uuid4().hex[:16]}"
            fstack.scripts[key] = script
            raw = build_request("POST", "/v1/messages", b'{"model":"claude-sonnet-4-6","stream":true,"messages":[]}', [("content-type", "application/json"), ("x-test-id", key)])
            body = _hang_up_after_headers(fstack.proxy.port, raw)
        else:
            resp, key = fstack.call(script, on_piece=lambda piece, r: len(r.body) >= len(want))
            assert resp.disconnected_early and not resp.complete
            body = resp.body
        assert body == want  # the client got exactly the upstream's bytes, in order
        rows = rows_with(fstack.db, "upstream_request_id = ?", (key,))
    finally:
        gate.set()
    assert len(rows) == 1, rows
    row = rows[0]
    # Gone after message_stop reached it, before the body's last chunk: it got the whole response (issue 26 item 10).
    assert row["terminal_state"] == ("completed" if k == len(FRAMES) else "client_disconnected")
    assert row["frames"] == k
    assert {b: row[b] for b in BUCKETS} == offline_usage(FRAMES[:k])
    # Final only once message_stop arrived: a message_delta alone is cumulative, not proven last.
    assert row["usage_source"] == ("absent" if k == 0 else "final" if k == len(FRAMES) else "partial")


# -- upstream reset at every frame index ----------------------------------------------------------


@pytest.mark.parametrize("k", range(len(FRAMES) + 1))
def test_upstream_reset_after_k_frames(fstack: Stack, k: int):
    resp, key = fstack.call(sse_script(FRAMES, reset_after=k))
    assert not resp.complete
    assert resp.body == b"".join(FRAMES[:k])
    rows = rows_with(fstack.db, "upstream_request_id = ?", (key,))
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["terminal_state"] == "upstream_disconnected"
    assert row["frames"] == k
    assert {b: row[b] for b in BUCKETS} == offline_usage(FRAMES[:k])
    assert row["usage_source"] in (("absent",) if k == 0 else ("partial", "final"))
    assert row["error"]


# -- stalled and garbage upstreams ------------------------------------------------------------------


def test_stalled_upstream_client_gives_up_one_row(fstack: Stack):
    gate = threading.Event()
    script = Script(headers=[("content-type", "text/event-stream")], steps=[Step(FRAMES[0]), Step(FRAMES[1], wait_for=gate, wait_timeout=30)])
    key = f"req_{uuid.uuid4().hex[:16]}"
    fstack.scripts[key] = script
    raw = build_request("POST", "/v1/messages", b'{"model":"claude-sonnet-4-6","stream":true,"messages":[]}', [("content-type", "application/json"), ("x-test-id", key)])
    got: list[bytes] = []
    try:
        with pytest.raises(TimeoutError):
            request(fstack.proxy.port, raw, on_piece=lambda p, r: got.append(p) and None, timeout=1.5)
        assert b"".join(got) == FRAMES[0]  # what arrived before the stall arrived intact
        rows = rows_with(fstack.db, "upstream_request_id = ?", (key,))
    finally:
        gate.set()
    assert len(rows) == 1
    assert rows[0]["terminal_state"] == "client_disconnected" and rows[0]["frames"] == 1
    assert rows[0]["input_tokens"] == 21 and rows[0]["usage_source"] == "partial"


GARBAGE = {
    "not_http": b"this is not HTTP at all\r\n\r\n",
    "binary": bytes(range(256)) * 4,
    "empty_close": b"",
    "bad_status_line": b"HTTP/1.1 two hundred OK\r\n\r\n",
    "bad_chunk_framing": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nevent: message_start\r\n",
    "short_content_length": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"type\":\"message\"",
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_upstream_gives_one_row_and_an_answer(fstack: Stack, name: str):
    tag = uuid.uuid4().hex[:12]
    path = f"/g{tag}/v1/messages"  # raw replies carry no request-id: find the row by its path
    resp, _ = fstack.call(Script(raw=GARBAGE[name]), path=path)
    assert resp.status in (0, 200, 502)  # a 502 from mitmproxy, or the connection closed
    rows = rows_with(fstack.db, "path = ?", (path,))
    assert len(rows) == 1, rows
    assert rows[0]["terminal_state"] in ("upstream_disconnected", "error_response", "completed", "proxy_error")
    assert rows[0]["terminal_state"] != "completed" or name == "short_content_length"


def test_the_proxy_still_serves_normally_after_all_faults(fstack: Stack):
    resp, key = fstack.call(sse_script(FRAMES))
    assert resp.complete and resp.body == b"".join(FRAMES)
    row = fstack.row(key)
    assert row["terminal_state"] == "completed" and row["usage_source"] == "final"
    assert {b: row[b] for b in BUCKETS} == offline_usage(FRAMES)
    keys = [r[0] for r in sqlite3.connect(fstack.db).execute("SELECT request_key FROM requests")]
    assert len(keys) == len(set(keys))


# -- database faults --------------------------------------------------------------------------------


def _burst(stack: Stack, n: int) -> list[str]:
    keys = []
    for _ in range(n):
        resp, key = stack.call(sse_script(FRAMES))
        assert resp.complete and resp.body == b"".join(FRAMES)  # traffic unaffected by the fault
        keys.append(key)
    return keys


def _ids(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT upstream_request_id FROM requests")]
    finally:
        con.close()


def _wait_ids(db: Path, keys: list[str], timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while time.monotonic() < deadline:
        try:
            got = _ids(db)
        except sqlite3.Error:
            got = []
        if set(keys) <= set(got):
            break
        time.sleep(0.1)
    return got


def _assert_exactly_once(db: Path, keys: list[str]) -> None:
    got = _wait_ids(db, keys)
    missing = set(keys) - set(got)
    doubled = len(got) - len(set(got))
    assert not missing and not doubled, f"lost {len(missing)} doubled {doubled}"
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def _restart(stack: Stack, tmp: Path) -> Stack:
    stack.proxy.stop()
    stack.upstream.stop()
    return make_stack(tmp)


def _set_immutable(path: Path, on: bool) -> None:
    if os.geteuid() == 0:  # permission bits do not bind root; the immutable flag does
        r = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True)
        if r.returncode != 0 and on:
            pytest.skip("root without chattr: cannot make the database read-only")
    else:
        path.chmod(0o400 if on else 0o600)


def test_readonly_database_spills_and_next_start_imports(tmp_path: Path):
    db = tmp_path / "tokenpak.db"
    s = TelemetryStore(db)
    s.start()
    s.close()
    _set_immutable(db, True)
    try:
        stack = make_stack(tmp_path)
        keys = _burst(stack, 15)
        stack.proxy.stop()  # clean shutdown while read-only: every row must be in the spill file
        stack.upstream.stop()
        spilled = [json.loads(line)["upstream_request_id"] for line in Path(str(db) + SPILL_SUFFIX).read_text().splitlines()]
        assert set(keys) <= set(spilled)
        assert _ids(db) == []
    finally:
        _set_immutable(db, False)
    stack = make_stack(tmp_path)  # the next start imports the spill file
    try:
        _assert_exactly_once(db, keys)
        spill = Path(str(db) + SPILL_SUFFIX)
        deadline = time.monotonic() + 10  # removed right after the import commits
        while spill.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not spill.exists()
    finally:
        stack.proxy.stop()
        stack.upstream.stop()


def test_database_directory_deleted_while_running(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    scripts: dict = {}
    from conftest import _handler

    from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
    from tokenpak_mitm.sim.upstream import FakeUpstream

    up = FakeUpstream(_handler(scripts)).start()
    db = home / "tokenpak.db"
    proxy = MitmdumpProcess(f"reverse:{up.url}", db=db, confdir=tmp_path).start()
    stack = Stack(upstream=up, proxy=proxy, db=db, scripts=scripts)
    try:
        first = _burst(stack, 5)
        _assert_exactly_once(db, first)
        shutil.rmtree(home)  # the user wiped ~/.tokenpak with the proxy running
        later = _burst(stack, 10)
        _assert_exactly_once(db, later)  # recreated, and nothing written into the deleted file
    finally:
        proxy.stop()
        up.stop()
    _assert_exactly_once(db, later)


_LOCKER = "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline(); c.execute('COMMIT')"


def test_database_locked_by_another_process(tmp_path: Path):
    stack = make_stack(tmp_path)
    try:
        before = _burst(stack, 3)
        _assert_exactly_once(stack.db, before)
        locker = subprocess.Popen([sys.executable, "-c", _LOCKER, str(stack.db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert locker.stdout is not None and locker.stdin is not None
        assert locker.stdout.readline().strip() == "locked"
        try:
            during = _burst(stack, 20)
            deadline = time.monotonic() + 20  # the writer gives up after its 2 s busy timeout and spills
            while not Path(str(stack.db) + SPILL_SUFFIX).exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert Path(str(stack.db) + SPILL_SUFFIX).exists()
        finally:
            locker.stdin.write("\n")
            locker.stdin.flush()
            locker.wait(10)
        _assert_exactly_once(stack.db, before + during)
    finally:
        stack.proxy.stop()
        stack.upstream.stop()
    _assert_exactly_once(stack.db, before + during)


def test_disk_full_keeps_rows_until_space_returns(tmp_path: Path):
    """Disk full, simulated for the mitmdump process alone: RLIMIT_FSIZE=0 makes every file write
    fail with EFBIG (SQLite reports a disk I/O error, the spill file fails too); restoring the limit
    frees the disk. Python ignores SIGXFSZ, so only the writes fail."""
    stack = make_stack(tmp_path)
    assert stack.proxy.proc is not None
    pid = stack.proxy.store_writer_pid()  # the process that writes the database and spill files
    try:
        before = _burst(stack, 3)
        _assert_exactly_once(stack.db, before)
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
        try:
            during = _burst(stack, 20)
            time.sleep(1.0)  # several flush attempts fail while the disk is full
            assert set(during).isdisjoint(_ids(stack.db))
            spill = Path(str(stack.db) + SPILL_SUFFIX)
            assert not spill.exists() or spill.stat().st_size == 0  # created, but nothing fits
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        _assert_exactly_once(stack.db, before + during)
        assert "cannot write" in stack.proxy.output()  # told once (EFBIG reads "disk I/O error")
    finally:
        stack.proxy.stop()
        stack.upstream.stop()


# -- shutdown and crash ------------------------------------------------------------------------------


def _in_flight(stack: Stack, n: int) -> tuple[list[str], list[threading.Thread], threading.Event]:
    """n streams that have sent their first frame and then wait (up to 30 s) for ``gate``."""
    gate = threading.Event()
    keys: list[str] = []
    started = threading.Semaphore(0)
    threads = []
    for _ in range(n):
        key = f"req_{uuid.uuid4().hex[:16]}"
        keys.append(key)
        stack.scripts[key] = Script(headers=[("content-type", "text/event-stream")], steps=[Step(FRAMES[0]), Step(FRAMES[1], wait_for=gate, wait_timeout=30)])
        raw = build_request("POST", "/v1/messages", b'{"model":"claude-sonnet-4-6","stream":true,"messages":[]}', [("content-type", "application/json"), ("x-test-id", key)])

        def run(raw: bytes = raw) -> None:
            try:
                request(stack.proxy.port, raw, on_piece=lambda p, r: started.release() and None, timeout=40)
            except OSError:
                pass

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
    for _ in range(n):
        assert started.acquire(timeout=20)
    return keys, threads, gate


def test_clean_shutdown_with_streams_in_flight_loses_nothing(tmp_path: Path):
    stack = make_stack(tmp_path)
    done = _burst(stack, 10)
    keys, threads, gate = _in_flight(stack, 5)
    try:
        assert stack.proxy.stop() is not None  # SIGINT while 5 streams are open
    finally:
        gate.set()
        stack.upstream.stop()
    for t in threads:
        t.join(10)
    stack = make_stack(tmp_path)  # imports anything spilled at shutdown
    try:
        _assert_exactly_once(stack.db, done + keys)
        con = sqlite3.connect(stack.db)
        states = {r[0] for r in con.execute(f"SELECT terminal_state FROM requests WHERE upstream_request_id IN ({','.join('?' * len(keys))})", keys)}
        con.close()
        assert states and "completed" not in states
    finally:
        stack.proxy.stop()
        stack.upstream.stop()


def test_sigkill_loses_at_most_the_last_second_and_never_corrupts(tmp_path: Path):
    stack = make_stack(tmp_path)
    assert stack.proxy.proc is not None
    old = _burst(stack, 30)
    time.sleep(1.0)  # the documented crash window: rows older than this must survive
    keys, threads, gate = _in_flight(stack, 5)
    stack.proxy.proc.send_signal(signal.SIGKILL)
    stack.proxy.proc.wait(10)
    gate.set()
    stack.upstream.stop()
    for t in threads:
        t.join(10)
    con = sqlite3.connect(stack.db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    got = _ids(stack.db)
    assert set(old) <= set(got) and len(got) == len(set(got))
    stack = make_stack(tmp_path)  # restarts cleanly on the crashed database
    try:
        more = _burst(stack, 3)
        _assert_exactly_once(stack.db, old + more)
    finally:
        stack.proxy.stop()
        stack.upstream.stop()


# -- the store's writer process hung (SIGSTOP) or killed, under load (issue 27) -----------------------

_BIG = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8, "stream": True,
                   "messages": [{"role": "user", "content": "x" * (256 * 1024)}]}).encode()  # beyond the pipe's 64 KiB buffer


_SMALL = b'{"model":"claude-sonnet-4-6","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"hi"}]}'


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _gone(pid: int) -> bool:
    """Exited (or a zombie waiting for its reaper): neither running nor stopped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _load(stack: Stack, n: int, body: bytes = _BIG, workers: int = 8) -> list[str]:
    """n streamed requests, ``workers`` at a time; every response must be intact."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> str:
        resp, key = stack.call(sse_script(FRAMES), body)
        assert resp.complete and resp.body == b"".join(FRAMES)
        return key

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(n)))


def _stop_and_restart(stack: Stack, tmp: Path, writers: list[int]) -> tuple[Stack, str]:
    stack.proxy.stop(timeout=30)
    out = stack.proxy.output()
    assert all(_gone(pid) for pid in writers), "a store writer outlived the proxy"
    stack.upstream.stop()
    return make_stack(tmp), out


def test_a_writer_hung_across_shutdown_loses_no_row_and_is_not_left_behind(tmp_path: Path):
    """SIGSTOP the writer, send 120 requests of 256 KiB, stop the proxy: it waits a bounded
    time, kills the writer and spills what was not acknowledged; the next start imports it."""
    stack = make_stack(tmp_path)
    writer = stack.proxy.store_writer_pid()
    before = _load(stack, 10)
    _assert_exactly_once(stack.db, before)
    rss0 = _rss_mib(stack.proxy.pid)
    os.kill(writer, signal.SIGSTOP)
    peak = rss0
    try:
        during: list[str] = []
        for _ in range(6):
            during += _load(stack, 20)
            peak = max(peak, _rss_mib(stack.proxy.pid))
        stopped = stack.proxy
        stack, out = _stop_and_restart(stack, tmp_path, [writer])
        # Bounded, not forever: the proxy exited by itself within the stop's 30 s, it was not killed.
        assert stopped.proc is not None and stopped.proc.returncode != -signal.SIGKILL, stopped.proc
    finally:
        try:
            os.kill(writer, signal.SIGCONT)
        except ProcessLookupError:
            pass
    try:
        _assert_exactly_once(stack.db, before + during)
        assert "none lost" in out, out[-3000:]
        assert peak - rss0 < 64, f"RSS grew {peak - rss0:.0f} MiB while the writer was hung (30 MiB of bodies)"
    finally:
        stack.close()


def test_a_writer_hung_for_ten_seconds_under_load_is_replaced_and_costs_no_row(tmp_path: Path):
    stack = make_stack(tmp_path)
    writer = stack.proxy.store_writer_pid()
    keys = _load(stack, 10, workers=4)
    os.kill(writer, signal.SIGSTOP)
    hung_at = time.monotonic()
    rss0, peak = _rss_mib(stack.proxy.pid), 0.0
    while time.monotonic() - hung_at < 10:
        keys += _load(stack, 16, workers=4)
        peak = max(peak, _rss_mib(stack.proxy.pid))
    try:
        os.kill(writer, signal.SIGCONT)  # too late: it was treated as gone (and killed) after ACK_TIMEOUT
    except ProcessLookupError:
        pass
    keys += _load(stack, 10, workers=4)
    new = stack.proxy.store_writer_pid()
    assert new != writer
    try:
        assert wait_until_rows(stack.db, keys)  # the replacement writer imports the proxy's spill while running
        assert "is unresponsive: no acknowledgement since" in stack.proxy.output()
        assert peak - rss0 < 64, f"RSS grew {peak - rss0:.0f} MiB"
        stack, out = _stop_and_restart(stack, tmp_path, [writer, new])
        assert "none lost" in out
        _assert_exactly_once(stack.db, keys)
    finally:
        stack.close()


def test_a_writer_killed_again_and_again_under_load_costs_no_row(tmp_path: Path):
    stack = make_stack(tmp_path)
    keys: list[str] = []
    writers: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            try:
                pid = stack.proxy.store_writer_pid(timeout=6)
            except RuntimeError:
                continue
            writers.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            stop.wait(0.5)

    t = threading.Thread(target=killer)
    t.start()
    try:
        deadline = time.monotonic() + 90
        while len(writers) < 4 and time.monotonic() < deadline:  # (restarts back off: 0.2, 1, then 5 s)
            keys += _load(stack, 16, body=_SMALL, workers=4)
    finally:
        stop.set()
        t.join()
    try:
        assert len(writers) >= 4
        writers.append(stack.proxy.store_writer_pid())
        stack, out = _stop_and_restart(stack, tmp_path, writers)
        assert "none lost" in out
        _assert_exactly_once(stack.db, keys)
    finally:
        stack.close()


def wait_until_rows(db: Path, keys: list[str], timeout: float = 30.0) -> bool:
    return set(keys) <= set(_wait_ids(db, keys, timeout))
