"""The chain's side of an audit: every log the checks need, read straight from JSON-RPC.

`read_chain` pages `eth_getLogs` over the token, Settlement and RateCard addresses (adaptive
ranges, `ledger.chain.rpc.LogSpan`) and folds each range into a `ChainHistory`: minted and
burned from `Transfer`, every `BatchSettled`, the `Redeemed` and `Shortfall` amounts per
batch and (payer, spender), and the `RateSet` history of each model. Logs are compared as the
node's hex and decoded only where needed: a history of 100,000 logs reads in about a second.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ledger.chain.rpc import JsonRpc, LogSpan, too_large
from ledger.protocol.keccak import keccak256

Pair = tuple[bytes, bytes]
"""(payer, spender) as raw 20-byte addresses."""

_TRANSFER = keccak256(b"Transfer(address,address,uint256)")
_BATCH_SETTLED = keccak256(b"BatchSettled(bytes32,bytes32,uint256,uint256)")
_REDEEMED = keccak256(b"Redeemed(bytes32,address,address,uint256)")
_SHORTFALL = keccak256(b"Shortfall(bytes32,address,address,uint256,uint256)")
_RATE_SET = keccak256(b"RateSet(bytes32,uint256,uint256)")


@dataclass(frozen=True)
class SettledBatch:
    """One `BatchSettled` log: the batch, its receipts root, item count and total, and where it was mined."""

    batch_id: bytes
    root: bytes
    items: int
    total: int
    tx_hash: bytes
    block: int


@dataclass
class ChainHistory:
    """What the logs of the token, the settlement and the rate card say, up to `to_block`."""

    from_block: int
    to_block: int
    events: int = 0
    minted: int = 0
    burned: int = 0
    burns_by_tx: dict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    batches: dict[bytes, SettledBatch] = field(default_factory=dict)
    duplicate_batches: list[bytes] = field(default_factory=list)
    redeemed: dict[bytes, dict[Pair, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    shortfalls: dict[bytes, dict[Pair, tuple[int, int]]] = field(default_factory=lambda: defaultdict(dict))
    rates: dict[bytes, list[tuple[int, int, int]]] = field(default_factory=lambda: defaultdict(list))


def read_chain(rpc: JsonRpc, token: bytes, settlement: bytes, rate_card: bytes, from_block: int, to_block: int,
               history: ChainHistory | None = None) -> Iterator[tuple[int, list[SettledBatch]]]:
    """Read every log the checks need into `history`, range by range (adaptive `eth_getLogs`).

    Yields after each range the last block read and the batches settled in it: a batch's Redeemed and
    Shortfall logs come from its own transaction, so they are read by then and it can be checked at once.
    """
    history = history if history is not None else ChainHistory(from_block, to_block)
    params_base = {
        "address": ["0x" + a.hex() for a in (token, settlement, rate_card)],
        "topics": [["0x" + t.hex() for t in (_TRANSFER, _BATCH_SETTLED, _REDEEMED, _SHORTFALL, _RATE_SET)]],
    }
    span = LogSpan(initial=256, max_span=100_000, target_logs=20_000)
    start = from_block
    while start <= to_block:
        end = span.end(start, to_block)
        began = time.perf_counter()
        try:
            logs = rpc.call("eth_getLogs", [{**params_base, "fromBlock": hex(start), "toBlock": hex(end)}])
        except Exception as exc:
            if end > start and too_large(exc):
                span.refused(end - start + 1)
                continue
            raise
        span.answered(end - start + 1, len(logs), time.perf_counter() - began)
        yield end, _absorb(history, logs, token, settlement, rate_card)
        start = end + 1


def _absorb(history: ChainHistory, logs: Iterable[dict[str, Any]], token: bytes, settlement: bytes,
            rate_card: bytes) -> list[SettledBatch]:
    """Add one range's logs to `history` (compared as the node's hex, decoded only where needed)."""
    token_hex, settlement_hex, rate_card_hex = ("0x" + a.hex() for a in (token, settlement, rate_card))
    transfer, settled, redeemed, shortfall, rate_set = (
        "0x" + t.hex() for t in (_TRANSFER, _BATCH_SETTLED, _REDEEMED, _SHORTFALL, _RATE_SET))
    zero = "0" * 40
    new: list[SettledBatch] = []
    for entry in logs:
        topics: list[str] = entry["topics"]
        if entry.get("removed") or not topics:
            continue
        history.events += 1
        address, topic, data = str(entry["address"]).lower(), topics[0].lower(), str(entry["data"])
        if topic == transfer and address == token_hex and len(topics) == 3:
            value = int(data[2:66], 16)
            if topics[1][26:] == zero:
                history.minted += value
            if topics[2][26:] == zero:
                history.burned += value
                history.burns_by_tx[bytes.fromhex(entry["transactionHash"][2:])] += value
        elif address != settlement_hex:
            if address == rate_card_hex and topic == rate_set:
                history.rates[bytes.fromhex(topics[1][2:])].append(
                    (int(entry["blockNumber"], 16), int(data[2:66], 16), int(data[66:130], 16)))
        elif topic == redeemed:
            pair = (bytes.fromhex(topics[2][26:]), bytes.fromhex(topics[3][26:]))
            history.redeemed[bytes.fromhex(topics[1][2:])][pair] += int(data[2:66], 16)
        elif topic == shortfall:
            pair = (bytes.fromhex(topics[2][26:]), bytes.fromhex(topics[3][26:]))
            history.shortfalls[bytes.fromhex(topics[1][2:])][pair] = (int(data[2:66], 16), int(data[66:130], 16))
        elif topic == settled:
            batch = SettledBatch(bytes.fromhex(topics[1][2:]), bytes.fromhex(data[2:66]), int(data[66:130], 16),
                                 int(data[130:194], 16), bytes.fromhex(entry["transactionHash"][2:]),
                                 int(entry["blockNumber"], 16))
            if batch.batch_id in history.batches:
                history.duplicate_batches.append(batch.batch_id)
            history.batches[batch.batch_id] = batch
            new.append(batch)
    return new
