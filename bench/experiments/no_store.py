"""Experiment: the tokenpak addon with its SQLite writer doing nothing.

Loaded after ``addons/tokenpak.py`` (``python -m bench --addon-script bench/experiments/no_store.py``),
it makes ``TelemetryStore.submit`` drop rows, so the writer thread never wakes. The difference to a
normal run is what the writer thread (sharing the proxy's GIL) costs the event loop.
"""

from tokenpak_mitm.store import TelemetryStore


def _drop(self: TelemetryStore, row: object) -> None:
    return None


TelemetryStore.submit = _drop  # type: ignore[method-assign]
