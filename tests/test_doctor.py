"""`tokenpak doctor`: broken setups fail with a fix; a healthy one passes, streaming check included."""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenpak_mitm.cli import doctor
from tokenpak_mitm.cli.doctor import CA_VARS, check_ca, check_database, check_environment, check_mitmproxy, check_proxy, check_python
from tokenpak_mitm.cli.main import main
from tokenpak_mitm.cli.setup import write_bundle
from tokenpak_mitm.sim.mitmdump import MitmdumpProcess
from tokenpak_mitm.sim.upstream import FakeUpstream, Script, Step
from tokenpak_mitm.store.sqlite import TelemetryStore

ROUTING_VARS = ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL", "HTTPS_PROXY", "https_proxy",
                "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", *CA_VARS)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own proxy/CA variables must not decide these tests."""
    for name in ROUTING_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "300")  # rich wraps the table to the terminal width


@pytest.fixture(scope="module")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made by mitmproxy itself, exactly as a first proxy start makes it."""
    from mitmproxy.certs import CertStore

    path = tmp_path_factory.mktemp("confdir")
    CertStore.from_store(path, "mitmproxy", 2048)
    assert (path / "mitmproxy-ca-cert.pem").is_file()
    return path


@pytest.fixture
def listening() -> Iterator[str]:
    """A loopback port that accepts connections, standing in for a running proxy."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def statuses(checks: list) -> dict[str, str]:
    return {c.name: c.status for c in checks}


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A loopback upstream that answers everything (and notes what it received)."""
    up = FakeUpstream(lambda req: Script(status=200, headers=[("content-type", "application/json")], steps=[Step(b'{"ok": true}')],
                                             chunked=False)).start()
    yield up
    up.stop()


@pytest.fixture
def proxy(tmp_path: Path, confdir: Path, upstream: FakeUpstream) -> Iterator[tuple[str, Path]]:
    """A real tokenpak proxy in reverse mode, writing to its own database."""
    db = tmp_path / "proxy.db"
    with MitmdumpProcess(f"reverse:{upstream.url}", db=db, confdir=tmp_path / "conf") as p:
        yield f"http://127.0.0.1:{p.port}", db


@pytest.mark.e2e
def test_healthy_setup_passes_including_streaming(clean_env: None, confdir: Path, proxy: tuple[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url, db = proxy
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    rc = main(["doctor", "--db", str(db), "--confdir", str(confdir)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 failures" in out and "✗" not in out
    assert "first frame arrived before the rest was sent; row recorded" in out
    assert "reverse mode, port open" in out and "answers and writes to" in out, out


@pytest.mark.e2e
def test_the_probe_proves_which_proxy_and_which_database(proxy: tuple[str, Path], upstream: FakeUpstream, tmp_path: Path,
                                                         listening: str) -> None:
    url, db = proxy
    ok = check_proxy({"ANTHROPIC_BASE_URL": url}, db)
    assert [c.status for c in ok] == ["ok"] and "tokenpak-mitm" in ok[0].detail and str(db) in ok[0].detail
    other = check_proxy({"ANTHROPIC_BASE_URL": url}, tmp_path / "another.db")  # this proxy writes elsewhere
    assert [c.status for c in other] == ["fail"] and f"writes to {db}, not to" in other[0].detail
    assert f"--db {db}" in other[0].fix
    # The probe is answered by the addon itself: nothing reached the upstream, no row was written.
    assert upstream.received == []
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0


@pytest.mark.e2e
def test_an_open_port_that_is_not_tokenpak_fails(upstream: FakeUpstream, listening: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # The upstream itself (an HTTP server answering 200 JSON) and a bare listening socket, which
    # never answers: the probe's wait for it is cut from 5 s to 0.5 s (the verdict is the same).
    monkeypatch.setattr(doctor, "probe", functools.partial(doctor.probe, timeout=0.5))
    for url in (upstream.url, listening):
        checks = check_proxy({"ANTHROPIC_BASE_URL": url}, tmp_path / "t.db")
        assert [c.status for c in checks] == ["fail"] and "not tokenpak-mitm" in checks[0].detail, url


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once this socket is closed


@pytest.mark.e2e
@pytest.mark.parametrize("strategy", ["lazy", "eager"])
def test_an_unreachable_upstream_is_named_not_the_port(tmp_path: Path, strategy: str) -> None:
    # Issue 26 item 4: the proxy is ours and answering, its upstream is down; doctor said
    # "something listens ... but it is not tokenpak-mitm" and suggested starting the proxy.
    down = _closed_port()
    db = tmp_path / "t.db"
    with MitmdumpProcess(f"reverse:http://127.0.0.1:{down}", db=db, confdir=tmp_path / "conf",
                         options=[f"connection_strategy={strategy}"]) as p:
        checks = check_proxy({"ANTHROPIC_BASE_URL": f"http://127.0.0.1:{p.port}"}, db)
    assert [c.status for c in checks] == ["fail"]
    detail, fix = checks[0].detail, checks[0].fix
    assert "not tokenpak-mitm" not in detail and ("upstream is unreachable" in detail or "is unreachable from this machine" in detail)
    if strategy == "lazy":  # tokenpak run's: the probe is answered, and the upstream it names is tried
        assert f"answers on 127.0.0.1:{p.port}, but its upstream http://127.0.0.1:{down} is unreachable" in detail
        assert f"reach 127.0.0.1:{down}" in fix
    else:  # a bare mitmdump: the connection is dropped before the probe is read
        assert "closed it without a reply" in detail and "tokenpak run" in fix


@pytest.mark.e2e
def test_the_probe_works_through_a_regular_mode_proxy(tmp_path: Path) -> None:
    db = tmp_path / "regular.db"
    with MitmdumpProcess("regular", db=db, confdir=tmp_path / "conf") as p:
        checks = check_proxy({"HTTPS_PROXY": f"http://127.0.0.1:{p.port}"}, db)
    assert [c.status for c in checks] == ["ok"], checks


def test_missing_confdir_fails(clean_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["doctor", "--no-stream-check", "--db", str(tmp_path / "t.db"), "--confdir", str(tmp_path / "nowhere")])
    out = capsys.readouterr().out
    assert rc == 1 and "does not exist" in out and "start the proxy once" in out


def test_broken_ca_variable_fails(clean_env: None, confdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "gone.pem"))
    rc = main(["doctor", "--no-stream-check", "--db", str(tmp_path / "t.db"), "--confdir", str(confdir)])
    out = capsys.readouterr().out
    assert rc == 1 and "SSL_CERT_FILE" in out and "gone.pem" in out


def test_unwritable_database_fails(clean_env: None, confdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc = main(["doctor", "--no-stream-check", "--db", str(blocker / "t.db"), "--confdir", str(confdir)])
    out = capsys.readouterr().out
    assert rc == 1 and "not writable" in out and "tokenpak_db" in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_read_only_database_fails(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    check_database(db)
    db.chmod(0o400)
    assert statuses(check_database(db))["database"] == "fail"


def test_database_check_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = TelemetryStore(db)
    store.start()
    store.submit({"request_key": "k", "started_at": 1.0, "model": "m", "input_tokens": 3})
    store.close()

    def snapshot() -> tuple:
        conn = sqlite3.connect(db)
        try:
            return conn.execute("PRAGMA user_version").fetchone(), conn.execute("SELECT * FROM requests").fetchall()
        finally:
            conn.close()

    before = snapshot()
    checks = check_database(db)
    assert statuses(checks)["database"] == "ok" and "1 rows" in checks[0].detail
    assert snapshot() == before


def test_new_database_is_created_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "t.db"
    assert statuses(check_database(db))["database"] == "ok"
    assert db.stat().st_mode & 0o077 == 0


def test_world_readable_private_key_fails(tmp_path: Path, confdir: Path) -> None:
    import shutil

    copy = tmp_path / "conf"
    shutil.copytree(confdir, copy)
    assert statuses(check_ca(copy, required=True)) == {"CA certificate": "ok", "CA private key": "ok"}
    (copy / "mitmproxy-ca.pem").chmod(0o644)
    bad = check_ca(copy, required=True)
    assert statuses(bad)["CA private key"] == "fail" and "chmod 600" in bad[-1].fix


def test_missing_ca_is_only_a_warning_when_not_needed(tmp_path: Path) -> None:
    assert statuses(check_ca(tmp_path / "none", required=False)) == {"CA": "warn"}
    assert statuses(check_ca(tmp_path / "none", required=True)) == {"CA": "fail"}


def test_regular_mode_needs_a_variable_trusting_the_ca(confdir: Path, tmp_path: Path, listening: str) -> None:
    env = {"HTTPS_PROXY": listening, "https_proxy": listening}
    assert statuses(check_environment(env, confdir))["CA trust"] == "fail"
    bundle = tmp_path / "bundle.pem"
    write_bundle(confdir / "mitmproxy-ca-cert.pem", bundle)
    good = statuses(check_environment({**env, "SSL_CERT_FILE": str(bundle)}, confdir))
    assert good == {"HTTPS_PROXY": "ok", "SSL_CERT_FILE": "ok"}
    system = tmp_path / "other.pem"  # a bundle without our CA
    system.write_text((confdir / "mitmproxy-ca-cert.pem").read_text().replace("MII", "MIJ", 1))
    assert statuses(check_environment({**env, "SSL_CERT_FILE": str(system)}, confdir))["CA trust"] == "fail"


def test_inconsistent_client_variables_fail(confdir: Path, listening: str) -> None:
    assert statuses(check_environment({"ANTHROPIC_BASE_URL": listening + "/v1"}, confdir))["ANTHROPIC_BASE_URL"] == "fail"
    same_port = statuses(check_environment({"ANTHROPIC_BASE_URL": listening, "HTTPS_PROXY": listening,
                                            "NODE_EXTRA_CA_CERTS": str(confdir / "mitmproxy-ca-cert.pem")}, confdir))
    assert same_port["HTTPS_PROXY"] == "fail"
    assert statuses(check_environment({"HTTPS_PROXY": listening, "https_proxy": "http://127.0.0.1:1"}, confdir))["https_proxy"] == "fail"
    assert statuses(check_environment({"OPENAI_BASE_URL": listening}, confdir))["OPENAI_BASE_URL"] == "warn"


def test_nothing_routed_or_proxy_down_is_a_warning(confdir: Path) -> None:
    assert statuses(check_environment({}, confdir)) == {"client routing": "warn"}
    with socket.socket() as s:  # a port that is certainly closed: bound, never listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        assert statuses(check_environment({"ANTHROPIC_BASE_URL": url}, confdir)) == {"ANTHROPIC_BASE_URL": "warn"}


def test_versions() -> None:
    assert check_python((3, 12, 0)).status == "ok"
    assert check_python((3, 11, 9)).status == "fail"
    assert check_mitmproxy("12.2.3").status == "ok"
    assert check_mitmproxy("12.9.0").status == "ok"
    assert check_mitmproxy("12.2.2").status == "fail"
    assert check_mitmproxy("13.0.0").status == "fail"
    assert check_mitmproxy().status == "ok"  # this environment


_BLOCKED_IMPORT = """
import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r} or name.startswith({module!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Missing())
from tokenpak_mitm.cli.main import main
sys.exit(main(["doctor", "--no-stream-check", "--db", {db!r}, "--confdir", {confdir!r}]))
"""


@pytest.mark.parametrize(("module", "requirement"), [("backports.zstd", "backports.zstd>=1.0"), ("brotli", "brotli>=1.1")])
def test_doctor_names_a_missing_module_and_the_command_that_installs_it(tmp_path: Path, module: str, requirement: str) -> None:
    """The zstandard drift: mitmdump said only 'error in script'. doctor must name the module and the fix."""
    import subprocess
    import sys

    code = _BLOCKED_IMPORT.format(module=module, db=str(tmp_path / "t.db"), confdir=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "400"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert f"module '{module}' is missing" in out
    assert f"-m pip install '{requirement}'" in out


def test_doctor_dependency_check_passes_on_this_install() -> None:
    from tokenpak_mitm.cli.doctor import check_dependencies

    checks = check_dependencies()
    assert [c.status for c in checks] == ["ok"], checks
