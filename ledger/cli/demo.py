"""`sluice demo`: the main job — the embedded stack and the end-to-end scenario, as a transcript."""

from __future__ import annotations

import json
from typing import Any

import typer

from ledger.cli.common import handle_errors
from ledger.cli.output import console, err_console


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def demo(
        keep: bool = typer.Option(False, "--keep", help="leave a stack this command started running afterwards"),
    ) -> None:
        """Run the end-to-end scenario on the embedded stack (started here if none is running).

        The operator allowlists an enterprise, the enterprise buys compute tokens with a permit and
        approves a developer, metered usage is settled in one batch, and every receipt is proved
        against the on-chain Merkle root. Balances, events and transaction hashes are printed.
        """
        from ledger import embedded
        from ledger.chain import connect
        from ledger.client import Ledger
        from ledger.config import get_settings
        from ledger.deployment import Deployment
        from ledger.keys import operator_account, settler_account
        from ledger.lifecycle import walk_lifecycle

        settings = get_settings()
        paths = embedded.StatePaths(settings.state_dir)
        started_here = False
        record: dict[str, Any]
        if embedded.running_pid(paths) is not None and paths.stack_json.is_file():
            record = json.loads(paths.stack_json.read_text())
            console.print(f"[dim]using the running stack in {paths.root}[/]")
        else:
            console.print(f"[bold]starting the embedded stack[/] in {paths.root} (chain, PostgreSQL, Redis) …")
            record = embedded.start_detached(settings)
            started_here = True
        try:
            clients = embedded.client_settings(settings)
            w3 = connect(record["rpc_url"])
            deployment = Deployment.from_json(record)
            ledger = Ledger(w3, deployment, timeout=clients.tx_timeout, confirmations=clients.confirmations)
            console.print(f"[bold]Sluice[/] on chain {deployment.chain_id}, contracts:")
            for name, address in deployment.contracts.items():
                console.print(f"  {name:14} {address}")
            console.rule("token lifecycle")
            walk_lifecycle(ledger, operator_account(clients), settler_account(clients),
                           say=lambda line: console.print(line, soft_wrap=True))
            console.rule()
            console.print("[bold green]demo complete[/]")
        finally:
            if started_here and not keep:
                err_console.print("[dim]stopping the stack this demo started (state kept; --keep leaves it up)[/]")
                embedded.stop_detached(settings)
