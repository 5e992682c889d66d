"""The addon's hooks in-process (mitmproxy's own test harness): options, exactly-once, fail-open."""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.http import Headers
from mitmproxy.test import taddons, tflow, tutils

from tokenpak_mitm.core.account.accounting import Finished, SessionFacts
from tokenpak_mitm.proxy import hooks
from tokenpak_mitm.proxy.addon import TokenPak
from tokenpak_mitm.sim.mitmdump import ADDON_SCRIPT, mitmdump_executable
from tokenpak_mitm.store.writer import StoreProcess

SSE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-6","usage":{"input_tokens":7,"output_tokens":1}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}\n\n'
)

JSON_BODY = (b'{"id":"msg_2","type":"message","model":"claude-sonnet-4-6","content":[],"stop_reason":"end_turn",'
             b'"usage":{"input_tokens":9,"output_tokens":5}}')


def anthropic_flow(resp_body: bytes | None = SSE, ctype: str = "text/event-stream"):
    req = tutils.treq(
        method=b"POST", host="api.anthropic.com", port=443, scheme=b"https", path=b"/v1/messages",
        headers=Headers(content_type="application/json", x_api_key="sk-ant-secret-xyz0123456789"),
        content=b'{"model":"claude-sonnet-4-6","messages":[{"role":"user","content":"hi"}]}',
    )
    resp = tutils.tresp(headers=Headers(content_type=ctype), content=resp_body)
    return tflow.tflow(req=req, resp=resp)


class Rows:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def submit(self, row: dict) -> None:
        self.rows.append(row)

    def close(self) -> None:
        pass


@pytest.fixture
async def addon(tmp_path: Path):
    tp = TokenPak()
    with taddons.context(tp) as tctx:
        tctx.configure(tp, tokenpak_db=str(tmp_path / "t.db"), tokenpak_cache="off")
        tp.store.close()
        tp.store = Rows()  # capture rows in memory; the store has its own tests
        yield tp, tctx


async def next_turn() -> None:
    """One turn of the event loop: mitmproxy sends the response, then the addon accounts for it."""
    await asyncio.sleep(0)


async def drive_buffered(tp: TokenPak, f) -> None:
    """The hook sequence of a buffered (or replayed) response, as mitmproxy runs it."""
    tp.requestheaders(f)
    await tp.request(f)
    tp.responseheaders(f)
    tp.response(f)
    await next_turn()


async def drive_stream(tp: TokenPak, f, chunks: list[bytes]) -> list[bytes]:
    tp.requestheaders(f)
    await tp.request(f)
    tp.responseheaders(f)
    out = [f.response.stream(c) for c in chunks]
    return out


async def test_stream_callable_is_identity_and_one_row(addon):
    tp, _ = addon
    f = anthropic_flow(resp_body=None)
    chunks = [SSE[:30], SSE[30:31], SSE[31:], b""]
    assert await drive_stream(tp, f, chunks) == chunks
    tp.response(f)
    tp.error(f)  # a late error for the same flow must not add a second row
    await next_turn()
    assert len(tp.store.rows) == 1
    row = tp.store.rows[0]
    assert (row["input_tokens"], row["output_tokens"], row["terminal_state"]) == (7, 3, "completed")


async def test_stream_callable_survives_a_tracker_bug(addon, monkeypatch):
    tp, _ = addon
    f = anthropic_flow(resp_body=None)
    tp.requestheaders(f)
    await tp.request(f)
    tp.responseheaders(f)

    class Broken:
        extract = f.response.stream.tracker.extract

        def feed_frame(self, raw: bytes) -> bool:
            raise RuntimeError("bug in a tracker")

    f.response.stream.tracker = Broken()
    chunks = [SSE, b""]
    assert [f.response.stream(c) for c in chunks] == chunks  # bytes flow on
    tp.response(f)
    await next_turn()
    assert len(tp.store.rows) == 1


async def test_a_row_waits_for_the_session_of_a_big_body_still_read_in_the_worker(addon, monkeypatch):
    # Issue 26 item 1: a flow accounted here (recorded, saved, replayed) whose body is over 32 KB
    # has its session read in the worker process; a reply back before that used to lose it.
    tp, _ = addon
    gate = asyncio.Event()

    async def slow_worker(fn, *args):
        await gate.wait()
        return fn(*args)

    monkeypatch.setattr(tp._offload, "run", slow_worker)

    def big_flow(session: str):
        f = anthropic_flow(resp_body=JSON_BODY, ctype="application/json")
        f.request.content = json.dumps({"model": "claude-sonnet-4-6", "messages": [{"role": "user", "content": "x " * 40_000}]}).encode()
        f.request.headers["x-tokenpak-session"] = session
        return f

    first, second = big_flow("big-1"), big_flow("big-2")
    await drive_buffered(tp, first)
    assert tp.store.rows == []  # not without its session
    gate.set()
    for _ in range(5):
        await next_turn()
    assert [(r["session_id"], r["turn"]) for r in tp.store.rows] == [("big-1", 1)]
    gate.clear()
    await drive_buffered(tp, second)
    tp.done()  # shutdown while the worker still reads it: read here, the row is written with it
    assert [(r["session_id"], r["turn"]) for r in tp.store.rows] == [("big-1", 1), ("big-2", 1)]


async def test_replayed_flow_parses_the_buffered_body(addon):
    # mitmdump -nr / server replay never call the stream callable: the response hook parses.
    tp, _ = addon
    f = anthropic_flow()
    await drive_buffered(tp, f)
    row = tp.store.rows[0]
    assert (row["input_tokens"], row["output_tokens"], row["frames"]) == (7, 3, 3)


async def test_error_hook_alone_gives_one_row_with_partial_usage(addon):
    tp, _ = addon
    f = anthropic_flow(resp_body=None)
    await drive_stream(tp, f, [SSE[:200]])
    from mitmproxy import flow as mflow

    f.error = mflow.Error("Client disconnected.")
    tp.error(f)
    tp.error(f)
    assert len(tp.store.rows) == 1
    assert tp.store.rows[0]["terminal_state"] == "client_disconnected"
    assert tp.store.rows[0]["usage_source"] == "partial"


async def test_other_hosts_are_ignored(addon):
    tp, _ = addon
    f = tflow.tflow(resp=True)
    await drive_buffered(tp, f)
    assert tp.store.rows == [] and f.response.stream is False


def test_extra_hosts_option(addon):
    tp, tctx = addon
    tctx.configure(tp, tokenpak_hosts=["llm.internal"])
    f = anthropic_flow()
    f.request.host = "llm.internal"
    tp.requestheaders(f)
    tp.responseheaders(f)
    tp.response(f)
    assert len(tp.store.rows) == 1 and tp.store.rows[0]["host"] == "llm.internal"


@pytest.mark.parametrize("opt, value", [("tokenpak_cache", "maybe"), ("tokenpak_cache_ttl", "2h"), ("tokenpak_console", "maybe"), ("tokenpak_cache_history", "maybe")])
def test_bad_option_values_are_rejected_clearly(addon, opt, value, capsys):
    tp, tctx = addon
    with pytest.raises(SystemExit) as stopped:  # at start-up: one line and exit status 2
        tctx.configure(tp, **{opt: value})
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and opt in err and "not started" in err
    tp.started.set()  # once running (e.g. mitmweb's options editor), mitmproxy rejects the change itself
    with pytest.raises(exceptions.OptionsError, match=opt):
        tctx.configure(tp, **{opt: value})


@pytest.mark.e2e
@pytest.mark.parametrize("setting, message", [
    ("tokenpak_cache=maybe", "tokenpak_cache must be one of"),
    ("tokenpak_console=maybe", "tokenpak_console must be true or false"),
    ("tokenpak_record_max_bytes=8 megs", "tokenpak_record_max_bytes must be a size"),
])
def test_bad_option_value_makes_mitmdump_exit_non_zero(tmp_path: Path, setting: str, message: str):
    # mitmproxy skips a script silently on a bad typed value; our string options are validated
    # in configure so the user gets a clear message and a failing exit code instead.
    proc = subprocess.run(
        [mitmdump_executable(), "-n", "-s", str(ADDON_SCRIPT), "--set", setting, "--set", f"confdir={tmp_path}",
         "--set", f"tokenpak_db={tmp_path / 't.db'}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"tokenpak: {proc.stderr.split('tokenpak: ', 1)[1].strip()}"] and message in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "listening" not in proc.stdout + proc.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("setting, suggestion", [
    ("tokenpak_cach=off", "unknown option tokenpak_cach (did you mean tokenpak_cache?)"),
    ("tokenpak_recod=/tmp/x", "unknown option tokenpak_recod (did you mean tokenpak_record?)"),
    ("tokenpak_zzz=1", "unknown option tokenpak_zzz; valid: tokenpak_cache,"),
])
def test_an_unknown_tokenpak_option_stops_start_up_naming_the_closest(tmp_path: Path, setting: str, suggestion: str):
    proc = subprocess.run(
        [mitmdump_executable(), "-n", "-s", str(ADDON_SCRIPT), "--set", setting, "--set", f"confdir={tmp_path}",
         "--set", f"tokenpak_db={tmp_path / 't.db'}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and suggestion in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "listening" not in proc.stdout + proc.stderr


@pytest.mark.e2e
def test_startup_line_names_version_db_and_mode(tmp_path: Path):
    from tokenpak_mitm.sim.mitmdump import MitmdumpProcess

    with MitmdumpProcess("reverse:https://api.anthropic.com", db=tmp_path / "x.db", confdir=tmp_path) as p:
        out = p.output()
    assert "tokenpak-mitm 0.1.0 running" in out
    assert f"db={tmp_path / 'x.db'}" in out and "mode=reverse:https://api.anthropic.com" in out


async def test_json_body_parse_failure_records_a_row_not_an_exception(addon):
    tp, _ = addon
    f = anthropic_flow(resp_body=b"{not json", ctype="application/json")
    await drive_buffered(tp, f)
    row = tp.store.rows[0]
    assert row["terminal_state"] == "completed" and row["usage_source"] == "absent" and row["cost_usd"] is None


def test_console_line_can_be_switched_off(addon, caplog):
    tp, tctx = addon
    tctx.configure(tp, tokenpak_console="false")
    f = anthropic_flow()
    with caplog.at_level("INFO", logger="tokenpak"):
        tp.requestheaders(f)
        tp.responseheaders(f)
        tp.response(f)
    assert not [r for r in caplog.records if "cache=" in r.getMessage()]
    tctx.configure(tp, tokenpak_console="true")
    f = anthropic_flow()
    with caplog.at_level("INFO", logger="tokenpak"):
        tp.requestheaders(f)
        tp.responseheaders(f)
        tp.response(f)
    lines = [r.getMessage() for r in caplog.records if "cache=" in r.getMessage()]
    assert lines and "claude-sonnet-4-6" in lines[0] and "out=3" in lines[0]


async def test_accounting_waits_until_the_response_is_sent(addon):
    # mitmproxy writes a buffered response to the client only after the `response` hook returns:
    # the row (body parse, price, session, console) is built on the next loop turn, not before.
    tp, _ = addon
    f = anthropic_flow(resp_body=JSON_BODY, ctype="application/json")
    tp.requestheaders(f)
    await tp.request(f)
    tp.responseheaders(f)
    assert tp.response(f) is None
    assert tp.store.rows == []
    tp.error(f)  # a late error must not add a second row
    await next_turn()
    assert len(tp.store.rows) == 1 and tp.store.rows[0]["output_tokens"] == 5


async def test_a_bug_after_the_row_is_queued_stays_out_of_the_event_loop(addon, monkeypatch):
    # The deferred accounting is a loop callback, not a hook: nothing may escape to asyncio.
    tp, tctx = addon
    tctx.configure(tp, tokenpak_console="true")
    tp._console = True
    import tokenpak_mitm.proxy.addon as addon_mod

    def broken(row):
        raise RuntimeError("bug in the console line")

    monkeypatch.setattr(addon_mod, "console_line", broken)
    escaped: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: escaped.append(context))
    f = anthropic_flow(resp_body=JSON_BODY, ctype="application/json")
    await drive_buffered(tp, f)
    await next_turn()
    assert escaped == []
    assert len(tp.store.rows) == 1 and tp.store.rows[0]["request_key"] == f.id


async def end_together(tp: TokenPak, n: int) -> list:
    """`n` buffered JSON responses whose `response` hooks all run before the loop turns."""
    flows = [anthropic_flow(resp_body=JSON_BODY, ctype="application/json") for _ in range(n)]
    for f in flows:
        tp.requestheaders(f)
        await tp.request(f)
        tp.responseheaders(f)
    for f in flows:
        tp.response(f)
    return flows


async def test_flows_ending_together_are_accounted_one_per_loop_turn(addon):
    # Between two accountings the loop turns, so other connections' frames are not held behind
    # a burst of rows (lockstep streams that end together).
    tp, _ = addon
    flows = await end_together(tp, 3)
    counts = []
    for _ in range(4):
        await next_turn()
        counts.append(len(tp.store.rows))
    assert counts == [1, 2, 3, 3]
    assert [r["request_key"] for r in tp.store.rows] == [f.id for f in flows]  # oldest first


async def test_done_flushes_rows_still_waiting_for_the_loop(addon):
    tp, _ = addon
    flows = await end_together(tp, 3)
    tp.done()  # shutdown before the loop turned: every row is still written
    assert sorted(r["request_key"] for r in tp.store.rows) == sorted(f.id for f in flows)


async def test_metadata_survives_serialisation(addon):
    tp, _ = addon
    f = anthropic_flow()
    await drive_buffered(tp, f)
    json.dumps(f.metadata["tokenpak"])  # tnetstring-safe plain types only
    assert "ttfb_ms" in f.metadata["tokenpak"]


@pytest.mark.e2e
def test_a_silently_skipped_script_is_reported(tmp_path: Path):
    # A duplicated --set for one of our options makes mitmproxy 12 drop the script without a word
    # and keep proxying; the startup watch says so on stderr.
    import os
    import time

    proc = subprocess.Popen(
        [mitmdump_executable(), "--listen-host", "127.0.0.1", "-p", "0", "-s", str(ADDON_SCRIPT), "--set", f"confdir={tmp_path}",
         "--set", f"tokenpak_db={tmp_path / 't.db'}", "--set", "tokenpak_cache=auto", "--set", "tokenpak_cache=off"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TOKENPAK_STARTUP_GRACE": "1"},
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "mitmproxy never started it" in line:
                break
    finally:
        proc.kill()
        proc.wait(10)
    out = "".join(lines)
    assert "mitmproxy never started it" in out
    assert "tokenpak-mitm 0.1.0 running" not in out


async def test_a_row_builder_bug_still_records_the_request(addon, monkeypatch):
    tp, _ = addon
    import tokenpak_mitm.core.account.accounting as accounting_mod

    def broken(*args):
        raise RuntimeError("bug in build_row")

    monkeypatch.setattr(accounting_mod, "build_row", broken)
    f = anthropic_flow()
    await drive_buffered(tp, f)
    assert len(tp.store.rows) == 1
    row = tp.store.rows[0]
    assert row["terminal_state"] == "proxy_error" and row["request_key"] == f.id and row["usage_source"] == "absent"


class Handoff(StoreProcess):
    """The writer-process store, not started: what the addon hands it is kept for the test."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.begun: list[tuple[str, SessionFacts]] = []
        self.finished: list[Finished] = []
        self.rows: list = []

    def begin(self, key: str, facts: SessionFacts) -> None:
        self.begun.append((key, facts))

    def account(self, done: Finished) -> None:
        self.finished.append(done)

    def submit(self, row) -> None:  # type: ignore[override]
        self.rows.append(row)

    def close(self, timeout: float = 15.0) -> None:
        pass


async def test_a_live_flow_is_accounted_in_the_writer_and_its_secrets_stay_in_the_proxy(addon, tmp_path):
    tp, _ = addon
    tp.store = store = Handoff(tmp_path / "h.db")
    secret = "sk-ant-secret-xyz0123456789"
    echo = json.dumps({"type": "error", "error": {"type": f"invalid key {secret}", "message": f"bad {secret}"}}).encode()
    f = anthropic_flow(resp_body=echo, ctype="application/json")
    f.response.status_code = 401
    f.live = True
    await drive_buffered(tp, f)
    assert [k for k, _ in store.begun] == [f.id] and store.begun[0][1].body == f.request.raw_content
    assert len(store.finished) == 1 and store.rows == []  # the writer builds the row, not the proxy
    done = store.finished[0]
    assert done.record.request_key == f.id and done.ended.state == "error_response"
    assert done.record.known_secrets == () and secret not in (done.ended.error or "")  # redacted before it leaves
    assert secret not in pickle.dumps(done).decode("latin-1")


async def test_a_flow_someone_watches_is_accounted_in_the_proxy(addon, tmp_path):
    tp, _ = addon
    tp.store = store = Handoff(tmp_path / "h.db")
    f = anthropic_flow(resp_body=JSON_BODY, ctype="application/json")
    f.live = True
    hooks.want(f, hooks.ROW)  # a recorder or live checker needs the row in this process
    await drive_buffered(tp, f)
    assert store.begun == [] and store.finished == []
    assert len(store.rows) == 1 and store.rows[0]["output_tokens"] == 5
