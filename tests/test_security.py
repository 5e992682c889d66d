"""Security: loopback only, owner-only files, no secret on disk, the CA private key left alone.

Canary secrets are sent the ways real clients and providers carry them (headers, cookies, query
strings, JSON bodies, a provider error echoing the key, an error path whose message contains it),
then every file under the test's directories is scanned byte for byte.
"""

from __future__ import annotations

import ast
import json
import re
import socket
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import Stack, make_stack, wait_for_rows
from test_faults_e2e import FRAMES

from tokenpak_mitm.core.redact import PLACEHOLDER, redact_query, redact_text
from tokenpak_mitm.sim.upstream import Script, Step, sse_script

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tokenpak_mitm"

# Shaped like real keys (so shape-based redaction is exercised) and unmistakable in a scan.
ANTHROPIC_KEY = "sk-ant-api03-CANARYanthropic0123456789abcdefABCDEF"
OPENAI_KEY = "sk-proj-CANARYopenai0123456789abcdefghij"
GOOGLE_KEY = "AIzaCANARYgoogle0123456789abcdefghijk"
BEARER = "CANARYbearer.eyJ0eXAiOiJKV1Qi.0123456789"
COOKIE = "CANARYcookie0123456789session"
BODY_SECRET = "CANARYbodysecret0123456789"
CANARIES = (ANTHROPIC_KEY, OPENAI_KEY, GOOGLE_KEY, BEARER, COOKIE, BODY_SECRET)


# -- listening address ------------------------------------------------------------------------------


def test_make_run_listens_on_loopback_by_default():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^HOST\s*\?=\s*127\.0\.0\.1\s*$", makefile, re.M)
    run = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "tokenpak run --host '$(HOST)'" in run  # make run is tokenpak run, which passes --listen-host
    import argparse

    from tokenpak_mitm.cli.run import add_arguments, command

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = command(parser.parse_args([]))
    assert argv[argv.index("--listen-host") + 1] == "127.0.0.1"


def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                found.add(addr if width == 32 else socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


def _non_loopback_ipv4() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout if Path("/usr/sbin/ip").exists() or Path("/sbin/ip").exists() or Path("/usr/bin/ip").exists() else ""
    addrs = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    if not addrs:
        try:
            addrs = [socket.gethostbyname(socket.gethostname())]
        except OSError:
            addrs = []
    return [a for a in addrs if not a.startswith("127.")]


def test_running_proxy_is_reachable_on_loopback_only(tmp_path: Path):
    stack = make_stack(tmp_path)
    try:
        port = stack.proxy.port
        assert _listening_addresses(port) == {"127.0.0.1"}
        for addr in _non_loopback_ipv4():
            with pytest.raises(OSError):
                socket.create_connection((addr, port), timeout=2).close()
    finally:
        stack.proxy.stop()
        stack.upstream.stop()


# -- file modes -------------------------------------------------------------------------------------


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory: pytest.TempPathFactory):
    """One proxy (recording on) that has seen every canary; stopped so everything is flushed."""
    tmp = tmp_path_factory.mktemp("secrets")
    record = tmp / "recorded"
    stack = make_stack(tmp, options=[f"tokenpak_record={record}"])
    keys = _send_canaries(stack)
    wait_for_rows(stack.db, "1", (), n=len(keys), timeout=20)
    live_files = {p: _mode(p) for p in tmp.rglob("*") if p.is_file()}
    stack.proxy.stop()
    stack.upstream.stop()
    return tmp, stack, keys, live_files


def _send_canaries(stack: Stack) -> list[str]:
    secret_headers = [("authorization", f"Bearer {BEARER}"), ("cookie", f"session={COOKIE}; other=1"), ("x-goog-api-key", GOOGLE_KEY), ("openai-organization", "org-CANARY")]
    body = json.dumps({
        "model": "claude-sonnet-4-6", "max_tokens": 64, "stream": True, "api_key": BODY_SECRET, "apiKey": BODY_SECRET,
        "metadata": {"user_id": "u"}, "messages": [{"role": "user", "content": f"my key is {ANTHROPIC_KEY} and {OPENAI_KEY}"}],
    }).encode()
    keys = []
    # 1. a normal stream, secrets everywhere in the request (query string included)
    _, k = stack.call(sse_script(FRAMES), body, path=f"/v1/messages?key={GOOGLE_KEY}&beta=true", headers=secret_headers)
    keys.append(k)
    # 2. a provider 401 whose message echoes the key
    err = json.dumps({"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key: {ANTHROPIC_KEY} (Bearer {BEARER})"}}).encode()
    _, k = stack.call(Script(status=401, reason="Unauthorized", headers=[("content-type", "application/json"), ("set-cookie", f"s={COOKIE}")], steps=[Step(err)], chunked=False), body, headers=secret_headers)
    keys.append(k)
    # 3. an error event inside a 200 stream echoing the key
    ev = b"event: error\ndata: " + json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": f"key {OPENAI_KEY} revoked"}}).encode() + b"\n\n"
    _, k = stack.call(sse_script(FRAMES[:3] + [ev]), body, headers=secret_headers)
    keys.append(k)
    # 4. an OpenAI-style 401 and a Gemini call with ?key=
    oerr = json.dumps({"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}.", "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
    _, k = stack.call(Script(status=401, headers=[("content-type", "application/json")], steps=[Step(oerr)], chunked=False), b'{"model":"gpt-4o","messages":[]}', path="/v1/chat/completions", headers=[("authorization", f"Bearer {OPENAI_KEY}")])
    keys.append(k)
    gerr = json.dumps({"error": {"code": 400, "message": f"API key not valid: {GOOGLE_KEY}", "status": "INVALID_ARGUMENT"}}).encode()
    _, k = stack.call(Script(status=400, headers=[("content-type", "application/json")], steps=[Step(gerr)], chunked=False), b'{"contents":[]}', path=f"/v1beta/models/gemini-2.5-flash:generateContent?key={GOOGLE_KEY}")
    keys.append(k)
    # 5. error paths: an upstream reset, and a non-HTTP answer echoing the key into mitmproxy's error text
    _, k = stack.call(sse_script(FRAMES, reset_after=2), body, headers=secret_headers)
    keys.append(k)
    tag = uuid.uuid4().hex[:8]
    stack.call(Script(raw=f"{ANTHROPIC_KEY} {BEARER} 200 OK\r\n\r\n".encode()), body, path=f"/e{tag}/v1/messages", headers=secret_headers)
    keys.append(tag)
    return keys


def test_database_wal_shm_and_recordings_are_owner_only(secret_run):
    tmp, stack, _, live_files = secret_run
    ours = [p for p in live_files if p.name.startswith("tokenpak.db") or "recorded" in p.parts]
    assert any(p.name == "tokenpak.db" for p in ours) and any(p.name.endswith("-wal") for p in ours)
    assert any(p.suffix == ".mitm" for p in ours), "the recorder wrote no flow"
    bad = {str(p.relative_to(tmp)): oct(m) for p, m in live_files.items() if p in ours and m != 0o600}
    assert not bad
    assert _mode(tmp / "recorded") & 0o077 == 0


def _scan(root: Path, needles: tuple[str, ...]) -> list[tuple[str, str]]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [(str(p.relative_to(root)), n) for n in needles if n.encode() in data]
    return hits


def test_no_canary_reaches_any_file(secret_run):
    tmp, stack, keys, _ = secret_run
    rows = wait_for_rows(stack.db, "1", (), n=len(keys), timeout=5)
    assert len(rows) >= len(keys)  # every request produced its row (the scan below is not vacuous)
    assert _scan(tmp, CANARIES) == []
    assert _scan(tmp, ("CANARY",)) == [], "a fragment of a secret survived"


def test_recorder_redacts_a_token_of_no_known_shape_echoed_by_the_upstream(secret_run):
    tmp, _, _, _ = secret_run
    assert _scan(tmp / "recorded", (BEARER,)) == []


def test_no_canary_in_the_addon_log_lines(secret_run):
    _, stack, _, _ = secret_run
    ours = "\n".join(line for line in stack.proxy.lines if "tokenpak" in line)
    assert not [c for c in CANARIES if c in ours]


def test_redaction_covers_every_known_shape():
    text = (
        f"x-api-key: {ANTHROPIC_KEY} auth Bearer {BEARER} Basic dXNlcjpwYXNzd29yZA== {OPENAI_KEY} "
        f"https://x/v1?key={GOOGLE_KEY}&alt=sse ;token=abcdef123456 ya29.a0AfH6SMBCANARY "
        f'{{"apiKey": "{BODY_SECRET}", "client_secret":"{BODY_SECRET}", "refresh-token": "{BODY_SECRET}"}}'
    )
    out = redact_text(text) or ""
    assert not [c for c in CANARIES if c in out] and "ya29.a0" not in out and "dXNlcjpw" not in out
    assert out.count(PLACEHOLDER) >= 8
    assert redact_text(out) == out  # idempotent
    assert redact_query(f"/v1beta/models/m:generateContent?key={GOOGLE_KEY}") == "/v1beta/models/m:generateContent"


# -- the mitmproxy CA private key --------------------------------------------------------------------


def _string_constants(tree: ast.AST) -> list[str]:
    docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


# doctor.py names the key file only to stat() it (a world-readable key is reported);
# test_doctor_and_setup_never_read_the_private_key proves it never opens it.
_MAY_NAME_THE_KEY = {"tokenpak_mitm/cli/doctor.py"}


def test_no_code_of_ours_names_the_ca_private_key():
    offenders = []
    for src in PACKAGE.rglob("*.py"):
        for s in _string_constants(ast.parse(src.read_text())):
            if any(bad in s for bad in ("mitmproxy-ca.pem", "mitmproxy-ca.p12", "PRIVATE KEY")):
                offenders.append((str(src.relative_to(REPO)), s[:60]))
    assert [o for o in offenders if o[0] not in _MAY_NAME_THE_KEY] == []


def test_doctor_and_setup_never_read_the_private_key(secret_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import builtins
    import io
    import os

    tmp = secret_run[0]
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def guard(path) -> None:
        if Path(str(path)).name in ("mitmproxy-ca.pem", "mitmproxy-ca.p12"):
            raise AssertionError(f"our code opened the CA private key {path}")

    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (guard(f), real_open(f, *a, **k))[1])
    monkeypatch.setattr(io, "open", lambda f, *a, **k: (guard(f), real_io_open(f, *a, **k))[1])
    monkeypatch.setattr(os, "open", lambda f, *a, **k: (guard(f), real_os_open(f, *a, **k))[1])
    from tokenpak_mitm.cli import doctor
    from tokenpak_mitm.cli.setup import write_bundle

    checks = doctor.check_ca(tmp, required=True)
    assert any("private key" in c.name.lower() for c in checks)
    write_bundle(tmp / "mitmproxy-ca-cert.pem", tmp_path / "bundle.pem")


def test_ca_private_key_is_not_copied_or_printed(secret_run, tmp_path: Path):
    tmp, stack, _, _ = secret_run
    ca = tmp / "mitmproxy-ca.pem"  # confdir = the stack's temp dir
    pem = ca.read_text()
    key_body = pem.split("-----BEGIN PRIVATE KEY-----", 1)[1].split("-----END", 1)[0] if "BEGIN PRIVATE KEY" in pem else pem.split("PRIVATE KEY-----", 1)[1].split("-----END", 1)[0]
    probe = "".join(key_body.split())[40:120]  # a slice of the key, line breaks removed
    from tokenpak_mitm.cli.setup import write_bundle

    write_bundle(ca, tmp_path / "bundle.pem")  # even pointed at the key file, only certificates go out
    assert "PRIVATE KEY" not in (tmp_path / "bundle.pem").read_text()
    for root in (tmp, tmp_path):
        for p in root.rglob("*"):
            if p.is_file() and p.name not in ("mitmproxy-ca.pem", "mitmproxy-ca.p12"):
                flat = b"".join(p.read_bytes().split())
                assert probe.encode() not in flat, p
    assert probe not in "".join(stack.proxy.output().split())
    assert _mode(ca) & 0o077 == 0  # mitmproxy's own file: owner-only too


def test_known_secret_values_are_redacted_whatever_their_shape():
    from tokenpak_mitm.core.redact import secret_values

    known = secret_values([("Authorization", f"Bearer {BEARER}"), ("cookie", f"a=1; session={COOKIE}"), ("x-test-id", "not-a-secret-123")], f"/v1?key={GOOGLE_KEY}&alt=sse")
    text = f"bad line {BEARER} / {COOKIE} / {GOOGLE_KEY} / not-a-secret-123 / 1"
    out = redact_text(text, known) or ""
    assert not [c for c in (BEARER, COOKIE, GOOGLE_KEY) if c in out]
    assert "not-a-secret-123" in out and out.endswith("/ 1")  # only what the request carried as a secret
