"""`tokenpak setup`: the printed lines, evaluated by a real shell, route real clients through a real mitmdump.

Both modes are exercised end to end against loopback stubs: reverse mode (base URLs, plain HTTP
to the proxy) and regular mode (HTTPS_PROXY + the CA that mitmdump generated in a temporary
confdir, against an HTTPS stub whose self-signed certificate the client does NOT trust, so a
request that bypassed the proxy would fail verification).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import shlex
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tokenpak_mitm.cli.main import SUBCOMMANDS, build_parser, main
from tokenpak_mitm.cli.setup import CLIENTS, SetupOptions, addon_script_path, allow_hosts_pattern, render, write_bundle
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.store.sqlite import connect_readonly

VENV_BIN = Path(sys.executable).parent
MESSAGE = {"id": "msg_stub", "type": "message", "role": "assistant", "model": "claude-stub", "content": [{"type": "text", "text": "hi"}],
           "stop_reason": "end_turn", "stop_sequence": None,
           "usage": {"input_tokens": 7, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 3}}
REQUEST = json.dumps({"model": "claude-stub", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})


def exports(text: str) -> dict[str, str]:
    """What `eval` would set, parsed from the export lines (values are shell-quoted)."""
    import shlex

    out = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            out[name] = shlex.split(value)[0]
        else:
            assert line.startswith("#"), f"non-comment, non-export line would run in eval: {line!r}"
    return out


# -- printed lines ------------------------------------------------------------------------------
def test_reverse_mode_lines(tmp_path: Path) -> None:
    claude = exports(render(SetupOptions("claude-code", port=9000)))
    assert claude == {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9000"}  # no trailing /v1
    py = render(SetupOptions("python", port=9000))
    assert exports(py) == {"ANTHROPIC_BASE_URL": "http://127.0.0.1:9000", "OPENAI_BASE_URL": "http://127.0.0.1:9001/v1",
                           "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9002"}
    assert "--mode reverse:https://api.openai.com@9001" in py and "own listener" in py
    assert "HTTPS_PROXY" not in exports(render(SetupOptions("shell")))


def test_regular_mode_lines(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    node = exports(render(SetupOptions("node", mode="regular", port=9000, confdir=confdir)))
    assert node["HTTPS_PROXY"] == node["https_proxy"] == "http://127.0.0.1:9000"
    assert node["NODE_EXTRA_CA_CERTS"] == str(confdir / "mitmproxy-ca-cert.pem")
    bundle = tmp_path / "bundle.pem"
    shell_text = render(SetupOptions("shell", mode="regular", confdir=confdir, bundle=bundle))
    shell = exports(shell_text)
    assert shell["SSL_CERT_FILE"] == shell["REQUESTS_CA_BUNDLE"] == shell["CURL_CA_BUNDLE"] == str(bundle)
    assert shell["NODE_EXTRA_CA_CERTS"] == str(confdir / "mitmproxy-ca-cert.pem")  # adds, so the CA alone is right
    assert "REPLACE the trust store" in shell_text and "--allow-hosts" in shell_text


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_never_names_the_private_key(client: str, mode: str, tmp_path: Path) -> None:
    text = render(SetupOptions(client, mode=mode, confdir=tmp_path))
    assert "mitmproxy-ca.pem" not in text and "PRIVATE" not in text


def test_allow_hosts_pattern_limits_interception_to_llm_hosts() -> None:
    pattern = re.compile(allow_hosts_pattern())
    for host in ("api.anthropic.com:443", "api.openai.com:443", "generativelanguage.googleapis.com:443"):
        assert pattern.search(host)
    for host in ("statsig.anthropic.com:443", "sentry.io:443", "api.anthropic.com.evil.example:443", "xapi.openai.com:443"):
        assert not pattern.search(host)


def test_write_bundle_copies_certificates_only(tmp_path: Path) -> None:
    import certifi

    ca = tmp_path / "mitmproxy-ca-cert.pem"
    cert = "-----BEGIN CERTIFICATE-----\nTUlUTQ==\n-----END CERTIFICATE-----\n"
    ca.write_text("-----BEGIN PRIVATE KEY-----\nU0VDUkVU\n-----END PRIVATE KEY-----\n" + cert)
    dest = tmp_path / "out" / "bundle.pem"
    assert write_bundle(ca, dest) == 1
    data = dest.read_text()
    assert data.startswith(Path(certifi.where()).read_text().rstrip("\n")) and cert.strip() in data
    assert "PRIVATE" not in data and "U0VDUkVU" not in data


def test_write_bundle_without_ca_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["setup", "python", "--mode", "regular", "--confdir", str(tmp_path), "--write-bundle", str(tmp_path / "b.pem")])
    assert rc == 2 and not (tmp_path / "b.pem").exists()
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing for eval to run
    assert captured.err.count("\n") == 1 and "start the proxy once" in captured.err
    assert "so mitmproxy creates its CA, then run this again" in captured.err


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_printed_proxy_command_keeps_query_strings_off_the_console(client: str, mode: str, tmp_path: Path) -> None:
    """mitmdump's default flow lines print URLs with a Gemini ?key=; make run passes flow_detail=0, so must setup."""
    commands = [line for line in render(SetupOptions(client, mode=mode, confdir=tmp_path)).splitlines() if "mitmdump" in line]
    assert commands
    for line in commands:
        args = shlex.split(line.lstrip("# "))
        assert "flow_detail=0" in [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]


def test_cli_registry_lists_the_subcommands() -> None:
    assert {"setup", "report", "tail", "doctor"} <= set(SUBCOMMANDS)  # `conformance` plugs in with one register() line
    assert {"conformance", "run"} <= set(SUBCOMMANDS)  # (was: the stale extension-point comment; conformance is registered)
    help_text = build_parser().format_help()
    assert all(name in help_text for name in SUBCOMMANDS)


# -- real shell, real mitmdump, real clients ----------------------------------------------------
class _Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[tuple[str, bytes]] = []
        super().__init__(("127.0.0.1", 0), _StubHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _StubHandler(BaseHTTPRequestHandler):
    server: _Stub
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.seen.append((self.path, body))
        data = json.dumps(MESSAGE).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _self_signed(tmp: Path) -> ssl.SSLContext:
    """A certificate for 127.0.0.1 that no client here trusts (mitmdump uses ssl_insecure)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokenpak test stub")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "stub-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "stub-key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp / "stub-cert.pem", tmp / "stub-key.pem")
    return ctx


def _shell(script: str, home: Path) -> str:
    """bash with a clean environment: only what `eval "$(tokenpak setup …)"` sets can route traffic."""
    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def _rows(db: Path) -> list[dict]:
    conn = connect_readonly(db)
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        conn.close()


@pytest.fixture
def tokenpak_on_path() -> Iterator[None]:
    if not (VENV_BIN / "tokenpak").exists():
        pytest.skip("the tokenpak console script is not installed in this environment")
    yield


def _python_client(url_expr: str) -> str:
    """A python+httpx client (trust_env: HTTPS_PROXY, SSL_CERT_FILE) as a shell heredoc."""
    return (f"python - <<'EOF'\nimport httpx, os\n"
            f"r = httpx.post({url_expr}, content={REQUEST!r}, headers={{'content-type': 'application/json'}}, timeout=60)\n"
            "r.raise_for_status()\nprint(r.json()['id'])\nEOF")


@pytest.mark.e2e
def test_reverse_mode_setup_routes_curl_and_python(tmp_path: Path, tokenpak_on_path: None) -> None:
    stub = _Stub()
    db = tmp_path / "t.db"
    args = ["--listen-host", "127.0.0.1", "-p", "0", "--mode", f"reverse:http://127.0.0.1:{stub.server_address[1]}",
            "-s", addon_script_path(), "--set", f"tokenpak_db={db}", "--set", f"confdir={tmp_path / 'conf'}"]
    try:
        with MitmdumpProcess.from_args(args) as proxy:
            curl_out = _shell(
                f'eval "$(tokenpak setup curl --port {proxy.port})"\n'
                f'curl -sS --fail -X POST "$ANTHROPIC_BASE_URL/v1/messages" -H "content-type: application/json" -d {json.dumps(REQUEST)!r}',
                tmp_path)
            py_out = _shell(
                f'eval "$(tokenpak setup python --port {proxy.port})"\n'
                + _python_client("os.environ['ANTHROPIC_BASE_URL'] + '/v1/messages'"),
                tmp_path)
    finally:
        stub.shutdown()
    assert json.loads(curl_out)["id"] == "msg_stub" and py_out.strip() == "msg_stub"
    assert [path for path, _ in stub.seen] == ["/v1/messages", "/v1/messages"]
    rows = _rows(db)
    assert len(rows) == 2 and all(r["terminal_state"] == "completed" and r["input_tokens"] == 7 and r["output_tokens"] == 3 for r in rows)


@pytest.mark.e2e
def test_regular_mode_setup_routes_curl_and_python_through_the_generated_ca(tmp_path: Path, tokenpak_on_path: None) -> None:
    stub = _Stub(tls=_self_signed(tmp_path))
    stub_url = f"https://127.0.0.1:{stub.server_address[1]}/v1/messages"
    db, confdir, bundle = tmp_path / "t.db", tmp_path / "conf", tmp_path / "bundle.pem"
    args = ["--listen-host", "127.0.0.1", "-p", "0", "--mode", "regular", "-s", addon_script_path(),
            "--set", f"tokenpak_db={db}", "--set", f"confdir={confdir}",
            "--set", "ssl_insecure=true",  # upstream is the self-signed stub; the client leg is what is tested
            "--set", "tokenpak_hosts=127.0.0.1"]
    try:
        with MitmdumpProcess.from_args(args) as proxy:
            setup = f"--mode regular --port {proxy.port} --confdir {confdir}"
            curl_out = _shell(
                f'eval "$(tokenpak setup curl {setup} --write-bundle {bundle})"\n'
                f'test "$CURL_CA_BUNDLE" = {bundle}\n'
                f'curl -sS --fail -X POST {stub_url} -H "content-type: application/json" -d {json.dumps(REQUEST)!r}',
                tmp_path)
            py_out = _shell(
                f'eval "$(tokenpak setup python {setup} --write-bundle {bundle})"\n'
                + _python_client(repr(stub_url)),
                tmp_path)
            with pytest.raises(AssertionError):  # control: the same client without the setup lines cannot verify the stub
                _shell(f"curl -sS --fail -X POST {stub_url} -d x", tmp_path)
    finally:
        stub.shutdown()
    assert json.loads(curl_out)["id"] == "msg_stub" and py_out.strip() == "msg_stub"
    assert "PRIVATE" not in bundle.read_text()
    rows = _rows(db)
    assert len(rows) == 2 and {r["host"] for r in rows} == {"127.0.0.1"}
    assert all(r["terminal_state"] == "completed" and r["output_tokens"] == 3 for r in rows)
