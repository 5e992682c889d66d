"""Drive an addon's hooks in-process as mitmproxy's addon manager does: the addon, then each of its
``addons`` (depth first), in order; an awaitable a hook returns is awaited by ``adispatch``.

For tests and benchmarks that call hooks one by one (``TokenPak`` is a list of small addons)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

__all__ = ["adispatch", "dispatch"]


def _walk(addon: Any) -> Iterator[Any]:
    yield addon
    for child in getattr(addon, "addons", None) or ():
        yield from _walk(child)


def dispatch(addon: Any, hook: str, *args: Any) -> Any:
    """Call ``hook`` on the addon and its parts; returns the last value one returned (None: none did)."""
    out = None
    for part in _walk(addon):
        fn = getattr(part, hook, None)
        if callable(fn):
            result = fn(*args)
            out = out if result is None else result
    return out


async def adispatch(addon: Any, hook: str, *args: Any) -> None:
    """``dispatch``, awaiting each awaitable result before the next part runs (as mitmproxy does)."""
    for part in _walk(addon):
        fn = getattr(part, hook, None)
        if callable(fn):
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
