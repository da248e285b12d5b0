"""The `sluice` entry point: runs the CLI, or says which extra to install when the server side is missing.

A developer who installed only the light client (`pip install sluice`) has `redemption.sdk` but
none of the CLI's libraries (typer, web3, psycopg, ...); every command then names the extra
instead of printing a traceback (exit code 2). `sluice dev call` and `sluice dev budgets` need only the client: it runs
without the server's CLI at all (LIGHT_COMMANDS), which also keeps its start-up short.
"""

from __future__ import annotations

import sys

SERVER_EXTRA_HINT = (
    "sluice: this command needs the server side of Sluice, which is not installed (missing module {name!r}).\n"
    "Install it with:  pip install 'sluice[server]'\n"
    "(the base install is the light client: `from redemption.sdk import SluiceAuth`, `sluice dev call`,\n"
    "`sluice dev budgets`)"
)
# Top-level modules of the client's own dependencies: their absence is a broken install, not a missing extra.
CLIENT_MODULES = frozenset({"httpx", "httpcore", "h11", "anyio", "idna", "certifi", "coincurve", "Crypto"})


def _missing_extra(exc: ModuleNotFoundError) -> bool:
    name = (exc.name or "").split(".")[0]
    return bool(name) and name not in CLIENT_MODULES and name not in {"ledger", "redemption", "inference_node"}


# Commands that run on the light client alone, before (and without) the server's CLI: argv prefix -> module.
LIGHT_COMMANDS = {("dev", "call"): "ledger.cli.dev_call", ("dev", "budgets"): "ledger.cli.dev_budgets"}
MISSING_EXTRA_EXIT = 2


def main() -> None:
    argv = sys.argv[1:]
    for prefix, module in LIGHT_COMMANDS.items():
        if tuple(argv[: len(prefix)]) == prefix:
            import importlib

            sys.exit(importlib.import_module(module).main(argv[len(prefix):]))
    try:
        from ledger.cli.app import app

        app()
    except ModuleNotFoundError as exc:
        if not _missing_extra(exc):
            raise
        print(SERVER_EXTRA_HINT.format(name=exc.name), file=sys.stderr)
        sys.exit(MISSING_EXTRA_EXIT)


if __name__ == "__main__":
    main()
