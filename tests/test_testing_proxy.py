"""The one mitmdump process helper (tokenpak_mitm.sim.mitmdump) in its three uses: tests (port read
from the output), doctor (given arguments, several listeners, SIGTERM) and the benchmark (-q)."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest

from tokenpak_mitm.proxy.launch import SCRIPT
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def test_given_arguments_with_two_listeners_report_both_ports(tmp_path: Path):
    a, b = _free_port(), _free_port()
    args = ["--listen-host", "127.0.0.1", "--mode", f"reverse:http://127.0.0.1:9@{a}", "--mode", f"reverse:http://127.0.0.1:9@{b}",
            "-s", str(SCRIPT), "--set", f"tokenpak_db={tmp_path / 't.db'}", "--set", f"confdir={tmp_path}"]
    with MitmdumpProcess.from_args(args, expect_listeners=2, stop_signal=signal.SIGTERM, start_new_session=True) as proxy:
        assert sorted(proxy.ports) == sorted([a, b]) and proxy.port == proxy.ports[0]
        assert all(_accepts(p) for p in proxy.ports)
        assert "tokenpak-mitm" in proxy.text
    assert proxy.proc is not None and proxy.proc.returncode == 0


def test_quiet_mode_waits_for_the_port_and_logs_to_a_file(tmp_path: Path):
    log = tmp_path / "m.log"
    proxy = MitmdumpProcess.quiet(["--mode", "reverse:http://127.0.0.1:9", "--set", f"confdir={tmp_path}",
                                   "-s", str(SCRIPT), "--set", f"tokenpak_db={tmp_path / 't.db'}"], log=log).start()
    try:
        assert _accepts(proxy.port) and proxy.pid > 0
    finally:
        rc = proxy.stop()
    assert rc == 0 and log.exists() and (tmp_path / "t.db").exists()
