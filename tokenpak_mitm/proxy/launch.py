"""How to start *this* environment's mitmdump with the package's addon script.

``SCRIPT`` is the file to pass to ``mitmdump -s`` (``tokenpak run`` does; ``addons/tokenpak.py``
in a checkout is the same two lines). Used by the CLI, the simulator's process helper and the tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["SCRIPT", "mitmdump_command", "mitmdump_executable"]

SCRIPT = Path(__file__).resolve().parents[1] / "mitmdump_entry.py"


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
