"""Node-facing endpoints: dispatch info, signed heartbeats, and receipts of interrupted streams."""

from __future__ import annotations

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
from redemption.auth import read_body
from redemption.metering import ReceiptRejected
from redemption.nodes import accept_heartbeat

# A signed receipt is about 700 bytes of JSON; anything far larger is not one.
RECEIPT_BODY_LIMIT = 16 * 1024

router = APIRouter(tags=["internal"])


@router.get(DISPATCH_INFO_PATH)
async def dispatch_info(state: State) -> DispatchInfo:
    """What a node agent needs to check the service's dispatch tickets."""
    return DispatchInfo(chain_id=state.deployment.chain_id,
                        settlement=to_checksum_address(state.deployment.contracts["settlement"]),
                        dispatch_signer=state.dispatch_signer)


@router.post(HEARTBEAT_PATH)
async def heartbeat(beat: NodeHeartbeat, state: State) -> dict[str, str]:
    """Register or refresh a node; the heartbeat must be signed by the node's receipt key."""
    await accept_heartbeat(beat, state.store, state.registry)
    return {"status": "ok"}


@router.post(RECEIPTS_PATH)
async def post_receipt(request: Request, state: State) -> dict[str, str]:
    """Meter a job whose stream was cut (its client left) from the signed receipt of the node it was sent to.

    400 `invalid_receipt` when it cannot be decoded, 403 when its signer is not an active registered node,
    409 `receipt_not_accepted` when it meters nothing (late, second, or not this node's job), 422
    `receipt_refused` when it breaks the job's bounds (the call is then charged from what was relayed).
    """
    body = await read_body(request, RECEIPT_BODY_LIMIT)
    try:
        signed = SignedReceipt.decode(body.decode())
    except (ProtocolError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise errors.InvalidReceipt(f"malformed receipt: {str(exc)[:200]}; post the node's signed receipt JSON",
                                    "receipt") from None
    try:
        return {"status": await state.meter.charge_posted(signed, state.rates, state.registry.standing)}
    except ReceiptRejected as rejected:
        raise rejected.error from None
