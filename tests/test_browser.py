"""The HTML report and mitmweb's LLM view, opened in a real headless Chromium (system package).

CI installs Chromium with .ci/deps; when it is missing these tests fail in CI (CI set) and are
skipped on a developer machine without it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tokenpak_mitm.cli.main import main
from tokenpak_mitm.store.sqlite import COLUMN_NAMES, TelemetryStore
from tokenpak_mitm.testing.browser import MISSING, chromium_executable, dump_dom, png_pixels, screenshot

pytestmark = pytest.mark.e2e
FLOWS = Path(__file__).resolve().parent.parent / "flows"


@pytest.fixture(scope="module", autouse=True)
def chromium() -> str:
    exe = chromium_executable()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return exe


def _row(key: str, when: float, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(COLUMN_NAMES)
    base.update(request_key=key, started_at=when, provider="anthropic", api="messages", route_class="claude-code",
                host="api.anthropic.com", path="/v1/messages", model="claude-sonnet-4-6", stream=1, billable=1, status_code=200,
                terminal_state="completed", usage_source="final", input_tokens=100, cache_read_tokens=5000, cache_write_tokens=200,
                output_tokens=300, cost_usd=0.02, savings_usd=0.01, cache_origin="proxy", markers_inserted=1, cache_decision="inserted",
                ttft_ms=400.0, duration_ms=3000.0, proxy_request_ms=0.3)
    base.update(values)
    return base


def _db(path: Path, rows: list[dict[str, Any]]) -> Path:
    store = TelemetryStore(path)
    store.start()
    for r in rows:
        store.submit(r)
    store.close()
    return path


def _page(tmp_path: Path, rows: list[dict[str, Any]], *args: str) -> Path:
    db = _db(tmp_path / "t.db", rows)
    page = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--since", "all", "--html", str(page), *args]) == 0
    return page


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def test_the_html_report_renders_its_charts_in_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    days = [datetime(2026, 5, d, 10).timestamp() for d in (1, 2, 4)]
    rows = [_row(f"a{i}", t + i) for i, t in enumerate(days)]
    rows += [_row(f"b{i}", t + 60 + i, model="gpt-4o-mini", provider="openai", cost_usd=0.01, ttft_ms=900.0) for i, t in enumerate(days)]
    rows.append(_row("err", days[1] + 99, status_code=429, terminal_state="error_response", usage_source="absent", input_tokens=None,
                     cache_read_tokens=None, cache_write_tokens=None, output_tokens=None, cost_usd=0.0, ttft_ms=None, duration_ms=50.0))
    page = _page(tmp_path, rows, "--by", "model")
    capsys.readouterr()
    dom, log = dump_dom(page.as_uri())
    assert not _console_errors(log), _console_errors(log)
    assert dom.count("<svg") == 5  # cost by model, cost by bucket, cache hit, latency, savings
    for caption in ("Cost per day (USD, priced requests) by model", "Latency per day (ms)", "Cache hit ratio per day"):
        assert caption in dom
    assert len(re.findall(r"<rect[^>]+fill=\"#4e79a7\"", dom)) >= 3  # one bar per day for the first model
    assert dom.count("<polyline") >= 2
    png = tmp_path / "shot.png"
    screenshot(page.as_uri(), png, width=900, height=900)
    pixels = png_pixels(png)
    first_model, second_model = (0x4E, 0x79, 0xA7), (0xF2, 0x8E, 0x2B)  # MODEL_COLORS[0], [1]
    assert pixels[first_model] > 200 and pixels[second_model] > 200, pixels.most_common(8)  # the stacked bars are painted


def test_a_short_window_is_charted_per_hour(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    t0 = datetime(2026, 5, 3, 9).timestamp()
    page = _page(tmp_path, [_row(f"h{i}", t0 + i * 1800) for i in range(8)])
    capsys.readouterr()
    dom, log = dump_dom(page.as_uri())
    assert not _console_errors(log)
    assert "Cost per hour (USD, priced requests) by model" in dom and ">09:00<" in dom and ">12:00<" in dom


def _start_mitmweb(tmp_path: Path, flow_file: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    exe = str(Path(os.environ.get("VIRTUAL_ENV", "")) / "bin" / "mitmweb") if os.environ.get("VIRTUAL_ENV") else None
    if not exe or not Path(exe).exists():
        from tokenpak_mitm.sim.mitmdump import mitmdump_executable

        exe = str(Path(mitmdump_executable()).with_name("mitmweb"))
    addon = Path(__file__).resolve().parent.parent / "addons" / "tokenpak.py"
    with socket.socket() as s:  # mitmweb prints the port it was given, so give it a free one
        s.bind(("127.0.0.1", 0))
        web_port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--no-web-open-browser", "--web-host", "127.0.0.1", "--web-port", str(web_port), "--listen-host", "127.0.0.1", "-p", "0",
         "--set", f"confdir={tmp_path}", "-s", str(addon), "--set", f"tokenpak_db={tmp_path / 'w.db'}", "-r", str(flow_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"Web server listening at (http://127\.0\.0\.1:\d+/\?token=\w+)", line)
            if m:
                url.append(m.group(1))
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    if not found.wait(60):
        proc.kill()
        raise RuntimeError("mitmweb did not start:\n" + "".join(lines))
    return proc, url[0], lines


@pytest.mark.parametrize("stem, needles", [
    ("anthropic_fixture_tool_use", ("tool call: get_weather", "tokenpak: anthropic messages, HTTP 200")),
    ("openai_chat_fixture_include_usage", ("tokenpak: openai chat.completions, HTTP 200", "model: gpt-4o")),
])
def test_mitmweb_shows_llm_flows_through_the_view(tmp_path: Path, stem: str, needles: tuple[str, ...]):
    from mitmproxy import io

    flow_file = FLOWS / f"{stem}.mitm"
    with open(flow_file, "rb") as f:
        flow_id = next(iter(io.FlowReader(f).stream())).id
    proc, url, lines = _start_mitmweb(tmp_path, flow_file)
    try:
        deadline = time.monotonic() + 30
        dom = ""
        while time.monotonic() < deadline:
            dom, _ = dump_dom(f"{url}#/flows/{flow_id}/response", budget_ms=8000)
            if needles[0] in dom:
                break
        assert "LLM (tokenpak)" in dom  # the view mitmweb picked for the response
        for needle in needles:
            assert needle in dom, needle
        assert "data: {" not in dom  # no raw SSE wall
    finally:
        proc.terminate()
        proc.wait(20)
