"""``--addon-script bench/store_inprocess.py``: the A/B switch for the store's process isolation.

Puts the pre-isolation store back for one benchmark run: SQLite written by a thread inside the
proxy (``TelemetryStore``) instead of the separate writer process (``StoreProcess``), so
``docs/performance.md`` can show what the isolation costs or saves. Not for production: with
it a truncated ``-shm`` kills the proxy again.

    .venv/bin/python -m bench --only nonstream --only concurrent --addon-script bench/store_inprocess.py
"""

from __future__ import annotations

from mitmproxy import ctx

from tokenpak_mitm.store.sqlite import TelemetryStore
from tokenpak_mitm.store.writer import ExportingStore, LocalSink


class StoreInProcess:
    def running(self) -> None:
        tp = ctx.master.addons.get("tokenpak")
        if tp is None or tp.sink is None:
            return
        path = tp.sink.path
        tp.sink.close()
        tp.sink = LocalSink(ExportingStore(TelemetryStore(path)), tp._offload.run)
        tp.sink.set_console(tp._console)
        tp.sink.start()
        ctx.log.info(f"bench: tokenpak store switched to the in-process writer thread ({path})")


addons = [StoreInProcess()]
