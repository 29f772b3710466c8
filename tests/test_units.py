"""Size parsing and formatting."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpibench.units import format_exact_size, format_size, gb_per_s, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        (4096, 4096),
        ("4096", 4096),
        ("4KiB", 4096),
        ("4k", 4096),
        ("4K", 4096),
        ("1MiB", 2**20),
        ("1M", 2**20),
        ("16MiB", 16 * 2**20),
        ("2GiB", 2 * 2**30),
        ("2G", 2 * 2**30),
        ("1TiB", 2**40),
        ("1.5GiB", 3 * 2**29),
        ("10MB", 10_000_000),
        ("1GB", 10**9),
        ("512B", 512),
        (" 8 MiB ", 8 * 2**20),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MiB", "4XiB", "-4KiB", "1.3B", True, None, [1], "4 4"])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


@given(st.integers(min_value=1, max_value=2**50))
def test_exact_size_round_trips(n):
    assert parse_size(format_exact_size(n)) == n


def test_format_and_rates():
    assert format_size(1536) == "1.50 KiB"
    assert format_size(100) == "100 B"
    assert gb_per_s(10**9, 2.0) == 0.5
    assert gb_per_s(10, 0) == 0.0
