"""Amounts typed at the CLI (`ledger.units.parse_amount`): exact base units, every digit kept, and a clear
ValueError for what is not an amount of tokens."""

from __future__ import annotations

import pytest

from ledger.units import MAX_UINT256, ONE_TOKEN, format_amount, parse_amount, parse_tokens


@pytest.mark.parametrize(("text", "units"), [
    ("0", 0),
    ("-0", 0),
    ("1", 10**18),
    (" 12.5 ", 12_500_000_000_000_000_000),
    ("1_000", 1_000 * 10**18),
    ("0.000000000000000001", 1),
    ("1e-18", 1),
    ("1.500000000000000000000", 1_500_000_000_000_000_000),  # trailing zeros past 18 places are exact
    ("2.5E3", 2_500 * 10**18),
    # 38 significant digits: more than a default Decimal context (28) keeps
    ("12345678901234567890.123456789012345678", 12345678901234567890123456789012345678),
    ("99999999999999999999999999999.5", 99999999999999999999999999999_500000000000000000),
    ("0e-1000000000", 0),
])
def test_amounts_parse_to_exact_base_units(text: str, units: int) -> None:
    assert parse_amount(text) == units


def test_the_largest_amount_is_a_uint256_and_round_trips() -> None:
    largest = format_amount(MAX_UINT256)
    assert parse_amount(largest) == MAX_UINT256
    with pytest.raises(ValueError, match="is too large"):
        parse_amount(format_amount(MAX_UINT256 + 1))
    with pytest.raises(ValueError, match="is too large"):
        parse_amount("1e1000000000")  # refused before 10**1000000000 is built


@pytest.mark.parametrize(("text", "message"), [
    ("1.0000000000000000001", "has more than 18 decimal places"),
    ("1e-19", "has more than 18 decimal places"),
    ("1e-1000000000", "has more than 18 decimal places"),
    ("-1", "must be a non-negative number of tokens"),
    ("-0.5", "must be a non-negative number of tokens"),
    ("nan", "must be a non-negative number of tokens"),
    ("sNaN", "must be a non-negative number of tokens"),
    ("inf", "must be a non-negative number of tokens"),
    ("-Infinity", "must be a non-negative number of tokens"),
    ("", "is not a number of tokens"),
    ("0x10", "is not a number of tokens"),
    ("12,5", "is not a number of tokens"),
    ("ten", "is not a number of tokens"),
])
def test_what_is_not_an_amount_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_amount(text)


def test_other_decimals_and_tokens() -> None:
    assert parse_amount("1.25", decimals=2) == 125
    with pytest.raises(ValueError, match="has more than 2 decimal places"):
        parse_amount("1.255", decimals=2)
    assert parse_tokens("3") == 3 * ONE_TOKEN
    assert format_amount(parse_amount("12.5")) == "12.5"
