"""The TokenPak addon mitmdump loads: small addons, one concern each, in the order their hooks run.

* ``Config`` (config.py): declares the ``tokenpak_*`` options and checks every value;
* ``DoctorProbe`` (doctor_probe.py): answers ``tokenpak doctor``'s probe;
* ``Planning`` (planning.py): classifies LLM requests, plans and splices the cache markers;
* ``Observing`` (observing.py): the stream observer on streamed responses;
* ``Handoff`` (handoff.py): hands each request's accounting to the store (one ``accounting.Sink``);
* ``IndexFile`` (index_file.py): the planner's memory across restarts;
* ``Offloader`` (offload.py): the worker process for heavy pure work, stopped last.

They cooperate through mitmproxy's hooks and one typed per-flow state (``flowstate.FlowState`` in
``flow.metadata``), never through each other's attributes; what several share for the proxy's
life (the planner's memory, the worker, the chosen sink) is handed to them here. Two promises
shape every hook: traffic is never harmed (each hook body is guarded; the stream callable returns
every chunk unchanged) and exactly one row per LLM request (``FlowState.emitted``; the store's
unique key guards the rest).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Collection
from typing import Any

from tokenpak_mitm.core.plan.learning_planner import Memory
from tokenpak_mitm.proxy.config import Config, check
from tokenpak_mitm.proxy.doctor_probe import DoctorProbe
from tokenpak_mitm.proxy.flowstate import closed_by
from tokenpak_mitm.proxy.handoff import Handoff, SinkHandle
from tokenpak_mitm.proxy.index_file import IndexFile
from tokenpak_mitm.proxy.observing import Observing
from tokenpak_mitm.proxy.offload import Offloader
from tokenpak_mitm.proxy.planning import Planning

__all__ = ["TokenPak", "closed_by", "watch_startup"]


class TokenPak:
    """Inserts prompt-cache markers, observes LLM responses, logs one telemetry row each (through its parts)."""

    def __init__(self) -> None:
        # What the cache planners remember (prefix digests and timings, never content), one per
        # proxy, Anthropic and OpenAI requests alike (digests are seeded by API, so they never collide).
        memory = Memory()
        self.worker = Offloader()
        handle = SinkHandle()
        self.config = Config()
        self.planning = Planning(memory, self.worker)
        self.observing = Observing()
        self.handoff = Handoff(self.worker, handle)
        self.index = IndexFile(memory)
        self.addons: list[Any] = [self.config, DoctorProbe(handle), self.planning, self.observing, self.handoff, self.index, self.worker]

    @property
    def started(self) -> threading.Event:
        return self.config.started

    @staticmethod
    def check_options(opts: Any, updated: Collection[str] | None = None) -> None:
        """Raise ``OptionsError`` for a bad value of the options (those in ``updated``; None: all):
        ``config.check``, also run by ``tokenpak run`` before mitmdump starts."""
        check(opts, updated)


def watch_startup(addon: TokenPak, grace: float | None = None) -> None:
    """Say so on stderr when mitmproxy loaded the script but never started the addon.

    mitmproxy 12 drops a script without a word (and keeps proxying, exit 0) when a deferred
    ``--set`` value for one of its options cannot be parsed or is given twice. Traffic would then
    flow with no telemetry and no markers, and nobody would know.
    """
    wait = grace if grace is not None else float(os.environ.get("TOKENPAK_STARTUP_GRACE", "20"))

    def watch() -> None:
        if not addon.started.wait(wait):
            sys.stderr.write(
                "tokenpak: ERROR: the addon was loaded but mitmproxy never started it, so no telemetry is being "
                "recorded. mitmproxy skips a script silently when a --set tokenpak_* value cannot be parsed or is "
                "given twice: check the --set options.\n"
            )
            sys.stderr.flush()

    threading.Thread(target=watch, name="tokenpak-startup-watch", daemon=True).start()
