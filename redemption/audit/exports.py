"""The audit API's CSV exports: the event history and the reconciliation, as spreadsheets take them."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.responses import Response

from ledger.followers.indexer import checksum
from redemption.audit.models import Reconciliation, ReconciliationRow
from redemption.audit.store import hex_or_none

CSV_COLUMNS = ("timestamp", "block", "log_index", "tx_hash", "contract", "event", "kind", "accounts", "amount",
               "batch_id", "args")


def events_csv(rows: Sequence[Sequence[Any]]) -> str:
    """Raw `chain_events` rows, as `audit.store.list_events` returns them, one CSV line each."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow((
            r[5].isoformat(), r[0], r[1], "0x" + bytes(r[2]).hex(), r[6], r[8], r[9],
            " ".join(checksum(bytes(a)) for a in r[10]), "" if r[12] is None else str(r[12]),
            hex_or_none(r[13]) or "", orjson.dumps(r[11], option=orjson.OPT_SORT_KEYS).decode(),
        ))  # fmt: skip
    return out.getvalue()


def reconciliation_csv(report: Reconciliation) -> str:
    out = io.StringIO()
    fields = list(ReconciliationRow.model_fields)
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow(row.model_dump())
    return out.getvalue()


def csv_response(text: str, name: str, next_cursor: str | None = None) -> Response:
    """An attachment named `name`.csv; a paged export names its next page in `Sluice-Next-Cursor`."""
    headers = {"Content-Disposition": f'attachment; filename="{name}.csv"'}
    if next_cursor is not None:
        headers["Sluice-Next-Cursor"] = next_cursor
    return Response(text, media_type="text/csv; charset=utf-8", headers=headers)
