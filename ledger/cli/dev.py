"""`sluice dev`: a developer's commands. `sluice dev call` (ledger.cli.dev_call) and `sluice dev budgets`
(ledger.cli.dev_budgets) run on the light client alone; the launcher runs them without this app, and this
group only lists them in `sluice --help`."""

from __future__ import annotations

import typer

app = typer.Typer(help="A developer's commands: your budgets, a signed call from the shell.", no_args_is_help=True)


@app.command("budgets", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                          "help_option_names": []}, add_help_option=False)
def budgets(ctx: typer.Context) -> None:
    """Every payer that gave this key a budget: what is left, and the payer's limits on it
    (`sluice dev budgets --help` lists the options)."""
    from ledger.cli.dev_budgets import main

    raise typer.Exit(main(ctx.args))


@app.command("call", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                       "help_option_names": []}, add_help_option=False)
def call(ctx: typer.Context) -> None:
    """A signed chat call with a developer key, streamed; prints its cost, job id and the budget left
    (`sluice dev call --help` lists the options and exit codes)."""
    from ledger.cli.dev_call import main

    raise typer.Exit(main(ctx.args))
