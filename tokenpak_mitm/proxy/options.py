"""Parsing of the addon's option values, done in ``configure`` so mistakes fail loudly.

mitmproxy parses typed (``bool``/``int``) addon options itself, and a value it cannot parse makes
mitmdump skip the whole script *silently* and carry on as a plain proxy (mitmproxy 12.2.3). So
our non-string options are declared as strings and parsed here; a bad value becomes an
``OptionsError`` naming the option, and mitmdump exits 1.
"""

from __future__ import annotations

import re

__all__ = ["parse_bool", "parse_size"]

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_bool(name: str, value: str) -> bool:
    low = str(value).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, not {value!r}")


def parse_size(name: str, value: str, minimum: int = 0) -> int:
    """Bytes from ``8388608``, ``512k``, ``8m``, ``8MiB``, ``1g``."""
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{name} must be a size such as 8388608, 512k or 8m, not {value!r}")
    size = int(m.group(1)) * _UNITS[m.group(2).lower()]
    if size < minimum:
        raise ValueError(f"{name} must be at least {minimum} bytes, not {value!r}")
    return size
