"""Secret scanner (invariant I4): find secrets in anything we wrote (database, spill file, flow files, logs, traces).

It has its own patterns rather than reusing ``redact``: a scanner that shared the redactor's
regexes would miss exactly the shapes the redactor misses. Two kinds of hit:

* a **canary** — a known fake key the test or replay put into the traffic (exact bytes); any
  occurrence is a leak, whatever its shape;
* a **key-shaped string** — provider key prefixes, bearer tokens, ``key=`` query values.

The redaction placeholder never matches, so redacted files scan clean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Leak", "scan_bytes", "scan_paths", "DEFAULT_CANARIES", "KEY_SHAPES"]

# Recognisable fakes used when recording and replaying; each is also key-shaped on purpose.
DEFAULT_CANARIES: tuple[bytes, ...] = (
    b"sk-ant-api03-CANARY0tokenpak0canary0key0DO0NOT0LEAK",
    b"AIzaSyCANARY0tokenpak0canary0key0DONOTLEAK",
    b"sk-proj-CANARY0tokenpak0canary0key0DO0NOT0LEAK",
    b"sk-ant-oat01-CANARY0tokenpak0oauth0DO0NOT0LEAK",
    b"CANARYcookie0tokenpak0DO0NOT0LEAK",  # not key-shaped: only the canary check can see it
)

KEY_SHAPES: tuple[tuple[str, re.Pattern[bytes]], ...] = (
    ("anthropic key", re.compile(rb"sk-ant-[A-Za-z0-9_\-]{12,}")),
    ("openai key", re.compile(rb"(?<![A-Za-z0-9])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}")),
    ("google api key", re.compile(rb"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{30,}")),
    ("google oauth token", re.compile(rb"(?<![A-Za-z0-9])ya29\.[0-9A-Za-z_\-.]{16,}")),
    ("bearer token", re.compile(rb"(?i)\bbearer\s+(?!\[REDACTED\])[A-Za-z0-9_\-.=:+/]{12,}")),
    ("key= query parameter", re.compile(rb"(?i)[?&;](?:key|api_key|apikey|access_token)=(?!\[REDACTED\]|%5BREDACTED%5D)[^&#\s\"'\\]{8,}")),
)


@dataclass(frozen=True, slots=True)
class Leak:
    where: str  # file name (or artifact label)
    offset: int
    kind: str  # "canary" or a key shape
    excerpt: str  # masked: enough to find it, never the whole secret

    def __str__(self) -> str:
        return f"{self.kind} in {self.where} at byte {self.offset}: {self.excerpt}"


def _mask(value: bytes) -> str:
    text = value.decode("latin-1")
    return text[:8] + "…" if len(text) > 8 else text


def scan_bytes(data: bytes, where: str, canaries: Sequence[bytes] = DEFAULT_CANARIES, *, shapes: bool = True) -> list[Leak]:
    """Every canary occurrence and (if ``shapes``) every key-shaped string in ``data``."""
    leaks: list[Leak] = []
    for canary in canaries:
        if not canary:
            continue
        start = data.find(canary)
        while start >= 0:
            leaks.append(Leak(where, start, "canary", _mask(canary)))
            start = data.find(canary, start + 1)
        # SQLite and JSON may store text escaped or as UTF-16; catch the obvious re-encodings too.
        for variant in (canary.decode("latin-1").encode("utf-16-le"),):
            if variant in data:
                leaks.append(Leak(where, data.find(variant), "canary (utf-16)", _mask(canary)))
    if shapes:
        for kind, pattern in KEY_SHAPES:
            for m in pattern.finditer(data):
                if any(m.start() <= leak.offset < m.end() for leak in leaks):
                    continue  # already reported as a canary
                leaks.append(Leak(where, m.start(), kind, _mask(m.group(0))))
    return leaks


def scan_paths(paths: Iterable[str | Path], canaries: Sequence[bytes] = DEFAULT_CANARIES, *, shapes: bool = True) -> list[Leak]:
    """Scan files (and every file under directories), including SQLite ``-wal``/spill siblings."""
    leaks: list[Leak] = []
    seen: set[Path] = set()
    for p in paths:
        path = Path(p)
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path, *(Path(str(path) + s) for s in ("-wal", "-journal", ".spill.jsonl"))]
        for f in candidates:
            if f in seen or not f.is_file():
                continue
            seen.add(f)
            leaks += scan_bytes(f.read_bytes(), str(f), canaries, shapes=shapes)
    return leaks
