"""HTTP/2 end to end (what curl, httpx and SDKs through HTTPS_PROXY often negotiate).

Client and upstream both speak HTTP/2 over TLS, so mitmproxy runs HTTP/2 on both legs and calls
the stream callable once per DATA frame. The upstream is hypercorn serving a small ASGI app that
streams SSE frames, optionally holding the rest until the client has seen the first frame.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import threading
from pathlib import Path

import httpx
import pytest
from conftest import wait_for_rows
from test_e2e_stream import ANTHROPIC_BASIC

from tokenpak_mitm.sim.mitmdump import MitmdumpProcess

pytestmark = pytest.mark.e2e  # every test here runs a real mitmdump

hypercorn = pytest.importorskip("hypercorn")

RELEASE: dict[str, threading.Event] = {}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    headers = dict(scope["headers"])
    key = headers.get(b"x-test-id", b"").decode()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream"), (b"request-id", key.encode()), (b"x-upstream-http", scope["http_version"].encode())]})
    for i, frame in enumerate(ANTHROPIC_BASIC):
        if i == 1 and key in RELEASE:
            await asyncio.get_running_loop().run_in_executor(None, RELEASE[key].wait, 5)
        await send({"type": "http.response.body", "body": frame, "more_body": True})
        await asyncio.sleep(0.03 if headers.get(b"x-slow") else 0)
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _self_signed(tmp: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "up.pem", tmp / "up.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def h2(tmp_path_factory: pytest.TempPathFactory):
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    tmp = tmp_path_factory.mktemp("h2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = _self_signed(tmp)
    config.alpn_protocols = ["h2", "http/1.1"]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait)), daemon=True)
    thread.start()
    db = tmp / "t.db"
    proxy = MitmdumpProcess(f"reverse:https://127.0.0.1:{port}", db=db, confdir=tmp, options=["ssl_insecure=true"]).start()
    try:
        yield proxy, db
    finally:
        proxy.stop()
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def _stream(proxy: MitmdumpProcess, key: str, hang_up_after: bytes | None = None, slow: bool = False):
    headers = {"content-type": "application/json", "x-test-id": key}
    if slow:
        headers["x-slow"] = "1"
    got, complete = b"", False
    with httpx.Client(http2=True, verify=False, timeout=20) as c:
        with c.stream("POST", f"https://127.0.0.1:{proxy.port}/v1/messages", content=b'{"model":"claude-sonnet-4-6","stream":true}', headers=headers) as r:
            version, upstream_version = r.http_version, r.headers.get("x-upstream-http")
            for chunk in r.iter_raw():
                got += chunk
                if key in RELEASE and b"message_start" in got:
                    RELEASE[key].set()
                if hang_up_after is not None and hang_up_after in got:
                    return version, upstream_version, got, False
            complete = True
    return version, upstream_version, got, complete


def test_h2_on_both_legs_bytes_unchanged_unbuffered_one_row(h2):
    proxy, db = h2
    RELEASE["req_h2_a"] = release = threading.Event()
    version, upstream_version, got, complete = _stream(proxy, "req_h2_a")
    assert (version, upstream_version) == ("HTTP/2", "2")
    assert complete and got == b"".join(ANTHROPIC_BASIC)
    assert release.is_set()  # the client saw frame 1 while the upstream held the rest
    rows = wait_for_rows(db, "upstream_request_id = ?", ("req_h2_a",))
    assert len(rows) == 1
    row = rows[0]
    assert row["terminal_state"] == "completed" and row["frames"] == len(ANTHROPIC_BASIC)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (20, 3000, 15)


def test_h2_client_cancel_gives_one_client_disconnected_row(h2):
    proxy, db = h2
    version, _, got, complete = _stream(proxy, "req_h2_b", hang_up_after=b"text_delta", slow=True)
    assert version == "HTTP/2" and not complete
    rows = wait_for_rows(db, "upstream_request_id = ?", ("req_h2_b",))
    assert len(rows) == 1
    assert rows[0]["terminal_state"] == "client_disconnected" and rows[0]["usage_source"] == "partial"
