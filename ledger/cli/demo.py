"""`sluice demo`: the main job — the embedded stack and the end-to-end scenario, as a transcript."""

from __future__ import annotations

import json
from typing import Any

import typer

from ledger.cli.common import explained
from ledger.cli.output import console, err_console


def register(app: typer.Typer) -> None:
    @app.command()
    @explained
    def demo(
        keep: bool = typer.Option(False, "--keep", help="leave a stack this command started running afterwards"),
    ) -> None:
        """Run the end-to-end scenario on the embedded stack (started here if none is running).

        An operator allowlists an enterprise; the enterprise buys compute tokens into its escrow with a
        permit and gives two developer keys budgets; the developers make signed calls with the `openai`
        package (one runs out of budget and gets 402); during a few streams the enterprise asks to
        withdraw its whole escrow, which the admitted calls still draw on; the Celery workers settle the
        usage on chain; an auditor verifies the whole history (no Shortfall) and prints it. Inference is
        simulated on the embedded stack.
        """
        from ledger.chain.client import Ledger
        from ledger.chain.connection import connect
        from ledger.chain.deployment import Deployment
        from ledger.config import get_settings
        from ledger.keys import operator_account
        from ledger.paths import StatePaths
        from ledger.stack.running import running_pid
        from ledger.stack.scenario import run_story
        from ledger.stack.services import client_settings
        from ledger.stack.supervisor import start_detached, stop_detached

        settings = get_settings()
        paths = StatePaths(settings.state_dir)
        started_here = False
        record: dict[str, Any]
        if running_pid(paths) is not None and paths.stack_json.is_file():
            record = json.loads(paths.stack_json.read_text())
            console.print(f"[dim]using the running stack in {paths.root}[/]")
        else:
            console.print(f"[bold]starting the embedded stack[/] in {paths.root}: chain, PostgreSQL, Redis, "
                          "the redemption service, two simulated inference nodes and the settlement workers …")
            record = start_detached(settings)
            started_here = True
        try:
            clients = client_settings(settings)
            w3 = connect(record["rpc_url"])
            deployment = Deployment.from_json(record)
            ledger = Ledger(w3, deployment, timeout=clients.tx_timeout, confirmations=clients.confirmations)
            console.print(f"[bold]Sluice[/] on chain {deployment.chain_id}; API {record['endpoints']['api']}; "
                          f"nodes {', '.join(record['endpoints'].get('nodes', []))}")
            console.rule("buy into escrow → budgets → calls → withdrawal request → settlement → audit")
            outcome = run_story(ledger, record["endpoints"]["api"], operator_account(clients),
                                say=lambda line: console.print(line, soft_wrap=True, highlight=False, markup=False))
            console.rule()
            if outcome.verify_discrepancies:
                raise typer.Exit(1)
            console.print(f"[bold green]demo complete[/]: {outcome.calls_served} calls served, "
                          f"{outcome.refused_402} refused with 402, the whole escrow asked back mid-calls, "
                          "every metered call settled and verified, no Shortfall")
        finally:
            if started_here and not keep:
                err_console.print("[dim]stopping the stack this demo started (state kept; --keep leaves it up)[/]")
                stop_detached(settings)
