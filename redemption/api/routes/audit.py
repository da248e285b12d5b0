"""The audit API (DESIGN.md): on-chain history, settled batches with every receipt and proof, one receipt,
reconciliation and the node receipt keys — for keys holding AUDITOR_ROLE, signed like calls (empty body,
maxCost 0). `format=csv` exports the history and the reconciliation."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from ledger.followers.indexer import KINDS
from redemption import errors
from redemption.api.deps import State
from redemption.audit import store as audit_store
from redemption.audit.auth import verify_auditor
from redemption.audit.exports import csv_response, events_csv, reconciliation_csv
from redemption.audit.filters import (
    MAX_CSV_ROWS,
    MAX_PAGE,
    EventFilter,
    decode_cursor,
    parse_address,
    parse_bytes32,
    parse_kinds,
    parse_time,
)
from redemption.audit.models import AuditBatch, AuditReceiptDetail, EventPage, NodeList, Reconciliation
from redemption.auth import VerifiedCall

router = APIRouter(prefix="/audit", tags=["audit"])


async def _auditor(request: Request, state: State) -> VerifiedCall:
    return await verify_auditor(request, roles=state.auditors, store=state.store, separator=state.domains.redemption,
                                max_deadline_seconds=state.settings.max_deadline_seconds)


Auditor = Annotated[VerifiedCall, Depends(_auditor)]
Format = Literal["json", "csv"]


@router.get("/transactions", response_model=EventPage)
async def transactions(
    request: Request,
    state: State,
    account: Annotated[list[str], Query(description="events naming this address (repeatable: any of them)")] = [],  # noqa: B006
    kind: Annotated[list[str], Query(description=f"repeatable or comma separated: {', '.join(KINDS)}")] = [],  # noqa: B006
    event: Annotated[list[str], Query(description="event names, e.g. Transfer (repeatable)")] = [],  # noqa: B006
    batch_id: str | None = Query(None, description="events of one settlement batch"),
    from_block: int | None = Query(None, ge=0, le=2**63 - 1),
    to_block: int | None = Query(None, ge=0, le=2**63 - 1),
    since: str | None = Query(None, description="unix seconds or ISO 8601, inclusive"),
    until: str | None = Query(None, description="unix seconds or ISO 8601, inclusive"),
    order: Literal["asc", "desc"] = Query("asc", description="chain order (asc) or newest first (desc)"),
    limit: int | None = Query(None, ge=1, le=MAX_CSV_ROWS,
                              description=f"rows per page: JSON default 100, at most {MAX_PAGE}; CSV default "
                                          f"and most {MAX_CSV_ROWS}"),
    cursor: str | None = Query(None, max_length=200,
                               description="next_cursor of the previous page (CSV: its Sluice-Next-Cursor)"),
    format: Annotated[Format, Query(description="json, or csv for an export")] = "json",
) -> EventPage | Response:
    """Every Sluice contract event the indexer holds, filtered, in chain order, a page at a time."""
    flt = EventFilter(
        accounts=[parse_address(a, "account") for a in account] or None,
        kinds=parse_kinds(kind),
        events=[e.strip() for e in event if e.strip()] or None,
        batch_id=None if batch_id is None else parse_bytes32(batch_id, "batch_id"),
        from_block=from_block, to_block=to_block,
        since=parse_time(since, "since"), until=parse_time(until, "until"),
    )  # fmt: skip
    if cursor is not None:
        decode_cursor(cursor, order)
    if format != "csv" and limit is not None and limit > MAX_PAGE:
        raise errors.InvalidRequest(f"limit is at most {MAX_PAGE} per JSON page; use format=csv for exports",
                                    "limit")
    await _auditor(request, state)  # last: a rejected read burns no nonce
    pool = state.store.pool
    if format == "csv":
        rows, next_cursor = await audit_store.list_events(pool, flt, limit=limit or MAX_CSV_ROWS, order=order,
                                                          cursor=cursor)
        return csv_response(events_csv(rows), "sluice-transactions", next_cursor)
    return await audit_store.event_page(pool, flt, limit=limit or 100, order=order, cursor=cursor)


@router.get("/batches/{batch_id}", response_model=AuditBatch)
async def batch(batch_id: str, request: Request, state: State) -> Response:
    """A settlement batch: its on-chain record, and every receipt under its root with its Merkle proof."""
    wanted = parse_bytes32(batch_id, "batch_id")
    await _auditor(request, state)
    found = await audit_store.batch_detail(state.store.pool, wanted)
    if found is None:
        raise errors.NotFound(f"no settlement batch {batch_id} in the database or on chain", "batch_id")
    return Response(found, media_type="application/json")


@router.get("/receipts/{job_id}", response_model=AuditReceiptDetail)
async def receipt(job_id: str, request: Request, state: State) -> Response:
    """One metered job's receipt with both signatures, its proof and the settlement that burned it."""
    wanted = parse_bytes32(job_id, "job_id")
    await _auditor(request, state)
    found = await audit_store.receipt_detail(state.store.pool, wanted)
    if found is None:
        raise errors.NotFound(f"no receipt for job {job_id}", "job_id")
    return Response(found, media_type="application/json")


@router.get("/reconciliation", response_model=Reconciliation)
async def reconciliation(
    request: Request,
    state: State,
    account: str | None = Query(None, description="rows where this address is the payer or the spender"),
    format: Annotated[Format, Query(description="json, or csv for an export")] = "json",
) -> Reconciliation | Response:
    """Per (payer, spender): metered, settled, Redeemed on chain, shortfalls, and whether they agree."""
    wanted = None if account is None else parse_address(account, "account")
    await _auditor(request, state)
    report = await audit_store.reconciliation(state.store.pool, wanted)
    if format == "csv":
        return csv_response(reconciliation_csv(report), "sluice-reconciliation")
    return report


@router.get("/nodes", response_model=NodeList)
async def nodes(auditor: Auditor, state: State) -> NodeList:
    """Every registered node's receipt-signing key (retired ones included: their old receipts stay valid)."""
    return await audit_store.node_keys(state.store.pool)
