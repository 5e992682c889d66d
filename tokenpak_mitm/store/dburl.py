"""Where the telemetry goes: a SQLite path or a PostgreSQL URL, and how either may be shown.

``tokenpak_db`` (and ``--db`` of the reports) is a file path, or a ``postgresql://`` /
``postgres://`` URL. A URL may carry a password; it must never reach the console, a log line, an
error message or a file we write, so everything that shows a database goes through
:func:`display` (the URL without its password) and every error text through :func:`scrub`.

A PostgreSQL database still has local files: the spill file (rows kept while the server is
unreachable) and the loss ledger. They live in ``$TOKENPAK_HOME`` under a name derived from the
URL without its password (:func:`local_base`), so every proxy on a machine that writes the same
database shares them, and ``tokenpak doctor --db URL`` finds them.

Pure module: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = ["SCHEMES", "is_postgres", "display", "password_of", "scrub", "local_base", "EXTRA_HINT"]

SCHEMES = ("postgresql://", "postgres://")
EXTRA_HINT = "pip install 'tokenpak-mitm[team]'"
_MASK = "***"
# userinfo of any URL-looking text: scheme://user:password@ (the password part is masked)
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@")
# libpq keyword/value parameters: password=... (also in conninfo strings and error texts)
_KEYWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_QUERY = re.compile(r"(?i)([?&]password=)[^&\s]*")


def is_postgres(db: str) -> bool:
    return db.strip().lower().startswith(SCHEMES)


def password_of(url: str) -> str | None:
    """The password of a PostgreSQL URL (userinfo or ``?password=``), percent-decoded; None when none."""
    try:
        parts = urlsplit(url)
        pw = parts.password
    except ValueError:
        return None
    if pw:
        return unquote(pw)
    m = _QUERY.search(url)
    return unquote(m.group(0).split("=", 1)[1]) if m and m.group(0).split("=", 1)[1] else None


def display(db: str) -> str:
    """``db`` as it may be shown: a URL without its password (``user:***@``), a path unchanged."""
    if not is_postgres(db):
        return db
    return scrub(db, db)


def scrub(text: str, url: str | None = None) -> str:
    """``text`` with every password masked: URL userinfo, ``password=`` parameters, and the
    password of ``url`` wherever it appears verbatim (e.g. echoed in a driver's error)."""
    out = _USERINFO.sub(lambda m: f"{m.group('head')}:{_MASK}@", text)
    out = _KEYWORD.sub(lambda m: m.group(1) + _MASK, out)
    out = _QUERY.sub(lambda m: m.group(1) + _MASK, out)
    pw = password_of(url) if url else None
    if pw:
        for form in {pw, quote(pw, safe=""), quote(pw)}:
            if form:
                out = out.replace(form, _MASK)
    return out


def local_base(db: str, home: Path) -> Path:
    """The local path the spill file and loss ledger of ``db`` are named after.

    A SQLite database is its own base. A PostgreSQL URL maps to ``home/postgresql-<db>-<digest>``,
    the digest taken over the URL without its password (so changing the password keeps the files).
    """
    if not is_postgres(db):
        return Path(db).expanduser()
    try:
        parts = urlsplit(db.strip())
        host, port, user = parts.hostname or "", parts.port or "", parts.username or ""
        name = parts.path.lstrip("/")
        query = _QUERY.sub("", parts.query)
    except ValueError:
        host = port = user = name = query = ""
    ident = urlunsplit(("postgresql", f"{user}@{host}:{port}", "/" + name, query, ""))
    digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", unquote(name))[:40] or "db"
    return home / f"postgresql-{label}-{digest}"
