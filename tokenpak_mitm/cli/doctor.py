"""``tokenpak doctor``: find what stops telemetry from working, and say how to fix it.

Every check is a small function returning ``Check`` values (ok / warn / fail, a detail and a fix),
so each is testable on its own and the command only prints them. Only failures make the exit code
non-zero: a warning is something that may be intended (no client routed in this shell yet, the
proxy not started yet). The checks never modify the user's data: the database is opened exactly
as the proxy opens it (owner-only file, WAL, pending migrations) and a write lock is taken and
released without writing; the streaming check runs in a throwaway confdir and database.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sqlite3
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

from tokenpak_mitm.cli.setup import CA_CERT_NAME, DEFAULT_CONFDIR
from tokenpak_mitm.proxy.probe import ProbeAnswer
from tokenpak_mitm.store.dburl import display

__all__ = [
    "Check", "check_python", "check_mitmproxy", "check_ca", "check_database", "check_environment",
    "check_stream", "check_proxy", "probe", "NoAnswer", "run_checks", "add_arguments", "run",
]

Status = Literal["ok", "warn", "fail"]
CA_KEY_NAME = "mitmproxy-ca.pem"  # certificate + PRIVATE KEY: checked for permissions, never read
MITMPROXY_RANGE = ((12, 2, 3), (13,))
CA_VARS = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.+?)-----END CERTIFICATE-----", re.S)
SETUP_HINT = 'eval "$(tokenpak setup shell)"'


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> Check:
    shown = ".".join(map(str, version))
    if version >= (3, 12):
        return Check("Python", "ok", f"{shown} ({sys.executable})")
    return Check("Python", "fail", f"{shown}: mitmproxy 12 needs Python >= 3.12", "install Python 3.12+ and recreate the venv (make venv PY=python3.12)")


def check_mitmproxy(installed: str | None = None) -> Check:
    try:
        installed = installed or metadata.version("mitmproxy")
    except metadata.PackageNotFoundError:
        return Check("mitmproxy", "fail", "not installed", "pip install 'mitmproxy>=12.2.3,<13' (or make venv)")
    low, high = MITMPROXY_RANGE
    if low <= _version_tuple(installed) < high:
        return Check("mitmproxy", "ok", installed)
    return Check("mitmproxy", "fail", f"{installed}: tokenpak-mitm supports >=12.2.3,<13", "pip install 'mitmproxy>=12.2.3,<13'")


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PY_MARKER = re.compile(r"python_version\s*(<|<=|>=|>)\s*['\"](\d+)\.(\d+)['\"]")


def _applies(marker: str, version: tuple[int, ...], extras: frozenset[str]) -> bool:
    """The few marker forms our own requirements use: ``extra == 'x'`` and ``python_version < 'X.Y'``."""
    extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
    if extra and extra.group(1) not in extras:
        return False
    for op, major, minor in _PY_MARKER.findall(marker):
        bound, have = (int(major), int(minor)), tuple(version[:2])
        if not {"<": have < bound, "<=": have <= bound, ">=": have >= bound, ">": have > bound}[op]:
            return False
    return True


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _requirement_for(module: str, wanted: dict[str, str]) -> str:
    """The declared requirement that provides ``module`` (``backports.zstd`` -> ``backports.zstd>=1.0``)."""
    top = module.split(".")[0]
    for key in (_normalise(module), _normalise(top)):
        if key in wanted:
            return wanted[key]
    return next((spec for key, spec in wanted.items() if key.startswith(_normalise(top) + "-")), top)


def _install_fix(requirement: str) -> str:
    return f"{sys.executable} -m pip install '{requirement}'   (or, in the checkout: rm -rf .venv && make run)"


def check_dependencies(extras: frozenset[str] = frozenset({"otel"})) -> list[Check]:
    """Every declared runtime requirement is installed, and the addon's modules import.

    The second half catches what the first cannot: a module the package imports but never declared
    (the drift that once locked new users out), named with the command that installs it.
    """
    try:
        requires = metadata.requires("tokenpak-mitm") or []
    except metadata.PackageNotFoundError:
        return [Check("dependencies", "fail", f"tokenpak-mitm is not installed in {sys.executable}",
                      "make run (installs the locked versions into .venv) or pip install tokenpak-mitm")]
    out: list[Check] = []
    wanted: dict[str, str] = {}  # normalised distribution name -> requirement as declared
    for req in requires:
        spec, _, marker = req.partition(";")
        match = _REQ_NAME.match(spec)
        if match and _applies(marker, tuple(sys.version_info[:2]), extras):
            wanted[_normalise(match.group(1))] = spec.strip()
    missing = [spec for name, spec in wanted.items() if not _installed(name)]
    if missing:
        out.append(Check("dependencies", "fail", "not installed: " + ", ".join(missing), _install_fix(" ".join(missing))))
    try:
        import tokenpak_mitm.proxy.addon  # noqa: F401  (what mitmdump -s addons/tokenpak.py loads)
    except ImportError as e:  # ModuleNotFoundError, or `from backports import zstd` with zstd absent
        named = re.search(r"cannot import name '([^']+)' from '([^']+)'", str(e))
        name = f"{named.group(2)}.{named.group(1)}" if named else (e.name or str(e))
        out.append(Check("addon imports", "fail", f"module '{name}' is missing: mitmdump would stop with 'error in script'",
                         _install_fix(_requirement_for(name, wanted))))
    except Exception as e:  # noqa: BLE001 - any import-time failure is a broken install: say which
        out.append(Check("addon imports", "fail", f"{type(e).__name__}: {e}", "rm -rf .venv && make run (reinstalls from the lock)"))
    if not out:
        out.append(Check("dependencies", "ok", f"{len(wanted)} runtime requirements installed; the addon imports"))
    return out


def _cert_blocks(path: Path) -> set[bytes]:
    return {re.sub(rb"\s", b"", m) for m in _PEM_CERT.findall(path.read_bytes())}


def check_ca(confdir: Path, required: bool) -> list[Check]:
    """The CA mitmproxy made in confdir: certificate readable, private key not world-readable."""
    bad: Status = "fail" if required else "warn"
    cert, key = confdir / CA_CERT_NAME, confdir / CA_KEY_NAME
    why = "" if required else " (needed for regular mode only)"
    if not confdir.is_dir():
        return [Check("CA", bad, f"confdir {confdir} does not exist{why}",
                      f"start the proxy once (make run, or mitmdump --set confdir={confdir}) to create the CA, or pass the right --confdir")]
    out = []
    try:
        blocks = _cert_blocks(cert)
        if not blocks:
            raise ValueError("no PEM certificate inside")
        out.append(Check("CA certificate", "ok", str(cert)))
    except (OSError, ValueError) as e:
        out.append(Check("CA certificate", bad, f"{cert}: {e}{why}", f"start the proxy once with --set confdir={confdir} to create it"))
    try:
        mode = key.stat().st_mode
    except OSError as e:
        out.append(Check("CA private key", bad, f"{key}: {e}{why}", f"start the proxy once with --set confdir={confdir} to create it"))
        return out
    if mode & stat.S_IROTH:
        out.append(Check("CA private key", "fail", f"{key} is world-readable ({stat.filemode(mode)}): anyone here could impersonate any site to you",
                         f"chmod 600 {key}"))
    elif mode & stat.S_IRGRP:
        out.append(Check("CA private key", "warn", f"{key} is group-readable ({stat.filemode(mode)})", f"chmod 600 {key}"))
    else:
        out.append(Check("CA private key", "ok", f"{key} ({stat.filemode(mode)}, never shown to clients)"))
    return out


def check_postgres(url: str) -> list[Check]:
    """Connect as the reports do, read the schema version and rows, ask whether this role may insert."""
    from tokenpak_mitm.store.postgres import MissingExtra, connect_readonly, errors, one_line, schema_version
    from tokenpak_mitm.store.sqlite import store_local_base

    shown = display(url)
    try:
        conn = connect_readonly(url)
    except MissingExtra as e:
        return [Check("database", "fail", str(e), "install the team extra, or use a SQLite path")]
    except errors() as e:
        return [Check("database", "fail", f"{shown}: {one_line(e, url)}",
                      "check the URL's host, port, database and user (the password: PGPASSWORD or ~/.pgpass), and that PostgreSQL runs"),
                *check_losses(store_local_base(url))]
    try:
        version = schema_version(conn)
        if version == 0:
            out = [Check("database", "warn", f"{shown} reachable, no tokenpak schema yet", "start the proxy with this tokenpak_db: it creates the tables")]
        else:
            rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
            may = conn.execute("SELECT has_table_privilege('requests', 'INSERT')").fetchone()[0]
            out = [Check("database", "ok", f"{shown} writable, schema v{version}, {rows} rows") if may else
                   Check("database", "fail", f"{shown}: this role may not insert into requests", "GRANT INSERT ON requests TO the proxy's role")]
    except errors() as e:
        out = [Check("database", "fail", f"{shown}: {one_line(e, url)}", "see PostgreSQL's log")]
    finally:
        conn.close()
    return [*out, *check_losses(store_local_base(url))]


def check_database(path: Path | str) -> list[Check]:
    """Open the database the way the proxy does, take the write lock, release it, write nothing."""
    from tokenpak_mitm.store.dburl import is_postgres
    from tokenpak_mitm.store.sqlite import _open

    if isinstance(path, str):
        if is_postgres(path):
            return check_postgres(path)
        path = Path(path)

    try:
        conn = _open(path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            rows = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except (sqlite3.Error, OSError) as e:
        return [Check("database", "fail", f"{path} is not writable: {type(e).__name__}: {e}",
                      f"make {path.parent} writable by you, or point the proxy elsewhere: --set tokenpak_db=PATH (and tokenpak report --db PATH)"),
                *check_losses(path)]
    out = [Check("database", "ok", f"{path} writable, schema v{version}, {rows} rows")]
    out.extend(check_losses(path))
    return out


def check_losses(path: Path) -> list[Check]:
    """Spilled rows waiting for the next start, and rows lost (counted by the store's loss ledger)."""
    from tokenpak_mitm.store.sqlite import loss_ledger_paths, losses_by_cause, spill_paths

    out = []
    for spill in spill_paths(path):
        if spill.exists():
            out.append(Check("spilled rows", "warn", f"{spill} holds rows written while the database was unavailable",
                             "start the proxy: it imports them on start"))
    by_cause = losses_by_cause(path)
    lost = sum(by_cause.values())
    if lost:
        causes = "; ".join(f"{n} {reason}" for reason, n in sorted(by_cause.items(), key=lambda c: -c[1])[:3])
        more = f"; {len(by_cause) - 3} more causes" if len(by_cause) > 3 else ""
        out.append(Check("lost rows", "warn", f"{lost} telemetry rows could be neither written nor spilled, by cause: {causes}{more}",
                         f"free disk space / fix permissions; delete {loss_ledger_paths(path)[0]} to reset the count"))
    else:
        out.append(Check("lost rows", "ok", "none recorded"))
    return out


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2.0):
            return True
    except OSError:
        return False


def _is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in LOOPBACK


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def _no_proxy_covers(env: Mapping[str, str], host: str) -> bool:
    entries = {e.strip().lstrip(".") for e in (env.get("NO_PROXY", "") + "," + env.get("no_proxy", "")).split(",")}
    return "*" in entries or host in entries


class NoAnswer(NamedTuple):
    """The probe got no tokenpak answer; ``dropped``: the connection was closed without a single byte
    (what a mitmdump in reverse mode does, with mitmproxy's eager connection strategy, when it
    cannot reach its upstream)."""

    dropped: bool


def probe(url: str, *, via_proxy: bool, timeout: float = 5.0) -> ProbeAnswer | NoAnswer:
    """Ask the proxy at ``url`` who it is (reverse listener, or regular proxy with ``via_proxy``)."""
    import http.client
    import secrets

    from tokenpak_mitm.proxy.probe import PROBE_HEADER, PROBE_PATH, parse_answer

    host, port = _host_port(url)
    nonce = secrets.token_hex(12)
    target = f"http://tokenpak-probe.invalid{PROBE_PATH}" if via_proxy else PROBE_PATH  # absolute form through a proxy
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", target, headers={PROBE_HEADER: nonce, "user-agent": "tokenpak-doctor"})
        resp = conn.getresponse()
        body = resp.read(64 * 1024)
    except http.client.RemoteDisconnected:
        return NoAnswer(dropped=True)
    except (OSError, http.client.HTTPException):
        return NoAnswer(dropped=False)
    finally:
        conn.close()
    answer = parse_answer(body, nonce) if resp.status == 200 else None
    return answer if answer is not None else NoAnswer(dropped=False)


def _unreachable(upstream: str, timeout: float = 5.0) -> str | None:
    """Why this machine cannot open a TCP connection to ``upstream`` (a URL), or None when it can."""
    host, port = _host_port(upstream)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return str(e) or type(e).__name__


def _same_file(a: Path, identity: tuple[int, int] | None, b_path: str | None) -> bool:
    """Same database file: by (device, inode) when both exist, else by resolved path."""
    try:
        st = os.stat(a)
    except OSError:
        st = None
    if st is not None and identity is not None:
        return (st.st_dev, st.st_ino) == identity
    return b_path is not None and Path(b_path).expanduser().resolve() == a.expanduser().resolve()


def check_proxy(env: Mapping[str, str], db: Path | str) -> list[Check]:
    """The proxy each local client variable points at answers the probe as tokenpak and writes to ``db``."""
    targets = [(k, env[k], False) for k in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL") if env.get(k)]
    proxy = env.get("HTTPS_PROXY") or env.get("https_proxy")
    if proxy:
        targets.append(("HTTPS_PROXY", proxy, True))
    shown = display(str(db))
    out: list[Check] = []
    seen: set[tuple[str, int]] = set()
    for name, url, via in targets:
        if urlsplit(url).scheme != "http" or not _is_loopback(url) or _host_port(url) in seen:
            continue
        seen.add(_host_port(url))
        host, port = _host_port(url)
        if not _listening(host, port):
            continue  # check_environment already says nothing listens there
        answer = probe(url, via_proxy=via)
        label = f"proxy at {host}:{port}"
        down = _unreachable(answer.upstream) if isinstance(answer, ProbeAnswer) and answer.upstream else None
        if isinstance(answer, NoAnswer) and answer.dropped:
            out.append(Check(label, "fail", f"something on {host}:{port} ({name}) accepted the connection and closed it without a reply: a "
                             "mitmdump in reverse mode does that when it cannot reach its upstream (mitmproxy's eager connection strategy), "
                             "so if this is tokenpak-mitm, the proxy is up and its upstream is unreachable",
                             "let this machine reach the upstream (firewall, VPN, DNS); start the proxy with tokenpak run (or make run), "
                             "whose clients then get a 502 naming the reason, and a row"))
        elif isinstance(answer, NoAnswer):
            out.append(Check(label, "fail", f"something listens on {host}:{port} ({name}) but it is not tokenpak-mitm: it did not answer the "
                             "probe, so requests sent there are not recorded",
                             "start the proxy there (make run) or point the variable at it (tokenpak setup)"))
        elif down is not None and answer.upstream:
            uhost, uport = _host_port(answer.upstream)
            out.append(Check(label, "fail", f"tokenpak-mitm {answer.version} (pid {answer.pid}) answers on {host}:{port}, but its upstream "
                             f"{answer.upstream} is unreachable from this machine ({down}): requests sent there get a 502 and "
                             "a row with upstream_unreachable",
                             f"let this machine reach {uhost}:{uport} (firewall, VPN, DNS), or start the proxy in front of an upstream "
                             "it can reach (tokenpak run --mode reverse:URL)"))
        elif not (answer.db == display(db) if isinstance(db, str) else _same_file(db, answer.db_identity, answer.db)):
            out.append(Check(label, "fail", f"tokenpak-mitm {answer.version} (pid {answer.pid}) writes to {answer.db}, not to {shown}",
                             f"read its database: tokenpak report --db {answer.db} (or restart the proxy with --set tokenpak_db={shown})"))
        elif answer.store_error:
            out.append(Check(label, "warn", f"tokenpak-mitm {answer.version} (pid {answer.pid}) writes to {shown} but reported: {answer.store_error}",
                             "see the proxy's warnings; rows are kept and spilled until the database is writable"))
        else:
            out.append(Check(label, "ok", f"tokenpak-mitm {answer.version} (pid {answer.pid}) answers and writes to {shown} "
                             f"({answer.rows_written} rows since it started)"))
    return out


def check_environment(env: Mapping[str, str], confdir: Path) -> list[Check]:
    """Client variables: present, consistent with each other, and (regular mode) trusting the CA."""
    out: list[Check] = []
    base_urls = {k: env[k] for k in ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL", "GOOGLE_GEMINI_BASE_URL") if env.get(k)}
    proxies = {k: env[k] for k in ("HTTPS_PROXY", "https_proxy") if env.get(k)}
    for name, url in base_urls.items():
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            out.append(Check(name, "fail", f"{url!r} is not an http(s) URL", f"eval \"$(tokenpak setup shell)\" sets {name} correctly"))
            continue
        path = parts.path.rstrip("/")
        if name == "ANTHROPIC_BASE_URL" and path.endswith("/v1"):
            out.append(Check(name, "fail", f"{url} ends in /v1: clients append /v1/messages, giving /v1/v1/messages",
                             f"export {name}={url.rstrip('/')[:-3]}"))
            continue
        if name == "OPENAI_BASE_URL" and _is_loopback(url) and not path.endswith("/v1"):
            out.append(Check(name, "warn", f"{url} has no /v1: the OpenAI SDKs expect it in the base URL", f"export {name}={url.rstrip('/')}/v1"))
            continue
        if not _is_loopback(url):
            out.append(Check(name, "warn", f"{url} is not a local proxy: these requests bypass tokenpak", SETUP_HINT))
            continue
        host, port = _host_port(url)
        if not _listening(host, port):
            out.append(Check(name, "warn", f"{url}: nothing listens on {host}:{port}", "start the proxy: make run (or the mitmdump line from tokenpak setup)"))
        elif (env.get("HTTP_PROXY") or env.get("http_proxy")) and not _no_proxy_covers(env, host):
            out.append(Check(name, "warn", f"{url} is plain HTTP and HTTP_PROXY is set: some clients would send it to that proxy",
                             "export NO_PROXY=127.0.0.1,localhost"))
        else:
            out.append(Check(name, "ok", f"{url} (reverse mode, port open)"))
    if len(set(proxies.values())) > 1:
        out.append(Check("https_proxy", "fail", f"HTTPS_PROXY={proxies['HTTPS_PROXY']} but https_proxy={proxies['https_proxy']}: clients disagree",
                         "set both to the same proxy URL (tokenpak setup shell --mode regular)"))
    proxy = next(iter(proxies.values()), None)
    if proxy:
        host, port = _host_port(proxy)
        same = [k for k, u in base_urls.items() if _is_loopback(u) and _host_port(u) == (host, port)]
        if same:
            out.append(Check("HTTPS_PROXY", "fail", f"{proxy} is used both as HTTPS_PROXY and as {', '.join(same)}: one port is either a reverse listener or a regular proxy",
                             "pick one mode: unset HTTPS_PROXY https_proxy (reverse) or unset the base URLs (regular)"))
        elif not _is_loopback(proxy):
            out.append(Check("HTTPS_PROXY", "warn", f"{proxy} is not a local proxy: HTTPS goes through it, not through tokenpak", "tokenpak setup shell --mode regular"))
        elif not _listening(host, port):
            out.append(Check("HTTPS_PROXY", "warn", f"{proxy}: nothing listens on {host}:{port}", "start the proxy in regular mode (tokenpak setup shell --mode regular shows the command)"))
        else:
            out.append(Check("HTTPS_PROXY", "ok", f"{proxy} (regular mode, port open)"))
    out += _check_ca_vars(env, confdir, regular=bool(proxy) and _is_loopback(proxy or ""))
    if not base_urls and not proxies:
        out.append(Check("client routing", "warn", "no ANTHROPIC_BASE_URL / OPENAI_BASE_URL / GOOGLE_GEMINI_BASE_URL / HTTPS_PROXY in this shell: clients here bypass the proxy",
                         SETUP_HINT))
    return out


def _check_ca_vars(env: Mapping[str, str], confdir: Path, regular: bool) -> list[Check]:
    out: list[Check] = []
    try:
        ours = _cert_blocks(confdir / CA_CERT_NAME)
    except OSError:
        ours = set()
    trusting = []
    for name in CA_VARS:
        value = env.get(name)
        if not value:
            continue
        path = Path(value).expanduser()
        try:
            blocks = _cert_blocks(path)
        except OSError as e:
            out.append(Check(name, "fail", f"{value}: {e.strerror or e}: TLS clients reading {name} will fail",
                             f"unset {name}, or point it at {confdir / CA_CERT_NAME} / a bundle from tokenpak setup --mode regular --write-bundle PATH"))
            continue
        if not blocks:
            out.append(Check(name, "fail", f"{value} holds no PEM certificate", f"unset {name} or point it at a PEM bundle"))
            continue
        if ours & blocks:
            trusting.append(name)
            out.append(Check(name, "ok", f"{value} includes the mitmproxy CA"))
        elif regular:
            out.append(Check(name, "warn", f"{value} does not include the mitmproxy CA of {confdir}",
                             "tokenpak setup shell --mode regular --write-bundle ~/.tokenpak/ca-bundle.pem"))
    if regular and not trusting:
        out.append(Check("CA trust", "fail", f"HTTPS_PROXY is set but no CA variable ({', '.join(CA_VARS)}) includes the mitmproxy CA of {confdir}: TLS to LLM hosts will fail",
                         'eval "$(tokenpak setup shell --mode regular --write-bundle ~/.tokenpak/ca-bundle.pem)"'))
    return out


def check_stream() -> Check:
    from tokenpak_mitm.cli.doctor_stream import check_streaming

    result = check_streaming()
    if result.ok:
        return Check("streaming", "ok", "temporary mitmdump + addon: " + result.detail)
    fix = "fix the dependency checks above first; if the addon still does not load, run mitmdump -s addons/tokenpak.py and read its errors"
    return Check("streaming", "fail", result.detail, fix)


def run_checks(db: Path | str, confdir: Path, confdir_given: bool, env: Mapping[str, str], stream: bool = True) -> list[Check]:
    regular = any(env.get(k) for k in ("HTTPS_PROXY", "https_proxy"))
    checks = [check_python(), check_mitmproxy(), *check_dependencies()]
    checks += check_ca(confdir, required=confdir_given or regular)
    checks += check_database(db)
    checks += check_environment(env, confdir)
    checks += check_proxy(env, db)
    if stream:
        checks.append(check_stream())
    return checks


_ICONS = {"ok": "[green]✓[/]", "warn": "[yellow]![/]", "fail": "[red]✗[/]"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", help="telemetry database (default: $TOKENPAK_HOME/tokenpak.db or ~/.tokenpak/tokenpak.db)")
    parser.add_argument("--confdir", help=f"mitmproxy confdir holding the CA (default {DEFAULT_CONFDIR})")
    parser.add_argument("--no-stream-check", action="store_true", help="skip the streamed request through a temporary mitmdump")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from tokenpak_mitm.store.dburl import is_postgres
    from tokenpak_mitm.store.sqlite import default_db_path

    db: Path | str = args.db if args.db and is_postgres(args.db) else (Path(args.db).expanduser() if args.db else default_db_path())
    confdir = Path(args.confdir or DEFAULT_CONFDIR).expanduser()
    console = Console(highlight=False)
    if not args.no_stream_check:
        console.print("tokenpak doctor: checking (the streaming check starts a temporary mitmdump)…")
    checks = run_checks(db, confdir, args.confdir is not None, os.environ, stream=not args.no_stream_check)
    table = Table(title="tokenpak doctor", title_justify="left", show_lines=False)
    for col in ("", "check", "result", "fix"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(_ICONS[c.status], escape(c.name), escape(c.detail), escape(c.fix) if c.status != "ok" else "")
    console.print(table)
    failed = [c for c in checks if c.status == "fail"]
    warned = [c for c in checks if c.status == "warn"]
    from tokenpak_mitm.cli.tables import plural

    console.print(f"{len(checks) - len(failed) - len(warned)} ok, {plural(len(warned), 'warning')}, {plural(len(failed), 'failure')}")
    return 1 if failed else 0
