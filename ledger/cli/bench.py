"""`sluice bench`: benchmarks that print figures and write JSON (never timed tests)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from ledger.cli.common import handle_errors
from ledger.cli.output import console

app = typer.Typer(help="Benchmarks: print figures and write them as JSON.", no_args_is_help=True)

JsonPath = typer.Option(None, "--json", help="also write the figures to this JSON file")


def _write(path: Path | None, figures: dict[str, object]) -> None:
    if path is not None:
        path.write_text(json.dumps(figures, indent=2) + "\n")
        console.print(f"[dim]figures written to {path}[/]")


@app.command("settlement-gas")
@handle_errors
def settlement_gas(json_path: Path | None = JsonPath) -> None:
    """Gas per settled item for batches of 1, 10, 100 and 500 items, beside one plain burn transaction per item.

    Runs on a throwaway embedded chain (its own state dir and a free port), so it never touches your stack.
    """
    from ledger import embedded
    from ledger.bench.settlement_gas import measure
    from ledger.chain import connect
    from ledger.client import Ledger
    from ledger.config import Settings
    from ledger.deploy import deploy_all
    from ledger.keys import embedded_account

    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as home:
        port = embedded.free_port()
        settings = Settings(home=Path(home), chain_port=port)
        service = embedded.anvil_service(embedded.StatePaths(settings.state_dir), port=port,
                                         chain_id=settings.chain_id, binary=embedded.anvil_binary(settings))
        stack = embedded.Stack([service], lambda msg: console.print(f"[dim]{msg}[/]"))
        stack.start()
        try:
            w3 = connect(settings.effective_rpc_url)
            operator, settler = embedded_account(0), embedded_account(1)
            deployment = deploy_all(settings, w3, operator, settler)
            figures = measure(Ledger(w3, deployment), operator, settler, report=console.print)
        finally:
            stack.stop()
    _write(json_path, figures)


@app.command("gateway")
@handle_errors
def gateway(json_path: Path | None = JsonPath,
            calls: int = typer.Option(3000, "--calls", help="calls per leg")) -> None:
    """Calls/s and added latency of the redemption service versus the node, same load, one run.

    Pre-signed non-streamed calls (16 output tokens) at 64 concurrent connections against a zero-latency
    simulated node: to its engine directly, to its agent directly, and through the service.
    """
    from redemption.benchmark import run

    _write(json_path, run(calls, report=console.print))
