"""Which nodes may join: a node's signed heartbeat, and the registration policy it is admitted under.

A node's address is its receipt key; its heartbeat must be signed by it and recent. Until an
operator registered any node, registration is open (any key that signs its heartbeat joins): that
is how the embedded stack's simulated nodes join. `sluice admin nodes register` closes it; a
retired node is refused until an operator registers it again.
"""

from __future__ import annotations

import time

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address

from inference_node.protocol import NodeHeartbeat
from redemption import errors
from redemption.routing import NodeRegistry
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
    await refuse_unregistered(store, node)
    await store.upsert_node(node, beat.url, beat.models, beat.tier, beat.region, beat.capacity,
                            beat.running, beat.waiting)
    registry.heartbeat(node, beat.url, beat.models, beat.tier, beat.region, beat.capacity, beat.running,
                       beat.waiting)


async def refuse_unregistered(store: Store, node: str) -> None:
    """Refuse a retired node, and, once an operator registered any node, every node it did not register."""
    registration = await store.node_registration(node)
    if registration.retired:
        raise errors.Forbidden(f"node {node} is retired; an operator must register it again "
                               f"(sluice admin nodes register {node})", "node", code="node_retired")
    if registration.closed and registration.registered_by != "operator":
        raise errors.Forbidden(f"node {node} is not registered; an operator must register its receipt key "
                               f"(sluice admin nodes register {node} --url ... --model ... --tier ... --region ...)",
                               "node", code="node_not_registered")
