"""The provider's own cache verdict through a real mitmdump (issue 25).

* ``--set tokenpak_cache_diagnostics=on``: every turn after the first of an Anthropic conversation
  carries ``diagnostics.previous_message_id`` (the previous response's id; ``null`` on the first),
  the beta header is added, and nothing else in the request changes (byte comparison).
* A client that sends its own ``diagnostics`` is never touched; off by default.
* Rows carry the provider's verdict (streamed and not) next to ours, and where the fake provider
  (the documented semantics) states a divergence, our reason agrees with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import wait_for_rows

from tokenpak_mitm.core.plan.cache_diagnostics import BETA
from tokenpak_mitm.sim.client import build_request, request
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.provider import FakeProvider

pytestmark = pytest.mark.e2e  # every test here runs a real mitmdump

MODEL = "claude-sonnet-4-6"
KEY = "sk-ant-api03-canary-not-a-real-key-000000"
SYSTEM = " ".join(f"Rule {i}: answer tersely, cite the policy section {i} and never invent facts." for i in range(160))
HEADERS = [("x-api-key", KEY), ("anthropic-version", "2023-06-01"), ("content-type", "application/json"), ("x-custom", "kept")]


def _reply_id(body: bytes, stream: bool) -> str:
    if not stream:
        return str(json.loads(body)["id"])
    for line in body.split(b"\n"):
        if line.startswith(b"data:") and b'"message_start"' in line:
            return str(json.loads(line[5:])["message"]["id"])
    raise AssertionError("no message_start")


def _member(previous: str | None) -> bytes:
    return b'"diagnostics":' + json.dumps({"previous_message_id": previous}, separators=(",", ":")).encode() + b","


def test_every_turn_after_the_first_names_the_previous_response_and_nothing_else_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    db = tmp_path / "t.db"
    with FakeProvider() as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=tmp_path,
                                options=["tokenpak_cache_diagnostics=on"]).start()
        try:
            history: list[dict[str, str]] = []
            sent: list[bytes] = []
            ids: list[str] = []
            for turn in range(6):
                history.append({"role": "user", "content": f"Question {turn}: what does rule {turn} say?"})
                stream = turn % 2 == 1
                # a client's own key order and spacing: the splice must keep every byte of it
                # the client manages its cache (the planner stands down): the only change can be ours
                system = [{"type": "text", "text": SYSTEM + (" Answer in French." if turn == 4 else ""), "cache_control": {"type": "ephemeral"}}]
                body = json.dumps({"model": MODEL, "max_tokens": 20, "stream": stream, "system": system, "messages": history}, indent=1).encode()
                sent.append(body)
                headers = [*HEADERS, ("anthropic-beta", "interleaved-thinking-2025-05-14")] if turn == 2 else HEADERS
                resp = request(proxy.port, build_request("POST", "/v1/messages", body, headers))
                assert resp.status == 200, resp.body
                ids.append(_reply_id(resp.body, stream))
                text = "reply" if stream else json.loads(resp.body)["content"][0]["text"]
                history.append({"role": "assistant", "content": text})
            rows = wait_for_rows(db, "1=1 ORDER BY id", (), n=6)
        finally:
            proxy.stop()
    received = fake.received
    assert len(received) == 6
    for turn, got in enumerate(received):
        previous = ids[turn - 1] if turn else None
        # the body is the client's, with exactly one member added after the opening brace
        assert got.body == b"{" + _member(previous) + sent[turn][1:]
        beta = got.header("anthropic-beta")
        assert beta == ("interleaved-thinking-2025-05-14," + BETA if turn == 2 else BETA)
        others = [(k.lower(), v) for k, v in got.headers if k.lower() not in ("host", "content-length", "anthropic-beta")]
        expected = [(k.lower(), v) for k, v in HEADERS]
        assert others == expected
    # the provider's verdict is on every row; where it names a divergence and we saw a miss, ours agrees
    assert [r["provider_miss_reason"] for r in rows] == ["none", "none", "none", "none", "system_changed", "system_changed"]
    assert rows[4]["provider_missed_tokens"] > 0
    assert [r["cache_miss_reason"] for r in rows] == ["cold", None, None, None, "prefix_changed", None]
    assert (rows[4]["miss_section"], rows[4]["miss_change"]) == ("system", "system") and rows[4]["miss_cost_usd"] > 0
    # Turn 6 went back to the first system prompt, still cached: it read it, so no miss, although
    # the provider (comparing with turn 5) says the system changed: its verdict never makes one up.
    assert rows[5]["cache_read_tokens"] > 0
    # report --misses: the miss with what the provider said, and the provider's verdicts with what the rows say
    from tokenpak_mitm.cli.main import main

    assert main(["report", "--db", str(db), "--since", "all", "--misses", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(c["reason"], c["provider"]) for c in data["misses"]] == [("prefix_changed", {"system_changed": 1}), ("cold", {"none": 1})]
    assert {v["provider_said"]: v["row_says"] for v in data["provider_verdicts"]} == {
        "none": {"cold": 1, "none": 3}, "system_changed": {"prefix_changed": 1, "none": 1}}
    assert main(["report", "--db", str(db), "--since", "all", "--misses"]) == 0
    out = capsys.readouterr().out
    assert "provider said" in out and "The provider's own verdicts" in out


def test_a_client_that_asks_itself_is_left_alone_and_the_option_is_off_by_default(tmp_path: Path):
    db = tmp_path / "t.db"
    with FakeProvider() as fake:
        on = MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=tmp_path, options=["tokenpak_cache_diagnostics=on"]).start()
        try:
            own = json.dumps({"model": MODEL, "max_tokens": 20, "system": SYSTEM, "diagnostics": {"previous_message_id": None},
                              "messages": [{"role": "user", "content": "hi"}]}).encode()
            headers = [*HEADERS, ("anthropic-beta", BETA)]
            resp = request(on.port, build_request("POST", "/v1/messages", own, headers))
            assert resp.status == 200
            assert fake.received[-1].body.startswith(b'{"model"') and fake.received[-1].body.count(b'"diagnostics"') == 1
            assert json.loads(fake.received[-1].body)["diagnostics"] == {"previous_message_id": None}
            row = wait_for_rows(db, "1=1", ())[0]
            assert row["provider_miss_reason"] == "none"
        finally:
            on.stop()
        off = MitmdumpProcess(f"reverse:{fake.url}", db=tmp_path / "off.db", confdir=tmp_path, options=["tokenpak_cache=off"]).start()
        try:
            plain = json.dumps({"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}).encode()
            assert request(off.port, build_request("POST", "/v1/messages", plain, HEADERS)).status == 200
            assert fake.received[-1].body == plain and fake.received[-1].header("anthropic-beta") is None
            assert wait_for_rows(tmp_path / "off.db", "1=1", ())[0]["provider_miss_reason"] is None
        finally:
            off.stop()


def test_a_recording_shows_the_splice_as_our_change_and_passes_i1_and_i5(tmp_path: Path):
    from tokenpak_mitm.conformance.flowfile import find_flow_files, load_recording
    from tokenpak_mitm.conformance.invariants import check_i1, check_i5

    record = tmp_path / "rec"
    with FakeProvider() as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=tmp_path / "t.db", confdir=tmp_path,
                                options=["tokenpak_cache_diagnostics=on", f"tokenpak_record={record}"]).start()
        try:
            history = [{"role": "user", "content": "hello"}]
            ids: list[str] = []
            for _ in range(2):
                # over 32 KB: read in the worker process (the same splice)
                body = json.dumps({"model": MODEL, "max_tokens": 20, "system": SYSTEM * 4, "messages": history}).encode()
                assert len(body) > 32 << 10
                resp = request(proxy.port, build_request("POST", "/v1/messages", body, HEADERS))
                assert resp.status == 200
                ids.append(json.loads(resp.body)["id"])
                history += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "more"}]
            wait_for_rows(tmp_path / "t.db", "1=1", (), n=2)
        finally:
            proxy.stop()
    files = sorted(find_flow_files([record]))
    assert len(files) == 2
    named: list[str | None] = []
    for path in files:
        rec = load_recording(path)
        ev = rec.evidence_at_rest()
        assert ev.header_changes == {"anthropic-beta": BETA}
        assert any(t.startswith(b'"diagnostics":') for _, t in ev.spans or [])
        named.append(json.loads(rec.flow.request.raw_content)["diagnostics"]["previous_message_id"])
        assert check_i1(ev) == [] and check_i5(ev) == []
    assert sorted(named, key=str) == sorted([None, ids[0]], key=str)


def test_a_mid_conversation_system_message_keeps_the_session_reads_the_cache_and_is_no_prefix_change(tmp_path: Path):
    """The documented use through the proxy (its own markers): a system message appended after the
    history; the next turns read the prefix before it, stay one session, and no row says prefix_changed."""
    db = tmp_path / "t.db"
    with FakeProvider() as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=tmp_path, options=["tokenpak_cache_diagnostics=on"]).start()
        try:
            history: list[dict[str, str]] = []
            for turn in range(5):
                history.append({"role": "user", "content": f"Question {turn}: what does rule {turn} say? " + "Context. " * 200})
                if turn == 2:
                    history.append({"role": "system", "content": "From now on, answer in French."})
                body = json.dumps({"model": "claude-opus-4-8", "max_tokens": 20, "system": SYSTEM, "messages": history}).encode()
                resp = request(proxy.port, build_request("POST", "/v1/messages", body, HEADERS))
                assert resp.status == 200, resp.body
                history.append({"role": "assistant", "content": json.loads(resp.body)["content"][0]["text"]})
            rows = wait_for_rows(db, "1=1 ORDER BY id", (), n=5)
        finally:
            proxy.stop()
    assert len({r["session_id"] for r in rows}) == 1 and [r["turn"] for r in rows] == [1, 2, 3, 4, 5]
    assert all(r["cache_read_tokens"] > 0 for r in rows[1:])  # the turn with the system message too
    assert [r["cache_miss_reason"] for r in rows] == ["cold", None, None, None, None]
    assert [r["provider_miss_reason"] for r in rows] == ["none"] * 5  # the provider agrees: nothing diverged


def test_openai_responses_get_the_comparison_id_and_rows_carry_openais_verdict(tmp_path: Path):
    """GPT-5.6+ Responses: every request after the first names the conversation's previous response
    in prompt_cache_options.comparison_response_id (the request's own previous_response_id when it has
    one); nothing else changes; an older model and a request with its own prompt_cache_options are left alone."""
    db = tmp_path / "t.db"
    headers = [("authorization", "Bearer sk-proj-canary-not-a-real-key-0000000000"), ("content-type", "application/json")]
    with FakeProvider() as fake:
        proxy = MitmdumpProcess(f"reverse:{fake.url}", db=db, confdir=tmp_path,
                                options=["tokenpak_cache_diagnostics=on", "tokenpak_cache=off"]).start()
        try:
            history: list[dict[str, str]] = []
            sent: list[bytes] = []
            ids: list[str] = []
            for turn in range(3):
                history.append({"role": "user", "content": f"Question {turn}"})
                body = json.dumps({"model": "gpt-5.6", "instructions": SYSTEM + (" More." if turn == 2 else ""), "input": history}).encode()
                sent.append(body)
                resp = request(proxy.port, build_request("POST", "/v1/responses", body, headers))
                assert resp.status == 200, resp.body
                ids.append(json.loads(resp.body)["id"])
                history.append({"role": "assistant", "content": "ok"})
            chained = json.dumps({"model": "gpt-5.6", "instructions": SYSTEM + " More.", "previous_response_id": ids[-1], "input": "go on"}).encode()
            assert request(proxy.port, build_request("POST", "/v1/responses", chained, headers)).status == 200
            older = json.dumps({"model": "gpt-4o", "input": history}).encode()
            own = json.dumps({"model": "gpt-5.6", "input": history, "prompt_cache_options": {"ttl": "30m"}}).encode()
            for body in (older, own):
                assert request(proxy.port, build_request("POST", "/v1/responses", body, headers)).status == 200
            rows = wait_for_rows(db, "1=1 ORDER BY id", (), n=6)
        finally:
            proxy.stop()
    received = [r.body for r in fake.received]
    assert received[0] == sent[0]  # the first request: nothing to compare with
    for turn in (1, 2):
        assert received[turn] == b'{"prompt_cache_options":{"comparison_response_id":"' + ids[turn - 1].encode() + b'"},' + sent[turn][1:]
    assert received[3] == b'{"prompt_cache_options":{"comparison_response_id":"' + ids[2].encode() + b'"},' + chained[1:]
    assert received[4:] == [older, own]
    assert [r["provider_miss_reason"] for r in rows] == [None, "cache_hit", "instructions_changed", "cache_hit", None, None]


def test_an_upstream_that_refuses_the_field_stops_the_asking_after_one_request(tmp_path: Path):
    """A gateway (or platform) that rejects unknown fields: one 400, one warning line, and the next
    requests go exactly as the client wrote them."""
    from tokenpak_mitm.sim.upstream import FakeUpstream, Received, Script, Step

    def handler(got: Received) -> Script:
        if b'"diagnostics"' in got.body:
            body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": "diagnostics: Extra inputs are not permitted"}})
            return Script(status=400, reason="Bad Request", headers=[("content-type", "application/json")], steps=[Step(body.encode())], chunked=False)
        ok = {"id": "msg_ok", "type": "message", "role": "assistant", "model": MODEL, "content": [{"type": "text", "text": "ok"}],
              "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 1}}
        return Script(headers=[("content-type", "application/json")], steps=[Step(json.dumps(ok).encode())], chunked=False)

    up = FakeUpstream(handler).start()
    proxy = MitmdumpProcess(f"reverse:{up.url}", db=tmp_path / "t.db", confdir=tmp_path, options=["tokenpak_cache_diagnostics=on"]).start()
    try:
        body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}).encode()
        assert request(proxy.port, build_request("POST", "/v1/messages", body, HEADERS)).status == 400
        for _ in range(2):
            assert request(proxy.port, build_request("POST", "/v1/messages", body, HEADERS)).status == 200
            assert up.received[-1].body == body and up.received[-1].header("anthropic-beta") is None
        wait_for_rows(tmp_path / "t.db", "1=1", (), n=3)
    finally:
        proxy.stop()
        up.stop()
    assert proxy.output().count("tokenpak_cache_diagnostics is off for this run") == 1
    assert KEY not in proxy.output()
