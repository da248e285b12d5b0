"""Node-facing endpoints: dispatch info, signed heartbeats, and receipts of interrupted streams."""

from __future__ import annotations

import time

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address
from fastapi import APIRouter, Request

from inference_node.protocol import (
    DISPATCH_INFO_PATH,
    HEARTBEAT_PATH,
    RECEIPTS_PATH,
    DispatchInfo,
    NodeHeartbeat,
    ProtocolError,
    SignedReceipt,
)
from redemption import errors
from redemption.api.deps import State
from redemption.state import ServiceState

router = APIRouter(tags=["internal"])
HEARTBEAT_MAX_AGE = 60


@router.get(DISPATCH_INFO_PATH)
async def dispatch_info(state: State) -> DispatchInfo:
    """What a node agent needs to check the service's dispatch tickets."""
    return DispatchInfo(chain_id=state.deployment.chain_id,
                        settlement=to_checksum_address(state.deployment.contracts["settlement"]),
                        dispatch_signer=state.dispatch_signer)


@router.post(HEARTBEAT_PATH)
async def heartbeat(beat: NodeHeartbeat, state: State) -> dict[str, str]:
    """Register or refresh a node; the heartbeat must be signed by the node's receipt key."""
    if abs(time.time() - beat.timestamp) > HEARTBEAT_MAX_AGE:
        raise errors.InvalidRequest("heartbeat timestamp is stale; check the node's clock", "timestamp")
    signer = Account.recover_message(encode_defunct(text=beat.signing_text()),
                                     signature=bytes.fromhex(beat.signature.removeprefix("0x")))
    if signer.lower() != beat.node.lower():
        raise errors.InvalidSignature("heartbeat signature does not match the node address", "signature")
    node = to_checksum_address(beat.node)
    await refuse_unregistered(state, node)
    await state.store.upsert_node(node, beat.url, beat.models, beat.tier, beat.region, beat.capacity,
                                  beat.running, beat.waiting)
    state.registry.heartbeat(node, beat.url, beat.models, beat.tier, beat.region, beat.capacity, beat.running,
                             beat.waiting)
    return {"status": "ok"}


async def refuse_unregistered(state: ServiceState, node: str) -> None:
    """Refuse a retired node, and, once an operator registered any node, every node it did not register.

    Until then registration is open (any key that signs its heartbeat joins): that is how the embedded
    stack's simulated nodes join. `sluice admin nodes register` closes it.
    """
    async with state.store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT n.retired, n.registered_by,"
            " EXISTS (SELECT 1 FROM nodes WHERE registered_by = 'operator')"
            " FROM (SELECT 1) AS one LEFT JOIN nodes n ON n.node = %s",
            (bytes.fromhex(node[2:]),),
        )
        row = await cur.fetchone()
    assert row is not None
    retired, registered_by, closed = row
    if retired:
        raise errors.Forbidden(f"node {node} is retired; an operator must register it again "
                               f"(sluice admin nodes register {node})", "node", code="node_retired")
    if closed and registered_by != "operator":
        raise errors.Forbidden(f"node {node} is not registered; an operator must register its receipt key "
                               f"(sluice admin nodes register {node} --url ... --model ... --tier ... --region ...)",
                               "node", code="node_not_registered")


@router.post(RECEIPTS_PATH)
async def post_receipt(request: Request, state: State) -> dict[str, str]:
    """Meter a job whose stream was cut (its client left) from the node's signed receipt."""
    try:
        signed = SignedReceipt.decode((await request.body()).decode())
    except (ProtocolError, UnicodeDecodeError) as exc:
        raise errors.InvalidRequest(f"malformed receipt: {exc}") from None
    async with state.store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT payer, spender, model, request_digest, max_cost FROM holds WHERE job_id = %s",
            (signed.receipt.job_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return {"status": "already_closed"}
    payer, spender = "0x" + bytes(row[0]).hex(), "0x" + bytes(row[1]).hex()
    rate = state.rates.get(row[2])
    if rate is None:
        raise errors.UnknownModel(f"model {row[2]!r} is no longer on the rate card")
    reason = state.dispatcher.check_receipt(signed, signed.node, signed.receipt.job_id, payer, spender,
                                            rate.model_id, bytes(row[3]), int(row[4]), rate)
    if reason is None and signed.node.lower() not in {n.lower() for n in state.registry.nodes}:
        reason = "unknown_node"
    if reason is not None:
        state.metrics.bad_receipts.labels(reason).inc()
        raise errors.InvalidSignature(f"receipt refused: {reason}", "signature")
    r = signed.receipt
    if r.completion_tokens == 0:
        await state.store.release_hold(r.job_id, payer, spender)
        return {"status": "released"}
    await state.store.meter_hold(r.job_id, payer, spender, signed.node, r.prompt_tokens, r.completion_tokens,
                                 r.cost,
                                 signed.signature, None)
    state.metrics.metered_cost.inc(r.cost)
    return {"status": "metered"}
