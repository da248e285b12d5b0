"""`sluice deploy`: deploy the contracts with roles wired (idempotent per chain)."""

from __future__ import annotations

import typer

from ledger.cli.common import JsonOpt, explained
from ledger.cli.output import console, err_console, print_json


def register(app: typer.Typer) -> None:
    @app.command()
    @explained
    def deploy(as_json: bool = JsonOpt) -> None:
        """Deploy ComputeToken, RateCard, TokenSale, Settlement (and a test stablecoin on the embedded chain).

        Idempotent: a second run reuses the deployment recorded for the chain id under the state dir.
        """
        from ledger.chain.deploy import ensure_deployed
        from ledger.config import get_settings

        record = ensure_deployed(get_settings(), progress=lambda msg: err_console.print(f"[dim]{msg}[/]"))
        if as_json:
            print_json(record)
            return
        chain, url, block = record["chain_id"], record["rpc_url"], record["deploy_block"]
        console.print(f"Sluice on chain {chain} ({url}), from block {block}")
        for name, address in record["contracts"].items():
            console.print(f"  {name:14} {address}")
