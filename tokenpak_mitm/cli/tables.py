"""Tables and lines that fit the terminal: ``report_console`` (the terminal's width, ``COLUMNS``,
or unlimited when piped) and ``print_table`` (never splits a cell's word), for ``tokenpak report``
and its session and miss views."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["UNLIMITED_WIDTH", "plural", "print_table", "report_console"]

def plural(n: int, word: str, words: str | None = None) -> str:
    """``1 request``, ``2 requests``, ``0 requests``."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


UNLIMITED_WIDTH = 100_000  # piped output without COLUMNS: lines as long as their content, never wrapped


def report_console() -> Console:
    """A console as wide as the terminal, or ``COLUMNS``; piped without ``COLUMNS``, unlimited
    (``report | cat`` or a file gets whole lines, not rich's default 80 columns)."""
    from rich.console import Console

    columns = os.environ.get("COLUMNS", "").strip()
    width: int | None = None
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    elif not sys.stdout.isatty():
        width = UNLIMITED_WIDTH
    return Console(highlight=False, width=width)


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` so that no number, model name or other cell is ever split across lines.

    Every column is as wide as its widest cell (rich would otherwise fold ``$0.0739`` into
    ``$0.07`` / ``39``), except the list columns a caller marks ``overflow="fold"``, which may wrap
    between their words but never inside one. When that is wider than the console, the table is
    printed in parts, each repeating the first (key) column.
    """
    from dataclasses import replace

    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    def plain(cell: Any) -> str:
        return Text.from_markup(cell).plain if isinstance(cell, str) else (cell.plain if isinstance(cell, Text) else str(cell))

    wrap, low, high = [], [], []  # may wrap between words; narrowest and natural width (cells)
    for col in table.columns:
        texts = [plain(col.header), *(plain(c) for c in col.cells)]
        wraps = col.overflow == "fold" and not col.no_wrap
        natural = max(cell_len(t) for t in texts)
        wrap.append(wraps)
        low.append(max(cell_len(word) for t in texts for word in (t.split() or [""])) if wraps else natural)
        high.append(natural)
        col.no_wrap = not wraps

    def width_of(columns: list[int]) -> int:  # rich's default box: padding 1 each side, one rule per column, plus one
        return sum(low[i] + 3 for i in columns) + 1

    everything = list(range(len(table.columns)))
    chunks: list[list[int]] = [everything]
    if len(table.columns) > 2 and width_of(everything) > console.width:
        chunks = [[0]]
        for i in range(1, len(table.columns)):
            if len(chunks[-1]) > 1 and width_of([*chunks[-1], i]) > console.width:
                chunks.append([0])
            chunks[-1].append(i)
    for n, chunk in enumerate(chunks, start=1):
        # Rich shrinks wrapping columns below their longest word when short of room: give each
        # its width here instead (its longest word at least, its whole text when there is room).
        spare = console.width - width_of(chunk)
        widths = {}
        for i in chunk:
            if wrap[i]:
                widths[i] = low[i] + max(0, min(spare, high[i] - low[i]))
                spare -= widths[i] - low[i]
        if len(chunks) == 1:
            for i, w in widths.items():
                table.columns[i].width = w
            console.print(table)
            continue
        part = Table(title=f"{table.title} ({n}/{len(chunks)})" if table.title else None, title_justify=table.title_justify)
        part.columns = [replace(table.columns[i], _index=j, _cells=list(table.columns[i]._cells), width=widths.get(i))
                        for j, i in enumerate(chunk)]
        part.rows = list(table.rows)
        console.print(part)
