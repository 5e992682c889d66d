"""The dialects: one registered :class:`~tokenpak_mitm.core.dialects.spec.Dialect` per provider API.

Adding a dialect: write its module (a tracker, its endpoints, prompt layout, session hint, view and
rendering, gathered in ``DIALECT``), then add its name to ``DialectName`` and its module to
``_BUILTIN`` below. Nothing else branches on a dialect's name.

A dialect can also come from another installed package, without touching this one: an entry point
in the group ``tokenpak_mitm.dialects`` naming a ``Dialect`` value (e.g. ``toy = "toy_dialect:DIALECT"``).
They are loaded once, on first use, in every process that asks (the proxy, the store's writer, the
CLI); one that fails to load is skipped with a warning, never a crash.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Literal

from tokenpak_mitm.core.dialects.spec import Dialect

__all__ = ["ENTRY_POINT_GROUP", "Dialect", "DialectName", "dialect", "dialects", "register"]

DialectName = Literal["anthropic", "openai_chat", "openai_responses", "gemini"]
ENTRY_POINT_GROUP = "tokenpak_mitm.dialects"

_log = logging.getLogger(__name__)
_REGISTRY: dict[str, Dialect] = {}
_ORDERED: tuple[Dialect, ...] = ()  # _REGISTRY's values, kept by `register` (every request's route walks it)
_plugins_loaded = False


def register(d: Dialect) -> None:
    """Add (or replace) a dialect; the built-in ones are registered at import."""
    global _ORDERED
    _REGISTRY[d.name] = d
    _ORDERED = tuple(_REGISTRY.values())


def dialect(name: str) -> Dialect | None:
    found = _REGISTRY.get(name)
    if found is None and not _plugins_loaded:
        _load_plugins()
        found = _REGISTRY.get(name)
    return found


def dialects() -> tuple[Dialect, ...]:
    """Every registered dialect, in registration order (the order endpoints are matched in)."""
    if not _plugins_loaded:
        _load_plugins()
    return _ORDERED


def _load_plugins() -> None:
    global _plugins_loaded
    _plugins_loaded = True
    try:
        found = list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # noqa: BLE001 - broken metadata on the path must not stop the proxy
        _log.warning(f"tokenpak: dialect plugins not loaded: {exc}")
        return
    for ep in found:
        try:
            value = ep.load()
        except Exception as exc:  # noqa: BLE001
            _log.warning(f"tokenpak: dialect plugin {ep.name!r} ({ep.value}) did not load: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(value, Dialect):
            _log.warning(f"tokenpak: dialect plugin {ep.name!r} ({ep.value}) is not a Dialect; skipped")
            continue
        if value.name in _BUILTIN_NAMES:
            _log.warning(f"tokenpak: dialect plugin {ep.name!r} would replace the built-in {value.name!r}; skipped")
            continue
        register(value)


def _register_builtin() -> frozenset[str]:
    from tokenpak_mitm.core.dialects import anthropic, gemini, openai_chat, openai_responses

    _BUILTIN = (anthropic, openai_chat, openai_responses, gemini)
    for module in _BUILTIN:
        register(module.DIALECT)
    return frozenset(_REGISTRY)


_BUILTIN_NAMES = _register_builtin()
