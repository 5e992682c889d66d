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


class StoreInProcess:
    def running(self) -> None:
        tp = ctx.master.addons.get("tokenpak")
        if tp is None or tp.store is None:
            return
        path = tp.store.path
        tp.store.close()
        tp.store = TelemetryStore(path)
        tp.store.start()
        ctx.log.info(f"bench: tokenpak store switched to the in-process writer thread ({path})")


addons = [StoreInProcess()]
