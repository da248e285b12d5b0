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
from redemption.nodes import accept_heartbeat

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
    """Meter a job whose stream was cut (its client left) from the node's signed receipt."""
    try:
        signed = SignedReceipt.decode((await request.body()).decode())
    except (ProtocolError, UnicodeDecodeError) as exc:
        raise errors.InvalidRequest(f"malformed receipt: {exc}") from None
    return {"status": await state.meter.charge_posted(signed, state.rates, state.registry)}
