"""Compute-token amounts: exact integers in base units (18 decimals), never floats."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import NewType

BaseUnits = NewType("BaseUnits", int)
"""An amount of compute tokens in base units (the ERC-20's wei)."""

DECIMALS = 18
ONE_TOKEN = BaseUnits(10**DECIMALS)
MAX_UINT256 = 2**256 - 1


def parse_amount(text: str, decimals: int = DECIMALS) -> int:
    """Parse a decimal amount of whole tokens ("12.5") into base units, exactly.

    Integer arithmetic on the digits, never a rounding Decimal context: every digit counts.
    Raises ValueError with a readable message for negative numbers, non-numbers (NaN, infinity),
    more fractional digits than the token has, and amounts above a uint256.
    """
    try:
        value = Decimal(text.strip().replace("_", ""))
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number of tokens (examples: 100, 12.5)") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{text!r} must be a non-negative number of tokens")
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite
    mantissa = int("".join(map(str, digits)) or "0")
    shift = exponent + decimals
    if mantissa and shift > 78:  # 10**78 > 2**256: refuse before building a huge integer
        raise ValueError(f"{text!r} is too large (at most {format_amount(MAX_UINT256, decimals)} tokens)")
    if mantissa == 0:
        units = 0
    elif shift >= 0:
        units = mantissa * 10**shift
    elif -shift > len(digits):  # a nonzero digit below the last decimal place
        raise ValueError(f"{text!r} has more than {decimals} decimal places")
    else:
        units, rest = divmod(mantissa, 10**-shift)
        if rest:
            raise ValueError(f"{text!r} has more than {decimals} decimal places")
    if units > MAX_UINT256:
        raise ValueError(f"{text!r} is too large (at most {format_amount(MAX_UINT256, decimals)} tokens)")
    return units


def parse_tokens(text: str) -> BaseUnits:
    """Parse an amount of compute tokens into base units."""
    return BaseUnits(parse_amount(text, DECIMALS))


def format_amount(units: int, decimals: int = DECIMALS) -> str:
    """Render base units as a decimal string of whole tokens without rounding ("12.5")."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**decimals)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{decimals}d}".rstrip("0")


def format_tokens(units: int) -> str:
    """Render compute-token base units as whole tokens."""
    return format_amount(units, DECIMALS)
