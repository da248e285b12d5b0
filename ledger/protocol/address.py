"""EIP-55 checksummed addresses from the protocol's own keccak: no eth-utils, so the light client needs none."""

from __future__ import annotations

from ledger.protocol.keccak import keccak256

_HEX = frozenset("0123456789abcdef")


def is_address(value: object) -> bool:
    """True for a 0x-prefixed 40-hex-digit string, in any case (the checksum is not checked)."""
    return (isinstance(value, str) and len(value) == 42 and value[:2] in ("0x", "0X")
            and set(value[2:].lower()) <= _HEX)


def to_checksum_address(address: str | bytes) -> str:
    """The EIP-55 form of a 0x-hex address or its 20 raw bytes; ValueError for anything else."""
    if isinstance(address, bytes | bytearray):
        if len(address) != 20:
            raise ValueError(f"{address!r} is not a 20-byte address")
        lower = bytes(address).hex()
    else:
        if not is_address(address):
            raise ValueError(f"{address!r} is not a 0x address of 40 hex digits")
        lower = address[2:].lower()
    digest = keccak256(lower.encode()).hex()
    return "0x" + "".join(c.upper() if int(h, 16) >= 8 else c for c, h in zip(lower, digest[:40], strict=True))
