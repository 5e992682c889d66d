"""``tokenpak_quiet``: keep mitmproxy's per-connection chatter off the terminal.

With default flags mitmdump prints a line per client connect and disconnect, per streamed
response ("Streaming response from ..."), per server connection: on a busy proxy they drown the
one line per LLM request that the addon prints. A filter on mitmproxy's terminal log handler
drops mitmproxy's own info and debug lines and keeps everything else: the addon's lines, every
warning and error, the "listening at" line, and any line that reports an error. Only the
terminal is filtered (mitmweb's event log keeps everything); the option turns it off again.
"""

from __future__ import annotations

import logging

__all__ = ["ChatterFilter", "set_quiet"]

_KEEP_PHRASES = ("listening at", "error")


class ChatterFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or record.name.startswith("tokenpak"):
            return True
        try:
            message = record.getMessage().lower()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to drop
            return True
        return any(p in message for p in _KEEP_PHRASES)


_FILTER = ChatterFilter()


def _terminal_handlers() -> list[logging.Handler]:
    try:
        from mitmproxy.addons.termlog import TermLogHandler
    except ImportError:  # pragma: no cover - mitmproxy always has it
        return []
    return [h for h in logging.getLogger().handlers if isinstance(h, TermLogHandler)]


def set_quiet(on: bool) -> None:
    """Install (or remove) the filter on mitmproxy's terminal log handler(s)."""
    for handler in _terminal_handlers():
        if on:
            handler.addFilter(_FILTER)
        else:
            handler.removeFilter(_FILTER)
