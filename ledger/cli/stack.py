"""`sluice up`, `sluice down`, `sluice status`: run and inspect the local Sluice stack.

The work happens in `ledger.stack` (services, supervisor, status);
this module turns it into commands, human output, JSON and exit codes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from ledger.cli.common import JsonOpt, explain, explained
from ledger.cli.output import console, err_console, fail, print_json

if TYPE_CHECKING:
    from ledger.config import Settings
    from ledger.paths import StatePaths

# One-line messages carry paths and URLs: no markup, no colouring guesses, no wrapping at the terminal width.
PLAIN: dict[str, Any] = {"markup": False, "highlight": False, "soft_wrap": True}

UP_HELP = "\n\n".join(
    (
        "Start the local stack (Anvil chain with zero gas, PostgreSQL, Redis), migrate, deploy the contracts.",
        "All state lives under SLUICE_HOME (default ./.sluice) and survives restarts: chain blocks, logs and "
        "balances, the database, the broker's queues. A service whose external endpoint is set (RPC_URL, "
        "DATABASE_URL, BROKER_URL) is not started, only checked. The chain listens on 127.0.0.1:SLUICE_CHAIN_PORT "
        "(default 8545).",
        "Without --detach the stack runs in the foreground until Ctrl-C (or SIGTERM), then stops cleanly. "
        "With --detach it runs in a background supervisor (log: SLUICE_HOME/stack.log) and the command prints "
        "the deployment and the endpoints as JSON (also written to SLUICE_HOME/stack.json) once everything answers.",
    )
)


def register(app: typer.Typer) -> None:
    """Add `up`, `down` and `status` to the root command."""

    @app.command(help=UP_HELP)
    @explained
    def up(
        detach: bool = typer.Option(
            False, "--detach", "-d", help="run in a background supervisor; print the deployment JSON once ready"
        ),
        timeout: float = typer.Option(
            180.0, "--timeout", min=1.0, help="with --detach: seconds to wait for the stack to be ready"
        ),
    ) -> None:
        if detach:
            _up_detached(timeout)
        else:
            _up_foreground()

    @app.command()
    @explained
    def down(
        timeout: float = typer.Option(60.0, "--timeout", min=1.0, help="seconds to wait for a clean stop"),
    ) -> None:
        """Stop the running stack (detached or foreground): services stop in reverse order and keep their state.

        Exits 0 when nothing was running, too.
        """
        from ledger.stack.errors import show_path
        from ledger.stack.supervisor import stop_detached

        settings = _settings()
        pid = stop_detached(settings, timeout)
        if pid is None:
            console.print(f"No Sluice stack is running for {show_path(settings.state_dir)}.", **PLAIN)
        else:
            console.print(f"Stopped the Sluice stack (pid {pid}).", **PLAIN)

    @app.command()
    def status(as_json: bool = JsonOpt) -> None:
        """Show which services answer, their endpoints, the chain head and the deployed contract addresses.

        Exits 0 when every service answers, 1 otherwise.
        """
        from concurrent.futures import ThreadPoolExecutor

        from ledger.settlement.metrics import settlement_status, status_lines
        from ledger.settlement.settings import SettlementSettings
        from ledger.stack.services import client_settings
        from ledger.stack.status import stack_status

        settings = _settings()
        clients = client_settings(settings)
        with ThreadPoolExecutor(1) as pool:  # the settlement snapshot's queries run while the probes wait
            snapshot = pool.submit(settlement_status, SettlementSettings(**clients.model_dump()))
            report = stack_status(settings)
            database_up = "database" in report.services and report.services["database"].up
            settlement = snapshot.result() if database_up else None
        data = report.to_json()
        data["settlement"] = settlement
        if as_json:
            print_json(data)
        else:
            _print_status(data)
            if settlement is not None:
                console.print("settlement:")
                for line in status_lines(settlement):
                    console.print(f"  {line}", highlight=False)
        if not report.all_up:
            raise typer.Exit(1)


def _settings() -> Settings:
    """The process settings; a malformed variable is a clear error, not a traceback."""
    from pydantic import ValidationError

    from ledger.config import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        fail(f"invalid configuration: {exc}", "fix the SLUICE_* / RPC_URL / DATABASE_URL / BROKER_URL variables")


def _up_foreground() -> None:
    from ledger.errors import LedgerError
    from ledger.stack.errors import StackError
    from ledger.stack.supervisor import serve

    def progress(message: str) -> None:
        err_console.print(message, style="dim", **PLAIN)

    try:
        code = serve(_settings(), on_ready=_print_ready, progress=progress)
    except StackError:
        raise  # `explained` words it, with the log lines behind it
    except LedgerError as exc:
        explanation = explain(exc)
        fail(f"deployment failed: {exc}", explanation.hint if explanation is not None else None)
    if code != 0:
        fail("a service of the stack exited on its own; everything was stopped", "its log is named above")
    console.print("Stopped.", **PLAIN)


def _up_detached(timeout: float) -> None:
    from ledger.paths import StatePaths
    from ledger.stack.errors import StackRunning, show_path
    from ledger.stack.running import running_pid
    from ledger.stack.supervisor import start_detached

    settings = _settings()
    paths = StatePaths(settings.state_dir)
    try:
        record = start_detached(settings, timeout)
    except StackRunning as exc:
        existing = _wait_for_record(paths, exc.pid, timeout)
        err_console.print(f"The Sluice stack is already running (pid {exc.pid}).", **PLAIN)
        print_json(existing)
        return
    print_json(record)
    err_console.print(
        f"Sluice stack running in the background (pid {running_pid(paths)}); "
        f"log {show_path(paths.stack_log)}; `sluice down` stops it.",
        **PLAIN,
    )


def _wait_for_record(paths: StatePaths, pid: int, timeout: float) -> dict[str, Any]:
    """The record of a stack that is running, waiting while it is still starting (another `up` in progress)."""
    import time

    from ledger.stack.errors import show_path
    from ledger.stack.running import read_stack_record, running_pid

    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        record = read_stack_record(paths)
        if record is not None:
            return record
        if running_pid(paths) is None:
            fail(f"the stack (pid {pid}) stopped while starting", f"see {show_path(paths.stack_log)}")
        if time.monotonic() >= deadline:
            fail(f"the stack (pid {pid}) is still starting after {timeout:g} s", "`sluice status` shows its services")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _print_ready(record: dict[str, Any]) -> None:
    from ledger.stack.errors import show_path

    endpoints = record["endpoints"]
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_row("chain", f"{endpoints['rpc']} (chain id {record['chain_id']})")
    table.add_row("database", endpoints["database"])
    table.add_row("broker", endpoints["broker"])
    for name, url in endpoints.items():
        if name not in ("rpc", "database", "broker"):
            table.add_row(name, ", ".join(url) if isinstance(url, list) else url)
        if name == "api" and isinstance(url, str):
            table.add_row("portal", url.rstrip("/") + "/portal/")
    table.add_row("", "")
    for name, address in record["contracts"].items():
        table.add_row(name, address)
    console.print(f"[bold green]Sluice stack ready[/] (state in {escape(show_path(_settings().state_dir))})")
    console.print(table)
    console.print(f"Contracts deployed from block {record['deploy_block']}. Ctrl-C stops everything.")


def _print_processes(processes: dict[str, Any]) -> None:
    """One line per process: the service and its followers, the workers and beat, each node with its queue."""

    def lag(follower: dict[str, Any] | None) -> str:
        if follower is None:
            return "[red]no cursor[/]"
        return (f"block {follower['block']}, {follower['lag_blocks']} behind, "
                f"updated {follower['updated_seconds_ago']} s ago")

    table = Table(box=None, show_header=True, pad_edge=False)
    table.add_column("process")
    table.add_column("state")
    table.add_column("details", overflow="fold")
    api = processes.get("api") or {}
    table.add_row("api", "[green]up[/]" if api.get("up") else "[red]down[/]",
                  f"{api.get('url', '')}, routes to {api.get('nodes_routed')} nodes" if api.get("up") else
                  escape(str(api.get("url", ""))))
    for follower in ("mirror", "indexer"):
        cursor = processes.get(follower)
        table.add_row(follower, "[green]up[/]" if cursor is not None else "[red]?[/]", lag(cursor))
    found = processes.get("workers")
    if found is None:
        table.add_row("workers", "[red]?[/]", "the database could not be asked")
    elif not found:
        table.add_row("workers", "[red]none[/]", "no settlement worker has announced itself")
    for worker in found or []:
        table.add_row("worker", "[green]up[/]" if worker["up"] else "[yellow]stale[/]",
                      f"{escape(worker['name'])}, {worker['concurrency']} processes"
                      + (", runs the beat" if worker["beat"] else "")
                      + ("" if worker["up"] else f", silent for {worker['heartbeat_age_seconds']} s"))
    if found is not None:
        table.add_row("beat", "[green]up[/]" if processes.get("beat") else "[red]none[/]",
                      "cuts batches" if processes.get("beat") else "no worker runs the beat: nothing gets settled")
    nodes = processes.get("nodes")
    for node in nodes or []:
        colour = {"ok": "green", "stale": "yellow"}.get(node["health"], "dim")
        table.add_row("node", f"[{colour}]{node['health']}[/]",
                      f"{node['url']} {node['tier']}/{node['region']}, queue {node['running']} running "
                      f"{node['waiting']} waiting of {node['capacity']}, "
                      f"heartbeat {node['heartbeat_age_seconds']} s ago")
    if nodes == []:
        table.add_row("nodes", "[red]none[/]", "no node has registered with the service")
    console.print(table)


def _print_status(report: dict[str, Any]) -> None:
    state = report["state_dir"]
    if report["running"]:
        console.print(f"Sluice stack [bold green]running[/] (pid {report['pid']}), state in {escape(state)}")
    else:
        console.print(f"Sluice stack [bold]not running[/] for {escape(state)}")
    table = Table(box=None, show_header=True, pad_edge=False)
    table.add_column("service")
    table.add_column("state")
    table.add_column("endpoint", overflow="fold")  # URLs are copied from here: never cut them short
    table.add_column("kind")
    for name, service in report["services"].items():
        state_cell = "[green]up[/]" if service["up"] else "[red]down[/]"
        kind = f"{service['title']}, {'embedded' if service['embedded'] else 'external'}"
        table.add_row(name, state_cell, escape(service["url"]), kind)
    console.print(table)
    if report["chain_head"] is not None:
        paused = report["token"].get("paused")
        token_state = {True: "  token [bold red]PAUSED[/]", False: "  token not paused"}.get(paused, "")
        console.print(f"chain head: block {report['chain_head']}{token_state}")
    _print_processes(report["processes"])
    deployment = report["deployment"]
    if deployment is None:
        console.print("contracts: no deployment recorded for this chain (`sluice up` or `sluice deploy` makes one)")
        return
    console.print(f"contracts on chain {deployment['chain_id']}, deployed from block {deployment['deploy_block']}:")
    for name, address in deployment["contracts"].items():
        console.print(f"  {name:14} {address}", highlight=False)
