"""Quiet by default under `make run`: the startup line, one line per LLM request, warnings, errors.

Real mitmdump, real loopback upstream: with ``tokenpak_quiet=true`` mitmproxy's per-connection
lines are gone from the terminal and ours remain; ``false`` (``make run QUIET=false``) brings them back.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from conftest import make_stack

from tokenpak_mitm.proxy.quiet import ChatterFilter
from tokenpak_mitm.sim.upstream import sse_script

CHATTER = ("client connect", "client disconnect", "Streaming response from")


FRAMES = [
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_q","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-6","content":[],"stop_reason":null,"usage":{"input_tokens":20,"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]


def _one_streamed_request(tmp: Path, quiet: str) -> str:
    s = make_stack(tmp, options=[f"tokenpak_quiet={quiet}", "flow_detail=0"])
    try:
        resp, key = s.call(sse_script(FRAMES))
        assert resp.status == 200
        s.row(key)
        deadline = time.monotonic() + 10
        while "tokenpak: anthropic/messages" not in s.proxy.output() and time.monotonic() < deadline:
            time.sleep(0.05)
        return s.proxy.output()
    finally:
        s.close()


@pytest.mark.e2e
def test_quiet_shows_our_lines_and_not_mitmproxys_chatter(tmp_path: Path):
    out = _one_streamed_request(tmp_path, "true")
    assert "tokenpak-mitm" in out and "running:" in out  # the startup line
    assert "listening at" in out
    assert "tokenpak: anthropic/messages claude-sonnet-4-6" in out  # the per-request line
    for chatter in CHATTER:
        assert chatter not in out, chatter


@pytest.mark.e2e
def test_quiet_false_brings_the_chatter_back(tmp_path: Path):
    out = _one_streamed_request(tmp_path, "false")
    assert "client connect" in out and "tokenpak: anthropic/messages" in out


def test_the_filter_keeps_warnings_errors_and_ours():
    def rec(name: str, level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    f = ChatterFilter()
    assert not f.filter(rec("mitmproxy.proxy.server", logging.INFO, "client connect"))
    assert not f.filter(rec("mitmproxy.proxy.layers.http", logging.INFO, "Streaming response from api.anthropic.com"))
    assert f.filter(rec("mitmproxy.proxy.server", logging.INFO, "error establishing server connection: refused"))
    assert f.filter(rec("mitmproxy.proxy.server", logging.WARNING, "anything"))
    assert f.filter(rec("tokenpak", logging.INFO, "tokenpak: anthropic/messages ..."))
    assert f.filter(rec("mitmproxy.proxy.mode_servers", logging.INFO, "reverse proxy listening at 127.0.0.1:8766."))
