"""Option value parsing: every accepted spelling, and a clear error for the rest."""

from __future__ import annotations

import pytest

from tokenpak_mitm.proxy.options import parse_bool, parse_size


@pytest.mark.parametrize("value, expected", [("true", True), ("Yes", True), ("on", True), ("1", True), ("false", False), ("OFF", False), ("0", False), ("no", False)])
def test_bools(value, expected):
    assert parse_bool("x", value) is expected


@pytest.mark.parametrize("value, expected", [("8388608", 8388608), ("512k", 512 * 1024), ("8m", 8 << 20), ("8MiB", 8 << 20), ("1g", 1 << 30), (" 2 kb ", 2048)])
def test_sizes(value, expected):
    assert parse_size("x", value) == expected


@pytest.mark.parametrize("value", ["maybe", "", "2"])
def test_bad_bool_names_the_option(value):
    with pytest.raises(ValueError, match="tokenpak_console must be true or false"):
        parse_bool("tokenpak_console", value)


@pytest.mark.parametrize("value", ["8 megs", "-1", "1.5m", ""])
def test_bad_size_names_the_option(value):
    with pytest.raises(ValueError, match="tokenpak_record_max_bytes must be a size"):
        parse_size("tokenpak_record_max_bytes", value)


def test_size_minimum():
    with pytest.raises(ValueError, match="at least 1024"):
        parse_size("tokenpak_record_max_bytes", "10", minimum=1024)
