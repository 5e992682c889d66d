"""The TokenPak addons' options: declared once (``declare``), parsed by one pure function
(``parse``) into an immutable ``Settings`` in each addon's ``configure``, so mistakes fail loudly.

mitmproxy parses typed (``bool``/``int``) addon options itself, and a value it cannot parse makes
mitmdump skip the whole script *silently* and carry on as a plain proxy (mitmproxy 12.2.3). So
our non-string options are declared as strings and parsed here; a bad value becomes an
``OptionsError`` naming the option, and mitmdump exits 1.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from mitmproxy.addonmanager import Loader

from tokenpak_mitm.core.plan.cache_planner import CacheOptions
from tokenpak_mitm.store.sqlite import default_db_path

__all__ = ["CACHE_MODES", "CACHE_TTLS", "Settings", "declare", "parse", "parse_bool", "parse_size"]

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_bool(name: str, value: str) -> bool:
    low = str(value).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def parse_size(name: str, value: str, minimum: int = 0) -> int:
    """Bytes from ``8388608``, ``512k``, ``8m``, ``8MiB``, ``1g``."""
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{name} must be a size such as 8388608, 512k or 8m, not {value!r}")
    size = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if size < minimum:
        raise ValueError(f"{name} must be at least {minimum} bytes, not {value!r}")
    return size


CACHE_MODES = ("auto", "off", "top-level")
CACHE_TTLS = ("5m", "1h", "auto")


@dataclass(frozen=True, slots=True)
class Settings:
    """The TokenPak addons' option values, parsed (see `parse`)."""

    db: str  # the telemetry database: a SQLite file or a PostgreSQL URL (which may hold a password: never shown)
    hosts: frozenset[str]  # extra upstream hosts treated as LLM APIs, lower-cased
    cache: CacheOptions  # marker insertion mode and TTL
    history: bool  # the cache planner learns from the traffic
    index: str  # file of the planner's prefix index ("": memory only)
    console: bool  # one line per request (before mitmproxy's own verbosity is applied)
    secret_headers: frozenset[str]  # extra secret request header names, lower-cased
    quiet: bool
    diagnostics: bool  # ask Anthropic for its own cache-miss verdict
    otlp: str  # OTLP/HTTP collector URL ("": none)
    metrics: str  # host:port the writer serves Prometheus metrics on ("": none)


def declare(loader: Loader) -> None:
    """The options (no ``choices=`` on purpose: a bad --set value would make mitmdump skip the script silently)."""
    loader.add_option("tokenpak_db", str, "", "Telemetry database: a SQLite file (default: ~/.tokenpak/tokenpak.db) "
                                              "or a PostgreSQL URL, postgresql://user@host:5432/dbname (the team extra).")
    loader.add_option("tokenpak_hosts", Sequence[str], [], "Extra upstream hosts to treat as LLM APIs (dialect chosen by path).")
    loader.add_option("tokenpak_cache", str, "auto", "Prompt-cache marker insertion: auto, off, or top-level (automatic-caching field).")
    loader.add_option("tokenpak_cache_ttl", str, "auto", "TTL of inserted cache markers: auto (5m, or 1h where the observed gaps, or the odds of a pause, make it pay), 5m or 1h.")
    loader.add_option("tokenpak_cache_history", str, "true", "Let the cache planner learn from the traffic it sees (true), or decide each request alone by fixed rules (false).")
    loader.add_option("tokenpak_cache_index", str, "", "File where the cache planner keeps prefix digests and timings across restarts (never content); empty: memory only.")
    loader.add_option("tokenpak_console", str, "true", "Log one concise line per LLM request: true or false.")
    loader.add_option("tokenpak_secret_headers", Sequence[str], [], "Extra request header names whose values are secrets (besides any name containing auth, token, key, secret, session, cookie, password, signature or credential).")
    loader.add_option("tokenpak_quiet", str, "false",
                      "Hide mitmproxy's own info lines (connects, disconnects, 'Streaming response from') on the terminal; "
                      "warnings, errors and the addon's lines stay: true or false. make run turns it on.")
    loader.add_option("tokenpak_cache_diagnostics", str, "off",
                      "Ask the provider for its own cache-miss verdict: on adds diagnostics.previous_message_id (the conversation's "
                      "previous response) and the cache-diagnosis beta header to Anthropic Messages requests that lack them, and "
                      "prompt_cache_options.comparison_response_id to GPT-5.6+ Responses requests; off (default). "
                      "Anthropic then keeps a fingerprint of each request (docs/security.md).")
    loader.add_option("tokenpak_otlp", str, "", "OTLP/HTTP collector URL (e.g. http://127.0.0.1:4318) for spans and gen_ai metrics; needs the otel extra.")
    loader.add_option("tokenpak_metrics", str, "", "Serve Prometheus metrics of the rows written on host:port (e.g. 127.0.0.1:9464, path /metrics); needs the team extra.")


def parse(options: Any, updated: Collection[str] | None = None) -> Settings:
    """The declared options' values as ``Settings`` (pure); ``ValueError`` with one line naming a
    bad one among ``updated`` (None: all). A value not in ``updated`` was checked when it was set
    (mitmproxy rolls a rejected one back; a test context may not: it then reads as its default)."""
    def checked(name: str) -> bool:
        return updated is None or name in updated

    def flag(name: str, default: bool) -> bool:
        try:
            return parse_bool(name, getattr(options, name))
        except ValueError:
            if checked(name):
                raise
            return default

    cache, ttl = options.tokenpak_cache, options.tokenpak_cache_ttl
    if cache not in CACHE_MODES:
        if checked("tokenpak_cache"):
            raise ValueError(f"tokenpak_cache must be one of {', '.join(CACHE_MODES)}, not {cache!r}")
        cache = "auto"
    if ttl not in CACHE_TTLS:
        if checked("tokenpak_cache_ttl"):
            raise ValueError(f"tokenpak_cache_ttl must be 5m, 1h or auto, not {ttl!r}")
        ttl = "auto"
    otlp = options.tokenpak_otlp
    if otlp and not otlp.startswith(("http://", "https://")):
        if checked("tokenpak_otlp"):
            raise ValueError(f"tokenpak_otlp must be an http(s) URL, not {otlp!r}")
        otlp = ""
    return Settings(
        db=options.tokenpak_db or str(default_db_path()),
        hosts=frozenset(h.lower() for h in options.tokenpak_hosts),
        cache=CacheOptions(mode=cache, ttl=ttl),
        history=flag("tokenpak_cache_history", True),
        index=options.tokenpak_cache_index,
        console=flag("tokenpak_console", True),
        secret_headers=frozenset(n.strip().lower() for n in options.tokenpak_secret_headers if n.strip()),
        quiet=flag("tokenpak_quiet", False),
        diagnostics=flag("tokenpak_cache_diagnostics", False),
        otlp=otlp,
        metrics=options.tokenpak_metrics.strip(),
    )
