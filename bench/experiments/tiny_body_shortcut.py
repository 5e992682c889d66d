"""Experiment: skip planning for request bodies too small to ever reach a cacheable prefix.

The smallest minimum cacheable prefix is 1,024 tokens and the planner estimates ceil(bytes / 3)
tokens, so a body under 3,070 bytes can never get a marker; yet every short call is still
parsed, scanned and planned (~150 us in the proxy). Here such a body, when it names no
``cache_control`` and is not compressed, returns at once with the planner's own verdict. Timing
only: ``prefix_tokens_est`` in the rows is left empty.
"""

from __future__ import annotations

import tokenpak_mitm.addon as addon_module
from tokenpak_mitm.cache_insert import _unchanged

_plan = addon_module.insert_markers
_NEVER_CACHEABLE = 3 * 1024 - 2


def _insert_markers(body: bytes, content_encoding: str | None, opts: object) -> object:
    if len(body) < _NEVER_CACHEABLE and not content_encoding and body.find(b'"cache_control"') < 0:
        return _unchanged(body, "below_minimum")
    return _plan(body, content_encoding, opts)


addon_module.insert_markers = _insert_markers  # type: ignore[assignment]
