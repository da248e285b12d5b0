"""`sluice dev`: a developer's commands. `sluice dev call` lives in ledger.cli.dev_call, on the light client
alone; the launcher runs it without this app, and this group only lists it in `sluice --help`."""

from __future__ import annotations

import typer

app = typer.Typer(help="A developer's commands: your budgets, a signed call from the shell.", no_args_is_help=True)


def _register_budgets() -> None:
    from ledger.cli.keys import dev_budgets

    app.command("budgets")(dev_budgets)


_register_budgets()


@app.command("call", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                       "help_option_names": []}, add_help_option=False)
def call(ctx: typer.Context) -> None:
    """A signed chat call with a developer key, streamed; prints its cost, job id and the budget left
    (`sluice dev call --help` lists the options and exit codes)."""
    from ledger.cli.dev_call import main

    raise typer.Exit(main(ctx.args))
