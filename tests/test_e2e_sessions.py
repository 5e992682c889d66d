"""Sessions and miss diagnosis through a real mitmdump.

* The session headers are taken off the request; every other header reaches the upstream
  unchanged (names, case, values, order).
* An agent conversation through the proxy against the cache simulator: a system prompt changed
  halfway and an eviction injected in the simulator; the rows, `tokenpak report --misses` (terminal,
  JSON and HTML) and `tokenpak tail` name the causes with their cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for_rows

from tokenpak_mitm.sim.client import build_request, request
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.provider import FakeProvider
from tokenpak_mitm.sim.upstream import FakeUpstream, Received, Script, Step

pytestmark = pytest.mark.e2e  # every test here runs a real mitmdump

MODEL = "claude-sonnet-4-6"
CC = "54c1eb09-bc4c-4d2f-98eb-6d2ab2d5e2fe"
SYSTEM = " ".join(f"Rule {i}: answer tersely, cite the policy section {i} and never invent facts." for i in range(160))
REPLY = json.dumps({
    "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "content": [{"type": "text", "text": "ok"}],
    "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 1},
}).encode()


def test_session_headers_never_reach_upstream_and_every_other_header_does_unchanged(tmp_path: Path):
    def handler(_: Received) -> Script:
        return Script(headers=[("content-type", "application/json")], steps=[Step(REPLY)], chunked=False)

    up = FakeUpstream(handler).start()
    proxy = MitmdumpProcess(f"reverse:{up.url}", db=tmp_path / "t.db", confdir=tmp_path).start()
    try:
        body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode()
        others = [("X-Api-Key", "sk-ant-api03-canary-not-a-real-key-000000"), ("anthropic-version", "2023-06-01"),
                  ("content-type", "application/json"), ("X-Custom", "a"), ("x-custom", "b"), ("X-Trace-Id", "t-1")]
        headers = [others[0], ("X-TokenPak-Session", "run-7"), *others[1:4], ("x-tokenpak-project", "billing"), *others[4:]]
        resp = request(proxy.port, build_request("POST", "/v1/messages", body, headers))
        assert resp.status == 200
        got = up.received[-1].headers
        assert not [k for k, _ in got if k.lower().startswith("x-tokenpak-")]
        assert [(k, v) for k, v in got if k.lower() not in ("host", "content-length")] == others
        row = wait_for_rows(tmp_path / "t.db", "1=1", ())[0]
        assert (row["session_id"], row["session_source"], row["project"], row["turn"]) == ("run-7", "header", "billing", 1)
        # A Claude Code-shaped request (2.1.78+ metadata form) gets its own session id, and the body goes up unchanged.
        cc = json.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                         "metadata": {"user_id": json.dumps({"device_id": "d" * 64, "account_uuid": "", "session_id": CC})}}).encode()
        cc_headers = [("authorization", "Bearer sk-ant-oat01-canary-not-a-real-token-0000"), ("anthropic-version", "2023-06-01"),
                      ("content-type", "application/json"), ("user-agent", "claude-cli/2.1.90 (external, cli)"), ("x-app", "cli")]
        assert request(proxy.port, build_request("POST", "/v1/messages", cc, cc_headers)).status == 200
        assert up.received[-1].body == cc
        row = wait_for_rows(tmp_path / "t.db", "session_source = ?", ("claude-code",))[0]
        assert (row["session_id"], row["route_class"], row["turn"]) == (CC, "claude-code", 1)
    finally:
        proxy.stop()
        up.stop()


def _tokenpak(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "tokenpak_mitm.cli.main", *args], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory: pytest.TempPathFactory):
    """Ten turns of one conversation: system prompt changed before turn 5, eviction before turn 8."""
    tmp = tmp_path_factory.mktemp("sessions")
    db = tmp / "t.db"
    with FakeProvider() as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=tmp).start()
        try:
            system, history = SYSTEM, []
            for turn in range(10):
                if turn == 5:
                    system = SYSTEM + " From now on, answer in French."
                if turn == 8:
                    fake.sim.clear()
                history.append({"role": "user", "content": f"Question {turn}: what does rule {turn} say?"})
                body = json.dumps({"model": MODEL, "max_tokens": 20, "system": system, "messages": history}).encode()
                resp = request(proxy.port, build_request("POST", "/v1/messages", body, [
                    ("x-api-key", "sk-ant-api03-canary-not-a-real-key-000000"), ("anthropic-version", "2023-06-01"),
                    ("content-type", "application/json"), ("x-tokenpak-project", "demo")]))
                assert resp.status == 200
                history.append({"role": "assistant", "content": json.loads(resp.body)["content"][0]["text"]})
            rows = wait_for_rows(db, "1=1 ORDER BY id", (), n=10)
        finally:
            proxy.stop()
    return db, rows, proxy.output()


def test_one_conversation_one_session_and_the_causes_named(agent_run):
    _, rows, _ = agent_run
    assert len({r["session_id"] for r in rows}) == 1
    assert [r["turn"] for r in rows] == list(range(1, 11))
    assert [r["cache_miss_reason"] for r in rows] == ["cold", None, None, None, None, "prefix_changed", None, None, "provider_evicted", None]
    changed = rows[5]
    assert (changed["miss_section"], changed["miss_block"], changed["miss_change"]) == ("system", 0, "system")
    assert changed["miss_cost_usd"] > 0 and rows[8]["miss_cost_usd"] > 0
    assert all(r["cache_warm_until"] for r in rows)


def test_console_line_names_the_miss(agent_run):
    _, _, output = agent_run
    assert "miss=prefix_changed(+$" in output and "miss=provider_evicted(+$" in output


def test_report_misses_and_sessions_in_terminal_json_and_html(agent_run, tmp_path: Path):
    db, rows, _ = agent_run
    text = _tokenpak("report", "--db", str(db), "--since", "all", "--misses")
    assert "prefix_changed" in text and "provider_evicted" in text
    data = json.loads(_tokenpak("report", "--db", str(db), "--since", "all", "--misses", "--by", "project", "--json"))
    causes = {c["reason"]: c for c in data["misses"]}
    for reason in ("prefix_changed", "provider_evicted"):
        expected = sum(r["miss_cost_usd"] for r in rows if r["cache_miss_reason"] == reason)
        assert causes[reason]["cost_usd"] == pytest.approx(expected, abs=1e-9)
        assert causes[reason]["sessions"][0]["session_id"] == rows[0]["session_id"]
    assert [g["key"] for g in data["by_project"]] == ["demo"]
    page = tmp_path / "r.html"
    _tokenpak("report", "--db", str(db), "--since", "all", "--html", str(page))
    html = page.read_text()
    assert "Cache misses by cause" in html and "prefix_changed" in html and "Sessions" in html
    tail = _tokenpak("tail", "--db", str(db), "--once")
    assert "miss prefix_changed" in tail and "warm until" in tail


def test_a_restarted_proxy_does_not_claim_cold_for_what_an_earlier_run_may_have_cached(agent_run):
    db, rows, _ = agent_run
    with FakeProvider() as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=db.parent).start()
        try:
            body = json.dumps({"model": MODEL, "max_tokens": 20, "system": SYSTEM + " Another agent.",
                               "messages": [{"role": "user", "content": "Hello again"}]}).encode()
            resp = request(proxy.port, build_request("POST", "/v1/messages", body, [
                ("x-api-key", "sk-ant-api03-canary-not-a-real-key-000000"), ("anthropic-version", "2023-06-01"),
                ("content-type", "application/json")]))
            assert resp.status == 200
            new = wait_for_rows(db, "id > ?", (max(r["id"] for r in rows),))
        finally:
            proxy.stop()
    assert new[0]["cache_miss_reason"] == "unknown"  # the fake upstream is fresh, but the proxy cannot know that


def test_interleaved_clients_on_one_proxy_get_one_session_each(tmp_path: Path):
    """Four agents at once (two API keys), each a five-turn conversation; rows are told apart by model."""
    import threading

    models = ["claude-sonnet-4-6", "claude-opus-4-8", "claude-sonnet-4-5", "claude-opus-4-1"]
    keys = ["sk-ant-api03-canary-not-a-real-key-000000", "sk-ant-api03-canary-not-a-real-key-111111"]
    db = tmp_path / "t.db"
    errors: list[BaseException] = []
    with FakeProvider() as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=tmp_path).start()

        def agent(n: int) -> None:
            try:
                history: list[dict[str, str]] = []
                for turn in range(5):
                    history.append({"role": "user", "content": f"Agent {n}, question {turn}"})
                    body = json.dumps({"model": models[n], "max_tokens": 10, "system": SYSTEM, "messages": history}).encode()
                    resp = request(proxy.port, build_request("POST", "/v1/messages", body, [
                        ("x-api-key", keys[n % 2]), ("anthropic-version", "2023-06-01"), ("content-type", "application/json")]))
                    assert resp.status == 200
                    history.append({"role": "assistant", "content": json.loads(resp.body)["content"][0]["text"]})
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        try:
            threads = [threading.Thread(target=agent, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            rows = wait_for_rows(db, "1=1 ORDER BY id", (), n=20)
        finally:
            proxy.stop()
    assert not errors
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    assert sorted(by_model) == sorted(models)
    sessions = {m: {r["session_id"] for r in rs} for m, rs in by_model.items()}
    assert all(len(s) == 1 for s in sessions.values())
    assert len({next(iter(s)) for s in sessions.values()}) == 4
    assert all(sorted(r["turn"] for r in rs) == [1, 2, 3, 4, 5] for rs in by_model.values())
    assert [r["cache_miss_reason"] for rs in by_model.values() for r in sorted(rs, key=lambda r: r["turn"])] == (["cold"] + [None] * 4) * 4


def test_bad_and_compressed_bodies_flow_and_keep_their_header_session(tmp_path: Path):
    import gzip

    def handler(_: Received) -> Script:
        return Script(headers=[("content-type", "application/json")], steps=[Step(REPLY)], chunked=False)

    up = FakeUpstream(handler).start()
    proxy = MitmdumpProcess(f"reverse:{up.url}", db=tmp_path / "t.db", confdir=tmp_path).start()
    try:
        bodies = [
            (b'{"model": "claude-sonnet-4-6", "messages": [', []),  # not JSON
            (gzip.compress(json.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode()),
             [("content-encoding", "gzip")]),
            (json.dumps({"model": MODEL, "messages": "not a list", "metadata": {"user_id": 42}}).encode(), []),
        ]
        for n, (body, extra) in enumerate(bodies):
            headers = [("x-api-key", "sk-ant-api03-canary-not-a-real-key-000000"), ("content-type", "application/json"),
                       ("x-tokenpak-session", f"odd-{n}"), *extra]
            assert request(proxy.port, build_request("POST", "/v1/messages", body, headers)).status == 200
            assert up.received[-1].body == body and up.received[-1].header("x-tokenpak-session") is None
        rows = wait_for_rows(tmp_path / "t.db", "1=1 ORDER BY id", (), n=3)
        assert [(r["session_id"], r["turn"]) for r in rows] == [("odd-0", 1), ("odd-1", 1), ("odd-2", 1)]
    finally:
        proxy.stop()
        up.stop()


@pytest.mark.parametrize("dialect", ["anthropic", "openai_chat"])
def test_recording_keeps_the_session_of_every_body_size(tmp_path: Path, dialect: str):
    """Issue 26 item 1: with ``tokenpak_record`` on, the proxy accounts the flow itself and
    fingerprints bodies over 32 KB in its worker process; a reply that came back before that work
    finished used to cost the row its session, turn, project and miss diagnosis."""
    db, rec = tmp_path / "t.db", tmp_path / "rec"
    sizes = [16 << 10, 33 << 10, 64 << 10, 256 << 10, 1 << 20]
    with FakeProvider() as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=tmp_path, options=[f"tokenpak_record={rec}"]).start()
        try:
            for size in sizes:
                filler = " ".join(f"Paragraph {i} of the shared context." for i in range(size // 36))
                history: list[dict[str, str]] = []
                for turn in range(2):
                    history.append({"role": "user", "content": f"{filler} Question {turn}?" if turn == 0 else f"Question {turn}?"})
                    if dialect == "anthropic":
                        path, model = "/v1/messages", MODEL
                        auth = [("x-api-key", "sk-ant-api03-canary-not-a-real-key-000000"), ("anthropic-version", "2023-06-01")]
                        payload = {"model": model, "max_tokens": 20, "messages": history}
                    else:  # streamed, as the SDKs' chat clients mostly are
                        path, model = "/v1/chat/completions", "gpt-4.1"
                        auth = [("authorization", "Bearer sk-proj-canary-not-a-real-key-00000000")]
                        payload = {"model": model, "messages": history, "stream": True, "stream_options": {"include_usage": True}}
                    body = json.dumps(payload).encode()
                    headers = [*auth, ("content-type", "application/json"), ("x-tokenpak-session", f"size-{size}"),
                               ("x-tokenpak-project", "rec")]
                    resp = request(proxy.port, build_request("POST", path, body, headers))
                    assert resp.status == 200
                    history.append({"role": "assistant", "content": "ok"})
            rows = wait_for_rows(db, "1=1 ORDER BY id", (), n=2 * len(sizes))
        finally:
            proxy.stop()
    got = [(r["session_id"], r["turn"], r["project"]) for r in rows]
    assert got == [(f"size-{s}", t, "rec") for s in sizes for t in (1, 2)]
    assert all(r["terminal_state"] == "completed" for r in rows)
    assert len(list(rec.glob("*.mitm"))) == 2 * len(sizes)  # and every flow was recorded
