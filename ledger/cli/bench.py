"""`sluice bench`: benchmarks that print figures and write JSON (never timed tests)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ledger.cli.common import explained
from ledger.cli.output import console

app = typer.Typer(help="Benchmarks: print figures and write them as JSON.", no_args_is_help=True)

JsonPath = typer.Option(None, "--json", help="also write the figures to this JSON file")


def _write(path: Path | None, figures: dict[str, object]) -> None:
    if path is not None:
        path.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"[dim]figures written to {path}[/]")


@app.command("settlement-gas")
@explained
def settlement_gas(json_path: Path | None = JsonPath) -> None:
    """Gas per settled item of Settlement.settle for batches of 1, 10, 100 and 500 items, payer = spender and not.

    Runs on a throwaway embedded chain (its own state dir and a free port), so it never touches your stack.
    """
    from ledger.bench.settlement_gas import run

    figures = run(report=console.print, progress=lambda msg: console.print(f"[dim]{msg}[/]"))
    _write(json_path, figures)


@app.command("gateway")
@explained
def gateway(json_path: Path | None = JsonPath,
            calls: int = typer.Option(3000, "--calls", help="calls per leg"),
            concurrency: int = typer.Option(64, "--concurrency", help="connections in flight at once")) -> None:
    """Calls/s and added latency of the redemption service versus the node, same load, one run.

    Pre-signed non-streamed calls (16 output tokens) at 64 concurrent connections against a zero-latency
    simulated node: to its engine directly, to its agent directly, and through the service.
    """
    from ledger.bench.gateway import run

    _write(json_path, run(calls, report=console.print, concurrency=concurrency))


@app.command("settlement")
@explained
def settlement(
    json_path: Path | None = JsonPath,
    calls: int = typer.Option(20_000, "--calls", min=1, help="metered calls per run"),
    pairs: int = typer.Option(200, "--pairs", min=2, help="(payer, spender) pairs the calls spread over"),
    mode: str = typer.Option("both", "--mode", help="live (workers settle while calls are metered: lag), drain "
                             "(meter first, then settle the backlog: capacity) or both"),
    writers: int = typer.Option(2, "--writers", min=1, help="processes metering calls"),
    in_flight: int = typer.Option(64, "--in-flight", min=1, help="calls in flight per metering process"),
    workers: int = typer.Option(1, "--workers", min=1, help="`sluice worker` processes (the first runs beat)"),
    concurrency: int = typer.Option(2, "--concurrency", min=1, help="pool processes per worker"),
    batch_interval: float = typer.Option(2.0, "--batch-interval", min=0.05, help="SLUICE_BATCH_INTERVAL"),
    batch_max: int = typer.Option(50_000, "--batch-max", min=1, help="SLUICE_BATCH_MAX (records)"),
    batch_max_items: int = typer.Option(400, "--batch-max-items", min=1, help="SLUICE_BATCH_MAX_ITEMS"),
    block_time: float = typer.Option(0.0, "--block-time", min=0, help="seconds between blocks while settling "
                                     "(Anvil's interval mining); 0: a block per transaction"),
) -> None:
    """Settle CALLS metered calls over PAIRS pairs with real workers on a throwaway stack.

    Calls go through the service's Store (reserve_hold + meter_hold, signed requests and node receipts).
    Figures: time until all are confirmed, settled calls/s, gas per settled call, lag (metered -> confirmed)
    p50/p99, against the targets >= 2,000 calls/s, <= 500 gas per call, p99 <= 2 x the batch interval.
    """
    from ledger.bench.settlement import BenchConfig, run

    if mode not in ("live", "drain", "both"):
        raise ValueError("--mode must be live, drain or both")
    config = BenchConfig(calls=calls, pairs=pairs, writers=writers, in_flight=in_flight, workers=workers,
                         concurrency=concurrency, batch_interval=batch_interval, batch_max=batch_max,
                         batch_max_items=batch_max_items, block_time=block_time, mode=mode)
    figures = run(config, report=lambda line: console.print(line, highlight=False, markup=False))
    _write(json_path, figures)


@app.command("audit")
@explained
def audit(
    json_path: Path | None = JsonPath,
    receipts: int = typer.Option(50_000, "--receipts", min=1, help="settled receipts (2 events each, + 1 per batch)"),
    batch_size: int = typer.Option(1_000, "--batch-size", min=1, max=1_500, help="receipts per settlement batch"),
    workers: int = typer.Option(2, "--workers", min=1, help="processes signing (setup) and verifying signatures"),
) -> None:
    """Indexer backfill (events/s) and `sluice audit verify` (receipts/s) on a throwaway chain.

    Builds a settled history of RECEIPTS signed receipts (>= 100,000 events at the default), then times
    the indexer from the deployment block and `verify` against a real redemption service. Targets:
    >= 20,000 events/s and >= 5,000 receipts/s.
    """
    from ledger.bench.audit import BenchConfig, run

    config = BenchConfig(receipts=receipts, batch_size=batch_size, workers=workers)
    _write(json_path, run(config, report=lambda line: console.print(line, highlight=False, markup=False)))
