"""How an audit request narrows the history: its filters, its page limits and its cursors.

Every parser answers a bad value with 400 `invalid_request` naming the parameter.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from eth_utils.address import is_hex_address

from ledger.followers.indexer import KINDS
from redemption import errors

MAX_PAGE = 1_000
MAX_CSV_ROWS = 100_000
# Both the spoken spelling ("rate change", "rate-change") and the stored kind ("rate_change") are accepted.
KIND_ALIASES = {k.replace("_", " "): k for k in KINDS} | {k.replace("_", "-"): k for k in KINDS}


@dataclass(frozen=True)
class EventFilter:
    accounts: list[bytes] | None = None
    kinds: list[str] | None = None
    events: list[str] | None = None
    batch_id: bytes | None = None
    from_block: int | None = None
    to_block: int | None = None
    since: datetime | None = None
    until: datetime | None = None


def parse_address(value: str, param: str) -> bytes:
    if not is_hex_address(value.strip()):
        raise errors.InvalidRequest(f"{param} must be a 0x address, got {value[:80]!r}", param)
    return bytes.fromhex(value.strip()[2:])


def parse_bytes32(value: str, param: str) -> bytes:
    text = value.strip().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise errors.InvalidRequest(f"{param} must be 0x followed by 64 hex digits", param)
    return raw


def parse_kinds(values: Sequence[str]) -> list[str] | None:
    kinds: list[str] = []
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            if not name:
                continue
            name = KIND_ALIASES.get(name, name)
            if name not in KINDS:
                raise errors.InvalidRequest(f"unknown kind {part.strip()!r}; kinds: {', '.join(KINDS)}", "kind")
            kinds.append(name)
    return kinds or None


def parse_time(value: str | None, param: str) -> datetime | None:
    """Unix seconds or ISO 8601 (a naive time is UTC)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise errors.InvalidRequest(f"{param} must be unix seconds or an ISO 8601 time, got {text[:40]!r}",
                                    param) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def encode_cursor(block: int, log_index: int, order: str) -> str:
    raw = orjson.dumps({"b": block, "i": log_index, "o": order})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BIGINT_MAX = 2**63 - 1  # block numbers and log indexes are PostgreSQL bigints


def decode_cursor(cursor: str, order: str) -> tuple[int, int]:
    try:
        if len(cursor) > 200:
            raise ValueError("too long")
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        block, log_index, cursor_order = int(data["b"]), int(data["i"]), str(data["o"])
        if not (0 <= block <= BIGINT_MAX and 0 <= log_index <= BIGINT_MAX):
            raise ValueError("out of range")
    except (ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise errors.InvalidRequest("cursor is not one this API issued; pass next_cursor unchanged", "cursor") from None
    if cursor_order != order:
        raise errors.InvalidRequest(f"this cursor pages in {cursor_order} order; pass order={cursor_order}", "cursor")
    return block, log_index
