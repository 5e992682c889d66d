"""What ``mitmdump -s`` loads, inside the package, so a ``pip install`` can run the proxy.

``SCRIPT`` is the file to pass to ``mitmdump -s`` (``tokenpak run`` does); ``addons/tokenpak.py``
in a checkout is the same two lines. ``make_addons`` builds fresh instances each time mitmproxy
executes the script (it re-executes it on reload).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["SCRIPT", "make_addons", "mitmdump_command", "mitmdump_executable"]

SCRIPT = Path(__file__).resolve().with_name("mitmdump_entry.py")


def make_addons() -> list[Any]:
    """The addon list: TokenPak, the recorder, the live checker (any order works, see hooks.py) and
    the registration of mitmweb's "LLM (tokenpak)" content view."""
    from tokenpak_mitm.addon import TokenPak, watch_startup
    from tokenpak_mitm.conformance.live import LiveConformance
    from tokenpak_mitm.contentview import ContentviewAddon
    from tokenpak_mitm.recorder import Recorder

    tokenpak = TokenPak()
    watch_startup(tokenpak)  # mitmproxy drops a script silently on a bad or duplicated --set
    return [tokenpak, Recorder(), LiveConformance(), ContentviewAddon()]


def mitmdump_executable() -> str:
    """The mitmdump installed next to this interpreter (the same environment), else from PATH."""
    candidate = Path(sys.executable).with_name("mitmdump")
    return str(candidate) if candidate.exists() else "mitmdump"


def mitmdump_command() -> list[str]:
    """argv prefix that runs *this* environment's mitmdump: the script beside the interpreter,
    else mitmproxy's entry point through this interpreter (never another installation's)."""
    candidate = Path(sys.executable).with_name("mitmdump")
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return [str(candidate)]
    return [sys.executable, "-c", "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())"]
