"""Static ABI words: the 32-byte encodings that EIP-712 struct hashes and the Merkle leaves are built from."""

from __future__ import annotations

_UINT256_LIMIT = 2**256
_ADDRESS_PAD = bytes(12)


def address_word(address: str | bytes) -> bytes:
    """An address (0x-hex, or its raw 20 bytes) as one left-padded word; ValueError for anything else."""
    raw = address if isinstance(address, bytes) else bytes.fromhex(
        address[2:] if address.startswith(("0x", "0X")) else address)
    if len(raw) != 20:
        raise ValueError(f"{address!r} is not a 20-byte address")
    return _ADDRESS_PAD + raw


def uint_word(value: int) -> bytes:
    """A uint256 as one big-endian word; ValueError outside 0 .. 2**256 - 1."""
    if not 0 <= value < _UINT256_LIMIT:
        raise ValueError(f"{value} does not fit in uint256")
    return value.to_bytes(32, "big")


def bytes32_word(value: bytes) -> bytes:
    """A bytes32 as it is; ValueError for any other length."""
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes, got {len(value)}")
    return value
