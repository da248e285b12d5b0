"""Root of the `sluice` command: registers every command group.

Each group lives in its own module of this package and imports heavy libraries
(web3, psycopg, ...) inside its commands, so `sluice --help` stays fast.
"""

from __future__ import annotations

import sys

import typer

from ledger.cli.startup import defer_bls_keystores

defer_bls_keystores()  # before any command imports web3

from ledger.cli import admin, audit, bench, demo, deploy, dev, node, stack, wallet, worker  # noqa: E402

app = typer.Typer(
    name="sluice",
    help="Sluice: sell GPU inference as prepaid compute tokens on a permissioned EVM ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _each_invocation() -> None:
    """Every command reads the environment afresh, even a second one in the same process (a test's)."""
    config = sys.modules.get("ledger.config")  # not loaded yet: nothing was read, and nothing to pay for
    if config is not None:
        config.get_settings.cache_clear()


stack.register(app)
deploy.register(app)
demo.register(app)
worker.register(app)
app.add_typer(admin.app, name="admin")
app.add_typer(bench.app, name="bench")
app.add_typer(node.app, name="node")
app.add_typer(wallet.app, name="wallet")
app.add_typer(audit.app, name="audit")
app.add_typer(dev.app, name="dev")


def main() -> None:
    app()
