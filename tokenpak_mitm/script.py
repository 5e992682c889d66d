"""The addon list ``mitmdump -s`` loads (``mitmdump_entry.py`` in the package, ``addons/tokenpak.py``
in a checkout): the composition root, the one place that knows every addon.

``make_addons`` builds fresh instances each time mitmproxy executes the script (it re-executes it
on reload).
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_addons"]


def make_addons(*, watch: bool = True) -> list[Any]:
    """The addon list: TokenPak, the recorder, the live checker (any order works, see hooks.py) and
    the registration of mitmweb's "LLM (tokenpak)" content view. ``watch=False``: instances whose
    options are only checked (``tokenpak run``'s preflight), not run by mitmproxy."""
    from tokenpak_mitm.conformance.live import LiveConformance
    from tokenpak_mitm.proxy.addon import TokenPak, watch_startup
    from tokenpak_mitm.proxy.contentview import ContentviewAddon
    from tokenpak_mitm.proxy.recorder import Recorder

    tokenpak = TokenPak()
    if watch:
        watch_startup(tokenpak)  # mitmproxy drops a script silently on a bad or duplicated --set
    return [tokenpak, Recorder(), LiveConformance(), ContentviewAddon()]
