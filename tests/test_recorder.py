"""tokenpak_record: what a recorded flow holds, that nothing secret reaches it, and that it replays.

Recordings are made through a real mitmdump (``make_stack``) exactly as users make them.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Stack, make_stack
from mitmproxy import exceptions, io
from mitmproxy.test import taddons

from tokenpak_mitm.conformance.flowfile import Recording, find_flow_files, load_recording
from tokenpak_mitm.conformance.golden import compare_golden, stable_row
from tokenpak_mitm.conformance.replay import ReplayResult
from tokenpak_mitm.conformance.session import run_conformance
from tokenpak_mitm.conformance.wire import remove_inserted
from tokenpak_mitm.core.secret_scan import scan_paths
from tokenpak_mitm.proxy.record_redact import redact_chunks, redact_request_bodies
from tokenpak_mitm.proxy.recorder import Recorder, RecordingStream, _Writer
from tokenpak_mitm.sim.mitmdump import ADDON_SCRIPT, MitmdumpProcess, mitmdump_executable
from tokenpak_mitm.sim.upstream import Script, Step, sse_script

ROOT = Path(__file__).resolve().parents[1]
CANARY = b"sk-ant-canary-0123456789abcdef"  # the key conftest's Stack.call sends
FRAMES = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_rec","model":"claude-sonnet-4-6","usage":{"input_tokens":20,"cache_creation_input_tokens":0,"cache_read_input_tokens":3000,"output_tokens":1}}}\n\n',
    b'event: ping\ndata: {"type": "ping"}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]
LONG_SYSTEM = "Follow the house style guide for every answer, section by section. " * 200


@pytest.fixture(scope="module")
def rec_stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("rec")
    s = make_stack(tmp, options=[f"tokenpak_record={tmp / 'flows'}"])
    s.flows = tmp / "flows"  # type: ignore[attr-defined]
    yield s
    s.close()


def recording_for(stack: Stack, key: str, timeout: float = 10.0) -> Recording:
    flow_id = stack.row(key)["request_key"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(stack.flows.glob(f"*-{flow_id}.mitm"))  # type: ignore[attr-defined]
        if found:
            return load_recording(found[0])
        time.sleep(0.02)
    raise AssertionError(f"no recording for {flow_id}")


# -- options --------------------------------------------------------------------------------------
def test_options_are_validated_in_configure(tmp_path: Path):
    rec = Recorder()
    with taddons.context(rec) as tctx:
        with pytest.raises(SystemExit):  # before running: mitmdump stops with one line
            tctx.configure(rec, tokenpak_record_max_bytes="10")
        rec.is_running = True  # after: the error goes back to mitmproxy, which rejects the change
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(rec, tokenpak_record_max_bytes="10")
        (tmp_path / "a-file").write_text("x")
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(rec, tokenpak_record=str(tmp_path / "a-file"))
        tctx.configure(rec, tokenpak_record=str(tmp_path / "new" / "dir"))
        assert (tmp_path / "new" / "dir").is_dir()
        assert stat.S_IMODE((tmp_path / "new" / "dir").stat().st_mode) == 0o700
        tctx.configure(rec, tokenpak_record="")
        rec.done()


@pytest.mark.e2e
def test_a_bad_option_value_stops_mitmdump(tmp_path: Path):
    proc = MitmdumpProcess("reverse:http://127.0.0.1:9", db=tmp_path / "db", confdir=tmp_path, options=["tokenpak_record_max_bytes=5"])
    with pytest.raises(RuntimeError, match="tokenpak_record_max_bytes"):
        proc.start(timeout=20)


def test_the_writer_drops_rather_than_buffers_past_its_budget(tmp_path: Path):
    writer = _Writer(budget=100)
    assert not writer.submit(tmp_path / "x.mitm", {}, 1000)
    assert writer.dropped == 1
    writer.close()


# -- what a recording holds ------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_streamed_flow_is_recorded_whole_with_its_chunks_and_no_secret(rec_stack: Stack):
    body = b"".join(FRAMES)
    cuts = [body[:50], body[50:51], body[51:400], body[400:]]  # frames split across chunks
    script = Script(headers=[("content-type", "text/event-stream"), ("set-cookie", "sid=cookie-value-kept-live")], steps=[Step(c, delay=0.01) for c in cuts])
    resp, key = rec_stack.call(script)
    rec = recording_for(rec_stack, key)
    assert stat.S_IMODE(rec.path.stat().st_mode) == 0o600
    with open(rec.path, "rb") as fo:
        assert len(list(io.FlowReader(fo).stream())) == 1
    assert rec.response_body == body and [n for _, n in rec.chunks] == [len(c) for c in cuts]
    times = [ms for ms, _ in rec.chunks]
    assert times == sorted(times) and times[0] == 0.0
    assert rec.record["response"]["streamed"] is True and rec.truncated is False
    assert rec.end_path == "completed"
    assert rec.client_body == rec.flow.request.raw_content == rec_stack.received(key).body  # nothing inserted: same bytes
    assert dict(rec.client_headers)["x-api-key"] == "[REDACTED]" == rec.flow.request.headers["x-api-key"]
    assert rec.flow.response.headers["set-cookie"] == "[REDACTED]"
    assert scan_paths([rec.path], canaries=[CANARY, b"cookie-value-kept-live"]) == []
    # the live flow was never touched: the upstream got the key, the client got the cookie
    assert rec_stack.received(key).header("x-api-key") == CANARY.decode()
    assert resp.header("set-cookie") == "sid=cookie-value-kept-live"


@pytest.mark.e2e
def test_inserted_spans_explain_the_difference_even_after_redaction(rec_stack: Stack):
    secret = "sk-ant-api03-" + "Z" * 40
    body = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True,
                       "system": [{"type": "text", "text": LONG_SYSTEM + f" The key is {secret}."}],
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    _, key = rec_stack.call(sse_script(FRAMES), body)
    rec = recording_for(rec_stack, key)
    assert rec.spans, "a long system prompt without markers should get proxy markers"
    sent = rec.flow.request.raw_content
    assert remove_inserted(sent, rec.spans) == rec.client_body
    assert secret.encode() not in rec.path.read_bytes() and b"[REDACTED]" in rec.client_body
    assert secret.encode() in rec_stack.received(key).body  # the upstream still got the prompt as written


@pytest.mark.e2e
def test_client_disconnect_and_upstream_reset_are_recorded(rec_stack: Stack):
    _, key = rec_stack.call(sse_script(FRAMES, delay=0.05), on_piece=lambda piece, resp: b"text_delta" in resp.body)
    rec = recording_for(rec_stack, key)
    assert rec.end_path == "client_disconnected" and rec.end["where"] == "mid_response"
    assert rec.end["after_bytes"] == len(rec.response_body) >= sum(map(len, FRAMES[:3]))
    _, key = rec_stack.call(sse_script(FRAMES, reset_after=3))
    rec = recording_for(rec_stack, key)
    assert rec.end_path == "upstream_disconnected" and rec.response_body == b"".join(FRAMES[:3])


@pytest.mark.e2e
def test_query_keys_and_echoed_keys_are_redacted(rec_stack: Stack):
    gkey = "AIzaSy" + "Q" * 33
    err = json.dumps({"error": {"code": 400, "message": f"API key not valid: {gkey}", "status": "INVALID_ARGUMENT"}}).encode()
    script = Script(status=400, reason="Bad Request", headers=[("content-type", "application/json")], steps=[Step(err)], chunked=False)
    _, key = rec_stack.call(script, b'{"contents":[]}', path=f"/v1beta/models/gemini-2.5-flash:generateContent?key={gkey}")
    rec = recording_for(rec_stack, key)
    raw = rec.path.read_bytes()
    assert gkey.encode() not in raw
    assert "key=[REDACTED]" in rec.flow.request.path and "key=[REDACTED]" in rec.request_path
    assert b"API key not valid: [REDACTED]" in rec.response_body


@pytest.mark.e2e
def test_flows_that_are_not_llm_requests_are_not_recorded(rec_stack: Stack):
    before = set(rec_stack.flows.glob("*.mitm"))  # type: ignore[attr-defined]
    rec_stack.call(Script(headers=[("content-type", "application/json")], steps=[Step(b"{}")], chunked=False), path="/v1/models")
    time.sleep(0.3)
    assert set(rec_stack.flows.glob("*.mitm")) == before  # type: ignore[attr-defined]


@pytest.mark.e2e
def test_the_size_cap_cuts_the_recording_not_the_traffic(tmp_path: Path):
    stack = make_stack(tmp_path, options=[f"tokenpak_record={tmp_path / 'flows'}", "tokenpak_record_max_bytes=2048"])
    stack.flows = tmp_path / "flows"  # type: ignore[attr-defined]
    try:
        filler = [b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"' + b"x" * 400 + b'"}}\n\n'] * 20
        frames = FRAMES[:2] + filler + FRAMES[4:]
        resp, key = stack.call(sse_script(frames))
        assert resp.body == b"".join(frames)
        rec = recording_for(stack, key)
        assert rec.record["response"]["truncated"] is True and rec.truncated
        assert len(rec.response_body) <= 2048
    finally:
        stack.proxy.stop()
        stack.upstream.stop()


# -- redaction keeps recordings checkable ---------------------------------------------------------
def test_request_redaction_recomputes_span_offsets():
    client = b'{"system":"key sk-ant-api03-AAAAAAAAAAAAAAAAAAAA here","messages":[]}'
    at = client.index(b'"messages"')
    span = b'"x":1,'
    sent = client[:at] + span + client[at:]
    new_client, new_sent, spans, changed = redact_request_bodies(client, sent, [(at, span)])
    assert changed == 2 and b"sk-ant" not in new_client + new_sent
    assert remove_inserted(new_sent, spans) == new_client


def test_response_redaction_keeps_chunk_boundaries_unless_a_secret_straddles_them():
    body = b"data: sk-ant-api03-BBBBBBBBBBBBBBBBBBBB\n\ndata: ok\n\n"
    first = body.index(b"data: ok")
    out, chunks, _ = redact_chunks(body, [[0.0, first], [5.0, len(body) - first]])
    assert b"sk-ant" not in out and [n for _, n in chunks] == [len(out) - 10, 10]
    out, chunks, _ = redact_chunks(body, [[0.0, 20], [5.0, len(body) - 20]])  # the key spans the cut
    assert b"sk-ant" not in out and len(chunks) == 1


# -- record, then replay ----------------------------------------------------------------------------
@pytest.mark.e2e
def test_a_recorded_session_replays_green_with_its_chunks_and_pacing(tmp_path: Path):
    stack = make_stack(tmp_path, options=[f"tokenpak_record={tmp_path / 'flows'}"])
    gaps = [0.0, 0.05, 0.35, 0.05, 0.25, 0.05]  # two long stalls the replay must reproduce
    try:
        stack.call(Script(headers=[("content-type", "text/event-stream")], steps=[Step(f, delay=d) for f, d in zip(FRAMES, gaps)]))
        stack.call(sse_script(FRAMES, delay=0.02), on_piece=lambda piece, resp: b"text_delta" in resp.body)
        stack.call(sse_script(FRAMES, reset_after=4, delay=0.02))
    finally:
        stack.proxy.stop()
        stack.upstream.stop()
    kept: list[ReplayResult] = []
    outcomes = run_conformance([tmp_path / "flows"], fast=False, update_golden=True, keep=kept)
    bad = {o.name: {k: [str(v) for v in r or []] for k, r in o.results.items() if r} for o in outcomes if o.failed}
    assert len(outcomes) == 3 and not bad, bad
    paced = next(r for r in kept if r.recording.end_path == "completed")
    # chunk boundaries: exactly the recorded ones
    assert [len(p) for _, p in paced.response.pieces] == [n for _, n in paced.recording.chunks] == [len(f) for f in FRAMES]
    # pacing (noisy machines): the two long stalls are still the two longest gaps, and the whole
    # stream takes about as long as it did live (generous bounds, no absolute milliseconds)
    arrivals = [t for t, _ in paced.response.pieces]
    replay_gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    longest = sorted(range(len(replay_gaps)), key=replay_gaps.__getitem__)[-2:]
    assert sorted(longest) == [1, 3], replay_gaps
    recorded = paced.recording.chunks[-1][0] / 1000.0
    assert 0.5 * recorded <= arrivals[-1] - arrivals[0] <= 3 * recorded + 0.3
    endings = sorted(r.recording.end_path for r in kept)
    assert endings == ["client_disconnected", "completed", "upstream_disconnected"]


# -- mitmdump -nr reproduces the live row -------------------------------------------------------
def _nr_rows(flow_file: Path, tmp: Path) -> dict[str, dict]:
    """Rows by request key from ``mitmdump -nr FILE -s addons/tokenpak.py`` into a new db."""
    db = tmp / "nr.db"
    proc = subprocess.run(
        [mitmdump_executable(), "-q", "-nr", str(flow_file), "-s", str(ADDON_SCRIPT), "--set", f"tokenpak_db={db}", "--set", f"confdir={tmp}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    rows = {r["request_key"]: dict(r) for r in con.execute("SELECT * FROM requests")}
    con.close()
    return rows


@pytest.mark.e2e
def test_mitmdump_nr_on_a_fresh_recording_gives_the_live_row(rec_stack: Stack, tmp_path: Path):
    _, key = rec_stack.call(sse_script(FRAMES, delay=0.01))
    live = rec_stack.row(key)
    rec = recording_for(rec_stack, key)
    [replayed] = _nr_rows(rec.path, tmp_path).values()
    assert replayed["request_key"] == live["request_key"]
    assert compare_golden(stable_row(live), replayed) == []
    assert (replayed["ttfb_ms"], replayed["ttft_ms"], replayed["duration_ms"]) == (live["ttfb_ms"], live["ttft_ms"], live["duration_ms"])


CORPUS = [load_recording(p) for p in find_flow_files([ROOT / "flows"])]


@pytest.fixture(scope="module")
def corpus_nr_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """One ``mitmdump -nr`` over the whole corpus (flow files concatenate), rows by flow id."""
    tmp = tmp_path_factory.mktemp("nr")
    combined = tmp / "corpus.mitm"
    combined.write_bytes(b"".join(rec.path.read_bytes() for rec in CORPUS))
    return _nr_rows(combined, tmp)


def _cut_short(rec: Recording) -> bool:
    return rec.has_response and rec.end_path != "completed"


@pytest.mark.e2e
def test_mitmdump_nr_on_the_corpus_gives_the_golden_rows(corpus_nr_rows: dict[str, dict]):
    mismatched = {
        rec.name: [v.message for v in compare_golden(rec.golden(), corpus_nr_rows.get(rec.flow.id)) or []]
        for rec in CORPUS if not _cut_short(rec)
    }
    assert len(mismatched) >= 20 and not any(mismatched.values()), mismatched


@pytest.mark.e2e
def test_mitmdump_nr_on_cut_short_flows_gives_the_golden_rows(corpus_nr_rows: dict[str, dict]):
    cut = [rec for rec in CORPUS if _cut_short(rec)]
    assert cut
    mismatched = {rec.name: [v.message for v in compare_golden(rec.golden(), corpus_nr_rows.get(rec.flow.id)) or []] for rec in cut}
    assert not any(mismatched.values()), mismatched


@pytest.mark.e2e
def test_re_recording_a_replayed_flow_keeps_the_client_bytes_and_spans(tmp_path: Path):
    original = load_recording(ROOT / "flows" / "anthropic_stream_proxy_insert.mitm")
    assert original.spans
    subprocess.run(
        [mitmdump_executable(), "-q", "-nr", str(original.path), "-s", str(ADDON_SCRIPT), "--set", f"tokenpak_db={tmp_path / 'db'}",
         "--set", f"tokenpak_record={tmp_path / 'again'}", "--set", f"confdir={tmp_path}"],
        check=True, capture_output=True, timeout=60,
    )
    [again] = [load_recording(p) for p in find_flow_files([tmp_path / "again"])]
    assert (again.client_body, again.spans, again.client_headers) == (original.client_body, original.spans, original.client_headers)
    assert (again.response_body, again.chunks, again.end) == (original.response_body, original.chunks, original.end)
    assert remove_inserted(again.flow.request.raw_content, again.spans) == again.client_body


def test_recording_keeps_bytes_and_chunk_offsets_up_to_the_cap():
    # (was a test of the tap's own recording; recording now wraps the tap)
    from test_tap import DELTA, END, START, Clock

    from tokenpak_mitm.core.dialects.anthropic import AnthropicTracker
    from tokenpak_mitm.core.observe.tap import StreamTap

    clock = Clock()
    tap = StreamTap(AnthropicTracker(), sse=True, clock=clock)
    recording = RecordingStream(tap, len(START) + len(DELTA), clock=clock)
    for chunk, t in [(START, 100.0), (DELTA, 100.010), (END, 100.020)]:
        clock.t = t
        assert recording(chunk) is chunk  # the wrapper returns what the tap returns: the same bytes
    assert bytes(recording.body) == START + DELTA
    assert recording.chunks == [(0.0, len(START)), (10.0, len(DELTA))]
    assert recording.truncated
    assert recording.wire_bytes == tap.wire_bytes == len(START + DELTA + END)


@pytest.mark.e2e
def test_the_addon_list_works_in_reverse_order(tmp_path: Path):
    """Recorder and the live checker build on TokenPak through its hooks, not their list position."""
    from conftest import _handler

    from tokenpak_mitm.sim.upstream import FakeUpstream

    script = tmp_path / "reversed.py"
    script.write_text(
        "from tokenpak_mitm.proxy.addon import TokenPak\n"
        "from tokenpak_mitm.conformance.live import LiveConformance\n"
        "from tokenpak_mitm.proxy.recorder import Recorder\n"
        "addons = [LiveConformance(), Recorder(), TokenPak()]\n"
    )
    scripts: dict = {}
    up = FakeUpstream(_handler(scripts)).start()
    db, flows = tmp_path / "t.db", tmp_path / "flows"
    proxy = MitmdumpProcess(f"reverse:{up.url}", confdir=tmp_path, addon=False, extra_args=["-s", str(script)],
                            options=[f"tokenpak_db={db}", f"tokenpak_record={flows}", "tokenpak_conformance=strict"]).start()
    stack = Stack(upstream=up, proxy=proxy, db=db, scripts=scripts)
    stack.flows = flows  # type: ignore[attr-defined]
    try:
        body = b"".join(FRAMES)
        cuts = [body[:50], body[50:51], body[51:400], body[400:]]
        resp, key = stack.call(Script(headers=[("content-type", "text/event-stream")], steps=[Step(c) for c in cuts]))
        assert resp.body == body
        row = stack.row(key)
        rec = recording_for(stack, key)
    finally:
        rc = proxy.stop()
        up.stop()
    assert row["conformance_violations"] == 0 and row["output_tokens"] == 7
    assert rec.response_body == body and [n for _, n in rec.chunks] == [len(c) for c in cuts]
    assert rc == 0 and "conformance violation" not in proxy.output()
