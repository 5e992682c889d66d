"""cli/tables.py: tables that fit the width without splitting a cell's word; lines sized for a
terminal, COLUMNS, or a pipe."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from rich.table import Table

from tokenpak_mitm.cli.tables import UNLIMITED_WIDTH, plural, print_table, report_console


def _table() -> Table:
    t = Table(title="Cache misses by cause", title_justify="left")
    t.add_column("cause")
    t.add_column("lost", justify="right")
    t.add_column("models", overflow="fold")  # a list: may wrap between its items
    for n in range(6):
        t.add_column(f"figure {n}", justify="right")
    t.add_row("prefix_changed", "$0.0739", "claude-sonnet-4-5-20250929, gpt-4o-mini-2024-07-18", *(f"{n * 12345:,}" for n in range(6)))
    return t


@pytest.mark.parametrize("width", range(48, 161, 3))  # 48: the key column beside the longest word, in rich's borders
def test_no_line_is_wider_than_the_console_and_no_word_is_split(width: int) -> None:
    out = io.StringIO()
    print_table(Console(file=out, width=width, highlight=False), _table())
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    for word in ("prefix_changed", "$0.0739", "claude-sonnet-4-5-20250929,", "gpt-4o-mini-2024-07-18", "61,725"):
        assert word in text, (width, word, text)
    assert text.count("prefix_changed") == text.count("Cache misses by cause")  # the key column repeats in each part


def test_the_console_width_comes_from_columns_or_is_unlimited_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "73")
    assert report_console().width == 73
    monkeypatch.delenv("COLUMNS")
    assert report_console().width == UNLIMITED_WIDTH  # pytest's stdout is not a terminal


def test_plural() -> None:
    assert [plural(0, "request"), plural(1, "request"), plural(2, "request"), plural(1_234, "warning")] == [
        "0 requests", "1 request", "2 requests", "1,234 warnings"]
