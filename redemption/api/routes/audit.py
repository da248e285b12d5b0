"""The audit API (DESIGN.md): on-chain history, settled batches with every receipt and proof, one receipt,
reconciliation and the node receipt keys — for keys holding AUDITOR_ROLE, signed like calls (empty body,
maxCost 0). `format=csv` exports the history and the reconciliation."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from redemption import errors
from redemption.api.deps import State
from redemption.audit import service as audit
from redemption.auth import VerifiedCall

router = APIRouter(prefix="/audit", tags=["audit"])


async def _auditor(request: Request, state: State) -> VerifiedCall:
    return await audit.verify_auditor(request, state)


Auditor = Annotated[VerifiedCall, Depends(_auditor)]
Format = Literal["json", "csv"]


def _csv(text: str, name: str, next_cursor: str | None = None) -> Response:
    headers = {"Content-Disposition": f'attachment; filename="{name}.csv"'}
    if next_cursor is not None:
        headers["Sluice-Next-Cursor"] = next_cursor
    return Response(text, media_type="text/csv; charset=utf-8", headers=headers)


@router.get("/transactions", response_model=audit.EventPage)
async def transactions(
    auditor: Auditor,
    state: State,
    account: Annotated[list[str], Query(description="events naming this address (repeatable: any of them)")] = [],  # noqa: B006
    kind: Annotated[list[str], Query(description=f"repeatable or comma separated: {', '.join(audit.KINDS)}")] = [],  # noqa: B006
    event: Annotated[list[str], Query(description="event names, e.g. Transfer (repeatable)")] = [],  # noqa: B006
    batch_id: str | None = Query(None, description="events of one settlement batch"),
    from_block: int | None = Query(None, ge=0),
    to_block: int | None = Query(None, ge=0),
    since: str | None = Query(None, description="unix seconds or ISO 8601, inclusive"),
    until: str | None = Query(None, description="unix seconds or ISO 8601, inclusive"),
    order: Literal["asc", "desc"] = Query("asc", description="chain order (asc) or newest first (desc)"),
    limit: int | None = Query(None, ge=1, le=audit.MAX_CSV_ROWS,
                              description=f"rows per page: JSON default 100, at most {audit.MAX_PAGE}; CSV default "
                                          f"and most {audit.MAX_CSV_ROWS}"),
    cursor: str | None = Query(None, description="next_cursor of the previous page (CSV: its Sluice-Next-Cursor)"),
    format: Annotated[Format, Query(description="json, or csv for an export")] = "json",
) -> audit.EventPage | Response:
    """Every Sluice contract event the indexer holds, filtered, in chain order, a page at a time."""
    flt = audit.EventFilter(
        accounts=[audit.parse_address(a, "account") for a in account] or None,
        kinds=audit.parse_kinds(kind),
        events=[e.strip() for e in event if e.strip()] or None,
        batch_id=None if batch_id is None else audit.parse_bytes32(batch_id, "batch_id"),
        from_block=from_block, to_block=to_block,
        since=audit.parse_time(since, "since"), until=audit.parse_time(until, "until"),
    )  # fmt: skip
    pool = state.store.pool
    if format == "csv":
        rows, next_cursor = await audit.list_events(pool, flt, limit=limit or audit.MAX_CSV_ROWS, order=order,
                                                    cursor=cursor)
        return _csv(audit.events_csv(rows), "sluice-transactions", next_cursor)
    if limit is not None and limit > audit.MAX_PAGE:
        raise errors.InvalidRequest(f"limit is at most {audit.MAX_PAGE} per JSON page; use format=csv for exports",
                                    "limit")
    return await audit.event_page(pool, flt, limit=limit or 100, order=order, cursor=cursor)


@router.get("/batches/{batch_id}", response_model=audit.AuditBatch)
async def batch(batch_id: str, auditor: Auditor, state: State) -> Response:
    """A settlement batch: its on-chain record, and every receipt under its root with its Merkle proof."""
    found = await audit.batch_detail(state.store.pool, audit.parse_bytes32(batch_id, "batch_id"))
    if found is None:
        raise errors.NotFound(f"no settlement batch {batch_id} in the database or on chain", "batch_id")
    return Response(found, media_type="application/json")


@router.get("/receipts/{job_id}", response_model=audit.AuditReceiptDetail)
async def receipt(job_id: str, auditor: Auditor, state: State) -> Response:
    """One metered job's receipt with both signatures, its proof and the settlement that burned it."""
    found = await audit.receipt_detail(state.store.pool, audit.parse_bytes32(job_id, "job_id"))
    if found is None:
        raise errors.NotFound(f"no receipt for job {job_id}", "job_id")
    return Response(found, media_type="application/json")


@router.get("/reconciliation", response_model=audit.Reconciliation)
async def reconciliation(
    auditor: Auditor,
    state: State,
    account: str | None = Query(None, description="rows where this address is the payer or the spender"),
    format: Annotated[Format, Query(description="json, or csv for an export")] = "json",
) -> audit.Reconciliation | Response:
    """Per (payer, spender): metered, settled, Redeemed on chain, shortfalls, and whether they agree."""
    report = await audit.reconciliation(state.store.pool,
                                        None if account is None else audit.parse_address(account, "account"))
    if format == "csv":
        return _csv(audit.reconciliation_csv(report), "sluice-reconciliation")
    return report


@router.get("/nodes", response_model=audit.NodeList)
async def nodes(auditor: Auditor, state: State) -> audit.NodeList:
    """Every registered node's receipt-signing key (retired ones included: their old receipts stay valid)."""
    return await audit.node_keys(state.store.pool)
