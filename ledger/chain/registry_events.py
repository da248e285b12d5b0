"""NodeRegistry as its events tell it: which receipt keys the operator registered, where, and when.

`NodeRegistered(address indexed node, string endpoint, string tier, string region)` registers a key
(or, from `update`, moves it); `NodeRetired(address indexed node)` retires it for good. `RegistryLog`
follows both from the deployment block, so the redemption service learns of a retirement within one
poll, and an auditor can ask whether a key was active at the block a batch settled
(`RegisteredNode.active_at`), from the chain alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.address import to_checksum_address

from ledger.chain.rpc import JsonRpc
from ledger.protocol.keccak import keccak256

NODE_REGISTERED = "0x" + keccak256(b"NodeRegistered(address,string,string,string)").hex()
NODE_RETIRED = "0x" + keccak256(b"NodeRetired(address)").hex()
LOG_SPAN = 10_000  # blocks per eth_getLogs


@dataclass(frozen=True, slots=True)
class RegisteredNode:
    """One receipt key's standing; blocks are its first registration and its retirement (None: active)."""

    node: str  # checksum address
    endpoint: str
    tier: str
    region: str
    registered_block: int
    retired_block: int | None = None

    @property
    def active(self) -> bool:
        return self.retired_block is None

    @property
    def standing(self) -> str:
        return "active" if self.active else "retired"

    def active_at(self, block: int) -> bool:
        """Whether the key was registered and not yet retired as of `block` (a retirement in `block` counts)."""
        return self.registered_block <= block and (self.retired_block is None or block < self.retired_block)


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    event: str  # "NodeRegistered" or "NodeRetired"
    node: str  # checksum address
    block: int
    log_index: int
    endpoint: str = ""
    tier: str = ""
    region: str = ""


def decode_registry_log(log: dict[str, Any]) -> RegistryEvent | None:
    """A NodeRegistry log as an event; None for any other log (or one that does not decode)."""
    topics = log.get("topics") or []
    if len(topics) != 2:
        return None
    topic = str(topics[0]).lower()
    try:
        node = to_checksum_address("0x" + str(topics[1])[-40:])
        block, index = int(log["blockNumber"], 16), int(log["logIndex"], 16)
        if topic == NODE_RETIRED:
            return RegistryEvent("NodeRetired", node, block, index)
        if topic == NODE_REGISTERED:
            endpoint, tier, region = abi_decode(["string", "string", "string"], bytes.fromhex(log["data"][2:]))
            return RegistryEvent("NodeRegistered", node, block, index, endpoint, tier, region)
    except (KeyError, TypeError, ValueError):
        return None
    return None


def apply_events(nodes: dict[str, RegisteredNode], events: Sequence[RegistryEvent]) -> list[RegisteredNode]:
    """Fold `events` (in chain order) into `nodes` (keyed by lower-case address); returns the records changed."""
    changed: list[RegisteredNode] = []
    for e in events:
        key = e.node.lower()
        known = nodes.get(key)
        if e.event == "NodeRegistered":
            if known is None:
                record = RegisteredNode(e.node, e.endpoint, e.tier, e.region, e.block)
            else:  # `update` of an active node: same key, new place
                record = replace(known, endpoint=e.endpoint, tier=e.tier, region=e.region)
        elif known is not None and known.active:
            record = replace(known, retired_block=e.block)
        else:
            continue
        nodes[key] = record
        changed.append(record)
    return changed


class RegistryLog:
    """NodeRegistry's records, followed from its logs (call `sync` to catch up; not thread-safe)."""

    def __init__(self, rpc: JsonRpc, address: str, from_block: int = 0) -> None:
        self.rpc = rpc
        self.address = to_checksum_address(address)
        self.next_block = from_block
        self.nodes: dict[str, RegisteredNode] = {}

    def sync(self) -> list[RegisteredNode]:
        """Read the logs up to the head; the records that changed, in chain order."""
        head = int(self.rpc.call("eth_blockNumber", []), 16)
        changed: list[RegisteredNode] = []
        while self.next_block <= head:
            end = min(self.next_block + LOG_SPAN - 1, head)
            logs = self.rpc.call("eth_getLogs", [{"address": self.address, "fromBlock": hex(self.next_block),
                                                  "toBlock": hex(end), "topics": [[NODE_REGISTERED, NODE_RETIRED]]}])
            events = sorted((e for e in map(decode_registry_log, logs) if e is not None),
                            key=lambda e: (e.block, e.log_index))
            changed += apply_events(self.nodes, events)
            self.next_block = end + 1
        return changed

    def record(self, node: str) -> RegisteredNode | None:
        return self.nodes.get(node.lower())

    def standing(self, node: str) -> str | None:
        """'active', 'retired', or None for a key never registered."""
        record = self.nodes.get(node.lower())
        return None if record is None else record.standing
