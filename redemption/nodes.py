"""Which nodes may heartbeat: a node's signed heartbeat, admitted only for a key NodeRegistry lists as active.

A node's address is its receipt key; its heartbeat must be signed by it, recent, and for the endpoint
the operator registered on chain (`sluice admin nodes register`): a key the chain does not know gets
403 `node_not_registered`, a retired one `node_retired`, another URL `endpoint_mismatch` — so no
heartbeat can make the service send client bodies anywhere the operator did not name.
"""

from __future__ import annotations

import time

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address

from inference_node.protocol import NodeHeartbeat
from redemption import errors
from redemption.routing import NodeRegistry, same_endpoint
from redemption.store import Store

HEARTBEAT_MAX_AGE = 60


async def accept_heartbeat(beat: NodeHeartbeat, store: Store, registry: NodeRegistry) -> None:
    """Register or refresh the node in the database and the registry; the matching ApiError otherwise."""
    if abs(time.time() - beat.timestamp) > HEARTBEAT_MAX_AGE:
        raise errors.InvalidRequest("heartbeat timestamp is stale; check the node's clock", "timestamp")
    try:
        signer = Account.recover_message(encode_defunct(text=beat.signing_text()),
                                         signature=bytes.fromhex(beat.signature.removeprefix("0x")))
    except (ValueError, TypeError, BadSignature):
        # Zero r or s, a v that names no curve point, s above the curve order: no key signed this.
        raise errors.InvalidSignature("heartbeat signature is not a valid secp256k1 signature; sign the "
                                      "heartbeat's signing text with the node's receipt key (EIP-191)",
                                      "signature") from None
    if signer.lower() != beat.node.lower():
        raise errors.InvalidSignature("heartbeat signature does not match the node address", "signature")
    node = to_checksum_address(beat.node)
    refuse_unregistered(registry, node, beat.url)
    await store.upsert_node(node, beat.url, beat.models, beat.tier, beat.region, beat.capacity,
                            beat.running, beat.waiting)
    registry.heartbeat(node, beat.url, beat.models, beat.tier, beat.region, beat.capacity, beat.running,
                       beat.waiting)


def refuse_unregistered(registry: NodeRegistry, node: str, url: str) -> None:
    """Only an active NodeRegistry key, speaking for its registered endpoint, may heartbeat."""
    record = registry.registered(node)
    if record is None:
        raise errors.NodeRefused(f"node {node} is not registered in NodeRegistry; the operator registers its "
                                 f"receipt key with `sluice admin nodes register {node} --endpoint URL --tier ... "
                                 "--region ...`", "node", code="node_not_registered")
    if not record.active:
        raise errors.NodeRefused(f"node {node} was retired in NodeRegistry at block {record.retired_block}; a "
                                 "retired key never serves again: register a new key", "node", code="node_retired")
    if not same_endpoint(url, record.endpoint):
        raise errors.NodeRefused(f"node {node} is registered at {record.endpoint}, not at {url[:200]}; a node "
                                 "heartbeats only for its registered endpoint (`sluice admin nodes update` moves it)",
                                 "url", code="endpoint_mismatch")
