"""Files the CLI writes are owner-only, like the database: one helper so none is forgotten.

A report holds request counts, models, hosts and costs: not secrets, but nobody else's business
on a shared machine. The file is written to a temporary name (0600) and renamed over the target,
so a reader never sees half a file and an existing file's looser mode is not inherited.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 (directories created 0700), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
