"""`sluice worker`: run a settlement worker (optionally with the beat that cuts batches).

Runs the Celery app of `ledger.settlement.celery_app` against BROKER_URL (Redis, or RabbitMQ with an
amqp:// URL; the embedded Redis of the state dir by default) and serves the settlement
metrics for Prometheus on 127.0.0.1:SLUICE_WORKER_METRICS_PORT (default 9808; 0 serves none; a port
that is taken stops the worker with exit code 2 and the variable to set). Also runnable as
`python -m ledger.cli.worker` (the embedded stack starts it that way).
"""

from __future__ import annotations

import os
import sys

import typer

POOLS = ("prefork", "threads", "solo")


def run_worker(*, beat: bool, concurrency: int, pool: str, loglevel: str) -> None:
    """Serve metrics, then run the Celery worker in this process until SIGTERM/SIGINT (warm shutdown)."""
    import logging

    from ledger.settlement.metrics import serve_metrics
    from ledger.settlement.settings import get_settlement_settings

    if pool not in POOLS:
        raise typer.BadParameter(f"--pool must be one of {', '.join(POOLS)}")
    settings = get_settlement_settings()
    if settings.worker_metrics_port:
        try:
            serve_metrics(settings, settings.worker_metrics_port)
        except OSError as exc:  # taken (another worker on this host?): say so and stop, never run unobserved
            message = (f"settlement metrics cannot be served on 127.0.0.1:{settings.worker_metrics_port} ({exc}); "
                       "set SLUICE_WORKER_METRICS_PORT to a free port, or to 0 to serve none")
            logging.getLogger(__name__).error(message)
            sys.stderr.write(f"error: {message}\n")
            raise SystemExit(2) from None
    from ledger.settlement.celery_app import app

    argv = [
        "worker",
        f"--loglevel={loglevel}",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        # `sluice status` tells the beat's worker by this name (ledger.stack.operations.BEAT_MARK).
        f"--hostname=sluice-{'beat-' if beat else ''}{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        argv.append("--beat")
    app.worker_main(argv)


def register(app: typer.Typer) -> None:
    """Add `worker` to the root command."""

    @app.command()
    def worker(
        beat: bool = typer.Option(False, "--beat", "-B", help="also run the beat that cuts batches every "
                                  "SLUICE_BATCH_INTERVAL (run it in any number of workers: cuts never overlap)"),
        concurrency: int = typer.Option(2, "--concurrency", "-c", min=1, help="worker processes (or threads)"),
        pool: str = typer.Option("prefork", "--pool", help="prefork, threads or solo"),
        loglevel: str = typer.Option("info", "--loglevel", "-l", help="debug, info, warning or error"),
    ) -> None:
        """Run a settlement worker against BROKER_URL until Ctrl-C/SIGTERM (finishes running tasks first).

        Batches are cut every SLUICE_BATCH_INTERVAL seconds (default 2) or as soon as
        SLUICE_BATCH_MAX_ITEMS (payer, spender) pairs (default 400) wait, submitted from the settler
        key and confirmed after SLUICE_CONFIRMATIONS blocks. Metrics: http://127.0.0.1:SLUICE_WORKER_METRICS_PORT/metrics.
        """
        run_worker(beat=beat, concurrency=concurrency, pool=pool, loglevel=loglevel)


def main() -> None:
    cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(cli)
    cli()


if __name__ == "__main__":
    main()
