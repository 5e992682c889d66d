"""The benchmark's peers (bench/peers): found when installed, left out with one hint when not,
and the client reads the responses of a server that closes after each one (TokenPak's HTTP/1.0).

Cheap: no peer, mitmdump or upstream process is started; the client test uses a loopback socket
server in a thread.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from bench.client import Conn
from bench.markdown import render
from bench.peers import PEERS, detect, hint
from bench.results_model import WorkloadResult
from bench.workloads import Setup, guard, live


def _fake_install(root: Path, venv: str, dist: str, version: str) -> None:
    """What `make bench-peers` leaves: a venv with python, the package's dist-info, the marker."""
    v = root / venv
    (v / "bin").mkdir(parents=True)
    (v / "bin" / "python").write_text("")
    (v / "lib" / "python3.12" / "site-packages" / f"{dist}-{version}.dist-info").mkdir(parents=True)
    (v / ".installed").write_text("")


def test_no_peers_installed_runs_without_them_and_says_how_to_add_them(tmp_path: Path) -> None:
    found, missing = detect(tmp_path / "absent")
    assert found == []
    assert [p.name for p in missing] == ["tokenpak-pypi", "litellm"]
    line = hint(missing)
    assert line is not None and "make bench-peers" in line and "TokenPak" in line and "LiteLLM" in line
    assert "\n" not in line  # one line


def test_an_installed_peer_is_found_with_its_version(tmp_path: Path) -> None:
    _fake_install(tmp_path, "litellm", "litellm", "1.106.12")
    (tmp_path / "tokenpak" / "bin").mkdir(parents=True)  # a venv whose pip failed: no .installed
    found, missing = detect(tmp_path)
    assert [p.name for p in found] == ["litellm"]
    assert found[0].version(tmp_path) == "1.106.12"
    assert found[0].prefix == "/anthropic"
    assert hint(missing) is not None and "TokenPak" in hint(missing)  # type: ignore[operator]
    _fake_install(tmp_path, "tokenpak2", "tokenpak", "1.31.0")  # not where it is looked for
    assert hint(detect(tmp_path)[1]) is not None


def test_every_peer_serves_the_streamed_and_non_streamed_workloads() -> None:
    for peer in PEERS:
        assert not {"nonstream", "stream", "concurrent"} & set(peer.skips), peer.name
        assert all(why for why in peer.skips.values())  # the table says why


def test_a_peer_error_drops_only_that_peer_and_our_own_errors_still_end_the_run() -> None:
    ours, peer = Setup("addon", 1), Setup("litellm", 2, peer=True)
    with guard(peer):
        raise ConnectionResetError("reset by peer")
    assert peer.broken is not None and "ConnectionResetError" in peer.broken
    assert list(live([ours, peer])) == [ours]
    with pytest.raises(ConnectionResetError), guard(ours):
        raise ConnectionResetError("reset")


def test_the_markdown_table_has_a_column_and_a_ratio_per_peer() -> None:
    res = WorkloadResult("nonstream", "x")
    res.add("latency p50", "ms", {"direct": 0.1, "plain": 2.0, "addon": 2.5, "litellm": 10.0})
    doc = {"peers": {"litellm": {"label": "LiteLLM proxy", "version": "1.106.12"}}, "workloads": [res.to_json()]}
    table = render(doc, targets=False)
    head, _, row = table.splitlines()
    assert "LiteLLM proxy" in head and "addon/LiteLLM proxy" in head and "target" not in head
    assert "10.0" in row and "0.25x" in row and "1.25x" in row
    assert "LiteLLM" not in render({"workloads": [res.to_json()]}).splitlines()[0]  # no peers: as before


def _serve_http10(responses: list[bytes], accepted: list[int], keep_alive: bool = False) -> tuple[socket.socket, threading.Thread]:
    """A loopback server that answers one request per connection, then closes: HTTP/1.0 style
    (the close ends the body), or with ``keep_alive`` an HTTP/1.1 answer with a length and then
    the close of an idle keep-alive timeout."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)

    def run() -> None:
        for body in responses:
            conn, _ = srv.accept()
            accepted.append(1)
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                if keep_alive:
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    conn.sendall(b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n" + body)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv, t


def test_the_client_reads_close_delimited_responses_and_reconnects() -> None:
    accepted: list[int] = []
    srv, t = _serve_http10([b'{"a":1}', b'{"b":2}'], accepted)
    try:
        c = Conn(srv.getsockname()[1], timeout=10)
        raw = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
        _, head, body = c.post(raw)
        assert head.startswith(b"HTTP/1.0 200") and body == b'{"a":1}' and c.closed
        _, _, body = c.post(raw)  # a new connection, not a write into the closed one
        assert body == b'{"b":2}' and c.reconnects == 1 and len(accepted) == 2
        c.close()
    finally:
        t.join(10)
        srv.close()


def test_the_client_notices_a_keep_alive_connection_the_server_closed_while_idle() -> None:
    """uvicorn (LiteLLM) closes a connection idle for 5 s, shorter than a round of five setups:
    the next request must go on a new connection, not into the closed one (a lost stream)."""
    accepted: list[int] = []
    srv, t = _serve_http10([b'{"a":1}', b'{"b":2}'], accepted, keep_alive=True)
    try:
        c = Conn(srv.getsockname()[1], timeout=10)
        raw = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
        assert c.post(raw)[2] == b'{"a":1}' and not c.closed  # kept alive as far as HTTP/1.1 says
        deadline = time.monotonic() + 10
        while not c.stale() and time.monotonic() < deadline:  # bounded wait for the server's close
            time.sleep(0.01)
        assert c.post(raw)[2] == b'{"b":2}' and c.reconnects == 1
        c.close()
    finally:
        t.join(10)
        srv.close()
