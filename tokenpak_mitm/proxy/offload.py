"""CPU-heavy pure work in one worker *process*: planning a big or many-block prompt (stateless
planning whole; the learning planner, Anthropic or OpenAI, split by `split_plan`, its memory
staying in the proxy) and
the session tracker's fingerprinting of bodies over 32 KB.

A worker thread is not enough: planning is Python code that holds the GIL, and mitmproxy's event
loop, which releases the GIL on every socket call, then waits up to the 5 ms switch interval to
get it back each time. Measured with ``python -m bench.stall``: a 1 MB body of 26k small
messages stalled a concurrent stream 94-155 ms with a thread (420 ms inline); in a process the
event loop keeps its GIL. The body is pickled by the executor's own threads, not the event loop.

The pool has one worker, started on the first heavy request (that request waits for the start,
about 0.2 s, once; nobody else does). If the worker cannot be started or dies, the call falls
back to a thread: slower for others, never a lost request. Workers ignore SIGINT, so a Ctrl-C at
the terminal stops mitmdump, which shuts the pool down, without tracebacks from the worker.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

__all__ = ["Offloader"]

logger = logging.getLogger("tokenpak")

T = TypeVar("T")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Offloader:
    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._failed = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker process (``fn`` and its arguments must pickle)."""
        if not self._failed:
            try:
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
                return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
            except (BrokenProcessPool, OSError, RuntimeError) as e:
                logger.warning("tokenpak: planning worker process unavailable (%s); planning in a thread instead", e)
                self._failed = True
                self.close()
        return await asyncio.to_thread(fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
