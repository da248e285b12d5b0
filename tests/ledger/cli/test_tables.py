"""Tables fit the terminal: `fitted_table` wraps what may wrap, leaves out what may go, and cuts no cell."""

from __future__ import annotations

import io

from rich.console import Console

from ledger.cli.audit import HISTORY_COLUMNS
from ledger.cli.output import Column, fitted_table

HISTORY_ROWS = [
    ("2026-12-02 04:31:09", "1204:3", "0x9f2c41…77ab01", "Redeemed", "redemption",
     "batch 0x5be1c2…a9f3d0: payer 0x70997…c79C8, spender 0x3C44C…93BC", "12.345678"),
    ("2026-12-02 04:31:10", "1205:0", "0x11ab22…ccdd33", "BatchSettled", "settlement",
     "batch 0x5be1c2…a9f3d0: 420 receipts, root 0x00ff11…22ee33", "1,234.5"),
    ("2026-12-02 04:31:11", "99999:12", "0x44ee55…66ff77", "Shortfall", "shortfall",
     "batch 0x5be1c2…a9f3d0: payer 0x70997…c79C8, spender 0x3C44C…93BC owed 10, paid 4", "6"),
]


def render(columns: tuple[Column, ...], rows: list[tuple[str, ...]], width: int) -> tuple[str, list[str]]:
    table, left_out = fitted_table(columns, rows, title="history", width=width)
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, force_terminal=False).print(table)
    return out.getvalue(), left_out


def test_history_fits_80_columns_without_cutting_a_cell() -> None:
    text, left_out = render(HISTORY_COLUMNS, HISTORY_ROWS, 80)
    assert left_out == ["kind", "tx"]
    assert max(len(line) for line in text.splitlines()) <= 80
    flat = " ".join(text.split())
    for row in HISTORY_ROWS:
        for cell in (row[1], row[3], row[6]):
            assert cell in flat  # no "blo…": every kept one-line cell is whole
    assert "0x3C44C…93BC owed 10, paid 4" in flat  # the details wrap rather than end in an ellipsis
    assert text.count("2026-12-02") == 3 and text.count("04:31:1") == 2  # the time wraps: date over time


def test_wide_terminals_show_every_column() -> None:
    text, left_out = render(HISTORY_COLUMNS, HISTORY_ROWS, 200)
    assert left_out == []
    assert text.splitlines()[1].split() == ["time", "(UTC)", "block", "tx", "event", "kind", "details", "tokens"]
    assert "2026-12-02 04:31:09" in text


def test_columns_go_in_drop_order_and_the_fixed_ones_stay() -> None:
    _, left_out = render(HISTORY_COLUMNS, HISTORY_ROWS, 100)
    assert left_out == ["kind"]
    _, left_out = render(HISTORY_COLUMNS, HISTORY_ROWS, 60)
    assert left_out == ["kind", "tx"]  # nothing else may go: below 80 columns the rest folds


PAIR_ROWS = [
    ("0x70997…c79C8", "0x3C44C…93BC", "1,204", "1234.567891234", "1234.567891234", "0", "0"),
    ("0x70997…c79C8", "0x70997…c79C8", "12", "0.00042", "0.0004", "0.00002", "0.000012345678901234"),
]
USAGE_ROWS = [
    ("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", "1,204", "25.000012345", "12.5", "12.500012345",
     "2026-12-02 04:31:09"),
    ("0x90F79bf6EB2c4f870365E785982E1f101E93b906", "3", "3", "0", "3", "2026-12-02 04:31:10"),
]


def test_the_verify_pairs_fit_80_columns_leaving_out_the_debt_cleared() -> None:
    from ledger.cli.audit import PAIR_COLUMNS

    text, left_out = render(PAIR_COLUMNS, PAIR_ROWS, 80)
    assert left_out == ["debt cleared"]
    assert max(len(line) for line in text.splitlines()) <= 80
    flat = " ".join(text.split())
    assert all(cell in flat for row in PAIR_ROWS for cell in row[:6])  # the unpaid shortfall stays, wrapped
    _, left_out = render(PAIR_COLUMNS, PAIR_ROWS, 120)
    assert left_out == []


def test_wallet_usage_fits_80_columns_with_whole_addresses() -> None:
    from ledger.cli.wallet import USAGE_COLUMNS

    text, left_out = render(USAGE_COLUMNS, USAGE_ROWS, 80)
    assert left_out == ["settled", "last call (UTC)"]
    assert max(len(line) for line in text.splitlines()) <= 80
    for row in USAGE_ROWS:
        assert all(cell in text for cell in row[:4])  # the whole key, to copy into `wallet budget set`
    text, left_out = render(USAGE_COLUMNS, USAGE_ROWS, 120)
    assert left_out == [] and "2026-12-02 04:31:09" in text
