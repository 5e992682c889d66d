"""The cache planner's memory across restarts: ``tokenpak_cache_index`` (prefix digests and timings, never content).

Loaded when the option is set, saved at shutdown (temp file, then rename). A missing file is a
fresh start; an unreadable or damaged one is said once and ignored (the proxy starts without history).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from mitmproxy import ctx

from tokenpak_mitm.core.plan.learning_planner import Memory

__all__ = ["IndexFile"]

logger = logging.getLogger("tokenpak")


class IndexFile:
    """Keeps the learning planner's prefix index in ``tokenpak_cache_index``."""

    name = "tokenpak_index_file"

    def __init__(self, memory: Memory) -> None:
        self.memory = memory  # the planning addon's (shared at composition)
        self.path = ""

    def configure(self, updated: set[str]) -> None:
        if "tokenpak_cache_index" in updated:
            self.path = ctx.options.tokenpak_cache_index
            if self.path:
                self._load(self.path)

    def done(self) -> None:
        if self.path:
            self._save(self.path)

    def _load(self, path: str) -> None:
        try:
            data = Path(path).expanduser().read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            logger.warning("tokenpak: cache index %s not read (%s); starting without history", path, e)
            return
        try:
            loaded = self.memory.index.load(data, time.time())
        except ValueError as e:
            logger.warning("tokenpak: cache index %s ignored: %s; starting without history", path, e)
            return
        logger.info("tokenpak: cache planner history: %d prefixes from %s", loaded, path)

    def _save(self, path: str) -> None:
        target = Path(path).expanduser()
        try:
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(self.memory.index.dump())
            os.replace(tmp, target)
        except OSError as e:
            logger.warning("tokenpak: cache index not saved to %s: %s", path, e)
