"""The doctor's probe: a request the addon answers itself, proving which proxy and which database.

Any open port looks like "a proxy" to a connect test (the upstream itself would pass). A request
carrying ``x-tokenpak-probe: <nonce>`` is answered by the addon (no request goes upstream, no
telemetry row is written) with the nonce, its version, its process and the database it writes to
(path and file identity), so ``tokenpak doctor`` can tell "tokenpak on this port writes to this
database" from "something else listens here". No client sends this header. Pure module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["PROBE_HEADER", "PROBE_PATH", "ProbeAnswer", "answer_body", "parse_answer", "valid_nonce"]

PROBE_HEADER = "x-tokenpak-probe"
PROBE_PATH = "/.well-known/tokenpak-probe"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    version: str
    pid: int
    db: str | None
    db_identity: tuple[int, int] | None  # (st_dev, st_ino) of the database file
    rows_written: int
    store_error: str | None
    upstream: str | None = None  # the listener's upstream in reverse mode (the doctor checks it is reachable)


def valid_nonce(nonce: str | None) -> bool:
    return nonce is not None and bool(_NONCE.match(nonce))


def answer_body(nonce: str, answer: ProbeAnswer) -> bytes:
    return json.dumps({
        "tokenpak_probe": nonce, "version": answer.version, "pid": answer.pid, "db": answer.db,
        "db_identity": list(answer.db_identity) if answer.db_identity else None,
        "rows_written": answer.rows_written, "store_error": answer.store_error, "upstream": answer.upstream,
    }).encode()


def parse_answer(body: bytes, nonce: str) -> ProbeAnswer | None:
    """The answer, when it is tokenpak's answer to this very nonce; None for anything else."""
    try:
        obj: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("tokenpak_probe") != nonce:
        return None
    ident = obj.get("db_identity")
    identity = (int(ident[0]), int(ident[1])) if isinstance(ident, list) and len(ident) == 2 else None
    try:
        return ProbeAnswer(version=str(obj.get("version")), pid=int(obj.get("pid") or 0), db=obj.get("db"), db_identity=identity,
                           rows_written=int(obj.get("rows_written") or 0), store_error=obj.get("store_error"),
                           upstream=obj.get("upstream") if isinstance(obj.get("upstream"), str) else None)
    except (TypeError, ValueError):
        return None
