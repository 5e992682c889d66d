"""Shared end-to-end rig: a scripted loopback upstream behind a real mitmdump running the addon."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tokenpak_mitm.conformance.scenarios import FIXTURES  # recorded streams ship with the package
from tokenpak_mitm.sim.client import Response, build_request, request
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.upstream import FakeUpstream, Received, Script

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


# -- every test that starts a real mitmdump is marked e2e (make test-fast runs the rest) -----------
# Enforced, not just a convention: outside an e2e test (and its fixtures' setup), starting a
# mitmdump process (directly, through `tokenpak run` or doctor's stream check) fails the test.
_E2E_ALLOWED = [True]
_real_popen_init = subprocess.Popen.__init__


def _starts_mitmdump(args: Any) -> bool:
    argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
    names = [os.path.basename(a) for a in argv]
    return "mitmdump" in names or (names[:1] == ["tokenpak"] and "run" in names[1:2])


def _guarded_popen_init(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
    if not _E2E_ALLOWED[0] and _starts_mitmdump(args):
        raise RuntimeError("this test starts a real mitmdump: mark it @pytest.mark.e2e")
    _real_popen_init(self, args, *a, **kw)


subprocess.Popen.__init__ = _guarded_popen_init  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _E2E_ALLOWED[0] = item.get_closest_marker("e2e") is not None
    yield
    _E2E_ALLOWED[0] = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    _E2E_ALLOWED[0] = item.get_closest_marker("e2e") is not None
    yield
    _E2E_ALLOWED[0] = True


def fixture_bytes(name: str) -> bytes:
    """A recorded stream: our copy in conformance/fixtures (with its licence), else shared/fixtures."""
    for base in (FIXTURES, SHARED_FIXTURES):
        if (base / name).exists():
            return (base / name).read_bytes()
    raise FileNotFoundError(name)


def wait_for_rows(db: Path, where: str, args: tuple, n: int = 1, timeout: float = 15.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        if db.exists():
            try:
                con = sqlite3.connect(db)
                con.row_factory = sqlite3.Row
                rows = [dict(r) for r in con.execute(f"SELECT * FROM requests WHERE {where}", args)]
                con.close()
            except sqlite3.OperationalError:
                rows = []
            if len(rows) >= n:
                return rows
        time.sleep(0.05)
    return rows


@dataclass
class Stack:
    upstream: FakeUpstream
    proxy: MitmdumpProcess
    db: Path
    scripts: dict[str, Script | Callable[[Received], Script]] = field(default_factory=dict)

    def call(
        self,
        script: Script | Callable[[Received], Script],
        body: bytes = b'{"model":"claude-sonnet-4-6","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}',
        *,
        path: str = "/v1/messages",
        headers: list[tuple[str, str]] | None = None,
        on_piece: Callable[[bytes, Response], bool | None] | None = None,
    ) -> tuple[Response, str]:
        key = f"req_{uuid.uuid4().hex[:16]}"
        self.scripts[key] = script
        hs = [("content-type", "application/json"), ("x-test-id", key), ("x-api-key", "sk-ant-canary-0123456789abcdef")] + (headers or [])
        resp = request(self.proxy.port, build_request("POST", path, body, hs), on_piece=on_piece)
        return resp, key

    def row(self, key: str, timeout: float = 15.0) -> dict:
        rows = wait_for_rows(self.db, "upstream_request_id = ?", (key,), timeout=timeout)
        assert len(rows) == 1, f"expected one row for {key}, got {len(rows)}\n{self.proxy.output()[-3000:]}"
        return rows[0]

    def close(self) -> None:
        """Stop the proxy first (its shutdown flushes rows), then the upstream."""
        self.proxy.stop()
        self.upstream.stop()

    def received(self, key: str) -> Received:
        return next(r for r in self.upstream.received if r.header("x-test-id") == key)


def _handler(scripts: dict) -> Callable[[Received], Script]:
    def handle(req: Received) -> Script:
        key = req.header("x-test-id") or ""
        entry = scripts.pop(key, None)
        if entry is None:
            return Script(status=404, reason="Not Found", headers=[("content-type", "application/json")], steps=[], chunked=False)
        script = entry(req) if callable(entry) else entry
        if not any(k.lower() == "request-id" for k, _ in script.headers):
            script.headers = [*script.headers, ("request-id", key)]
        return script

    return handle


def make_stack(tmp: Path, options: list[str] | None = None, extra_args: list[str] | None = None) -> Stack:
    scripts: dict = {}
    up = FakeUpstream(_handler(scripts)).start()
    db = tmp / "tokenpak.db"
    proxy = MitmdumpProcess(f"reverse:{up.url}", db=db, confdir=tmp, options=options or [], extra_args=extra_args or []).start()
    return Stack(upstream=up, proxy=proxy, db=db, scripts=scripts)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    s = make_stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.close()


# -- a real PostgreSQL server (the team store): one cluster per test session -------------------
@pytest.fixture(scope="session")
def postgres() -> Generator[Any, None, None]:
    """A running PostgreSQL cluster on a free 127.0.0.1 port (tests/postgres_server.py); fails,
    never skips, when the server binaries are missing."""
    from tokenpak_mitm.testing.postgres import Missing, PostgresServer

    try:
        server = PostgresServer()
    except Missing as e:
        pytest.fail(str(e), pytrace=False)
    server.start()
    try:
        yield server
    finally:
        server.close()
