"""``tokenpak run``: the package starts the proxy by itself (no checkout, no Makefile needed)."""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for_rows

from tokenpak_mitm.cli import run as run_cmd
from tokenpak_mitm.proxy.launch import SCRIPT
from tokenpak_mitm.script import make_addons
from tokenpak_mitm.sim.client import build_request, request
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.upstream import FakeUpstream, sse_script

ROOT = Path(__file__).resolve().parents[1]
TOKENPAK = Path(sys.executable).with_name("tokenpak")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    run_cmd.add_arguments(parser)
    return parser.parse_args(argv)


def test_the_command_loads_the_package_script_with_make_runs_defaults():
    argv = run_cmd.command(parse())
    assert argv[argv.index("-s") + 1] == str(SCRIPT) and SCRIPT.is_file()
    assert SCRIPT.resolve().is_relative_to((ROOT / "tokenpak_mitm").resolve())  # inside the package, not the checkout
    assert argv[argv.index("--mode") + 1] == "reverse:https://api.anthropic.com"
    assert "flow_detail=0" in argv and "--allow-hosts" not in argv


def _make_run(*variables: str) -> list[str]:
    """The `tokenpak run` arguments `make run` uses with these variables (make -n: nothing starts)."""
    out = subprocess.run(["make", "-s", "-n", "-C", str(ROOT), "run", *variables], capture_output=True, text=True, timeout=60, check=True).stdout
    line = next(part for part in out.replace("\\\n", " ").splitlines() if "tokenpak run" in part)
    argv = shlex.split(line)
    assert Path(argv[0]).name == "tokenpak" and argv[1] == "run"  # make run has no command line of its own
    return argv[2:]


def _sets(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--set"]


def test_make_run_and_tokenpak_run_start_the_same_proxy():
    # Issue 26 item 5: tokenpak run left out tokenpak_quiet=true, so every connect printed.
    plain = run_cmd.command(parse())
    assert run_cmd.command(parse(*_make_run())) == plain
    assert {"tokenpak_quiet=true", "flow_detail=0"} <= set(_sets(plain))
    loud = run_cmd.command(parse(*_make_run("QUIET=false", "FLOW_DETAIL=1", "MODE=regular", "EXTRA_HOSTS=gw.corp.example,llm.local",
                                            "ARGS=--set tokenpak_cache=off")))
    assert {"tokenpak_quiet=false", "flow_detail=1", "tokenpak_hosts=gw.corp.example", "tokenpak_hosts=llm.local"} <= set(_sets(loud))
    scope = loud[loud.index("--allow-hosts") + 1]
    assert "api\\.openai\\.com" in scope and "gw\\.corp\\.example" in scope and loud[-2:] == ["--set", "tokenpak_cache=off"]
    assert "--allow-hosts" not in run_cmd.command(parse(*_make_run("MODE=regular", "SCOPE=")))  # SCOPE= intercepts all
    assert loud == run_cmd.command(parse("--mode", "regular", "--quiet", "false", "--flow-detail", "1", "--extra-hosts",
                                         "gw.corp.example,llm.local", "--", "--set", "tokenpak_cache=off"))


def test_reverse_mode_connects_upstream_per_request_and_regular_mode_at_connect():
    lazy = ["--set", "connection_strategy=lazy"]

    def has_lazy(argv: list[str]) -> bool:
        return any(argv[i:i + 2] == lazy for i in range(len(argv)))

    assert has_lazy(run_cmd.command(parse()))
    assert has_lazy(run_cmd.command(parse("--", "--mode", "reverse:https://api.openai.com@8767")))
    assert not has_lazy(run_cmd.command(parse("--mode", "regular")))
    assert not has_lazy(run_cmd.command(parse("--", "--mode=regular@8767")))  # one regular listener: eager for all
    assert not has_lazy(run_cmd.command(parse("--", "-m", "regular@8767")))
    assert run_cmd.command(parse("--", "--set", "connection_strategy=eager")).count("connection_strategy=lazy") == 0  # the user's own wins


def test_regular_mode_is_scoped_to_the_llm_hosts_and_extras_pass_through():
    argv = run_cmd.command(parse("--mode", "regular", "--extra-hosts", "gw.corp.example", "--", "--set", "tokenpak_cache=off"))
    scope = argv[argv.index("--allow-hosts") + 1]
    assert "api\\.anthropic\\.com" in scope and "gw\\.corp\\.example" in scope
    assert "tokenpak_hosts=gw.corp.example" in argv
    assert argv[-2:] == ["--set", "tokenpak_cache=off"]
    assert "--allow-hosts" not in run_cmd.command(parse("--mode", "regular", "--intercept-all"))


def test_the_checkout_entry_and_the_package_entry_are_the_same_two_lines():
    code = [line for line in (ROOT / "addons" / "tokenpak.py").read_text().splitlines() if line and not line.startswith('"""')]
    assert code == [line for line in SCRIPT.read_text().splitlines() if line and not line.startswith('"""')]
    kinds = [type(a).__name__ for a in make_addons()]
    assert kinds == ["TokenPak", "Recorder", "LiveConformance", "ContentviewAddon"]


@pytest.mark.e2e
def test_tokenpak_run_proxies_and_records_a_row(tmp_path: Path):
    if not TOKENPAK.exists():
        if os.environ.get("CI"):
            pytest.fail("the tokenpak console script is missing: make test installs it (pip install -e .)")
        pytest.skip("the tokenpak console script is not installed in this environment")
    frames = [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_run","model":"claude-sonnet-4-6","usage":{"input_tokens":4,"output_tokens":1}}}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    up = FakeUpstream(lambda req: sse_script(frames)).start()
    db = tmp_path / "t.db"
    proxy = MitmdumpProcess("unused", confdir=tmp_path)
    proxy.args = [str(TOKENPAK), "run", "--port", "0", "--mode", f"reverse:{up.url}", "--",
                  "--set", f"tokenpak_db={db}", "--set", f"confdir={tmp_path}"]
    try:
        proxy.start()
        body = b'{"model":"claude-sonnet-4-6","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
        resp = request(proxy.port, build_request("POST", "/v1/messages", body, [("content-type", "application/json")]))
        assert resp.body == b"".join(frames)
        rows = wait_for_rows(db, "response_id = ?", ("msg_run",))
    finally:
        proxy.stop()
        up.stop()
    assert len(rows) == 1 and rows[0]["output_tokens"] == 2 and rows[0]["terminal_state"] == "completed"


@pytest.mark.parametrize(("specs", "says"), [
    (["tokenpak_recod=/tmp/x"], "unknown option tokenpak_recod (did you mean tokenpak_record?)"),
    (["tokenpak_cache_ttl=2h"], "tokenpak_cache_ttl must be 5m, 1h or auto, not '2h'"),
    (["tokenpak_console=maybe"], "tokenpak_console must be true or false, not 'maybe'"),
    (["tokenpak_record_max_bytes=12"], "tokenpak_record_max_bytes must be at least 1024 bytes, not '12'"),
    (["tokenpak_conformance=loud"], "tokenpak_conformance must be one of off, warn, strict, not 'loud'"),
    (["tokenpak_cache=off", "tokenpak_cache=auto"], "Received multiple values for tokenpak_cache: ['off', 'auto']"),  # mitmproxy would skip the script
    (["tokenpak_cache=off", "tokenpak_hosts=a.example", "tokenpak_hosts=b.example", "flow_detail=0", "tokenpak_record_max_bytes=8m"], None),
])
def test_preflight_says_what_the_addons_would_stop_start_up_with(specs: list[str], says: str | None):
    from tokenpak_mitm.proxy.startup import preflight, set_specs

    assert set_specs(["-p", "0", "--set", specs[0], *[f"--set={s}" for s in specs[1:]]]) == specs
    assert preflight(make_addons(watch=False), specs) == says


@pytest.mark.e2e
@pytest.mark.parametrize(("option", "says"), [
    ("tokenpak_cach=off", "unknown option tokenpak_cach (did you mean tokenpak_cache?)"),
    ("tokenpak_cache=sometimes", "tokenpak_cache must be one of auto, off, top-level, not 'sometimes'"),
])
def test_a_bad_option_stops_tokenpak_run_before_anything_listens(tmp_path: Path, option: str, says: str):
    # Issue 26 item 9: mitmdump binds its port before it loads the addon script, so the addon's
    # own check came a second or two late: the port accepted (and forwarded) connections meanwhile.
    if not TOKENPAK.exists():
        if os.environ.get("CI"):
            pytest.fail("the tokenpak console script is missing: make test installs it (pip install -e .)")
        pytest.skip("the tokenpak console script is not installed in this environment")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(TOKENPAK), "run", "--port", str(port), "--mode", "reverse:http://127.0.0.1:9", "--",
                             "--set", f"tokenpak_db={tmp_path / 't.db'}", "--set", f"confdir={tmp_path}", "--set", option],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    accepted = 0
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            accepted += 1
        except OSError:
            time.sleep(0.005)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, accepted) == (2, 0)
    assert err.splitlines() == [f"tokenpak: {says} (proxy not started)"] and out == ""
    assert not (tmp_path / "t.db").exists()  # nothing started


@pytest.mark.e2e
def test_an_unreachable_upstream_gets_a_502_with_the_reason_and_a_row(tmp_path: Path):
    # Issue 26 item 8: with mitmproxy's eager connection strategy, a reverse proxy whose upstream is
    # down dropped the client before reading the request: an empty reply and no row.
    if not TOKENPAK.exists():
        if os.environ.get("CI"):
            pytest.fail("the tokenpak console script is missing: make test installs it (pip install -e .)")
        pytest.skip("the tokenpak console script is not installed in this environment")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = s.getsockname()[1]  # nothing listens there once this socket is closed
    db = tmp_path / "t.db"
    proxy = MitmdumpProcess("unused", confdir=tmp_path)
    proxy.args = [str(TOKENPAK), "run", "--port", "0", "--mode", f"reverse:http://127.0.0.1:{down}", "--",
                  "--set", f"tokenpak_db={db}", "--set", f"confdir={tmp_path}"]
    try:
        proxy.start()
        body = b'{"model":"claude-sonnet-4-6","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
        resp = request(proxy.port, build_request("POST", "/v1/messages", body, [("content-type", "application/json"),
                                                                                  ("x-api-key", "sk-ant-api03-canary-not-a-real-key-000000")]))
        rows = wait_for_rows(db, "1=1", ())
    finally:
        proxy.stop()
    assert resp.status == 502
    reason = [line for line in resp.body.decode().splitlines() if "Connect call failed" in line]
    assert len(reason) == 1 and str(down) in reason[0]  # the reason, on one line
    assert len(rows) == 1
    row = rows[0]
    assert (row["terminal_state"], row["model"], row["cost_usd"]) == ("upstream_unreachable", "claude-sonnet-4-6", 0.0)
    assert "Connect call failed" in row["error"]
