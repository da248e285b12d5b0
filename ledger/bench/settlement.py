"""Settlement throughput, gas and lag on a throwaway embedded stack with real workers.

N calls across P (payer, spender) pairs (every payer pays for itself and for a developer it
approved) are metered through the real path: the redemption service's `Store` (`reserve_hold`
then `meter_hold`, grouped per round trip under load exactly as the service does), signed
requests and node receipts, the chain mirror as the balance source; several writer processes
keep many calls in flight. Real `sluice worker` processes with beat settle them.

Two modes:
- live: the workers run while the calls are metered, as in production; the lag (metered ->
  confirmed) is meaningful here, and the throughput is bounded by the metering rate.
- drain: all calls are metered first, then the workers start: the settlement capacity.

All timestamps come from PostgreSQL's clock (usage_records.finished_at, batches' confirmed_at).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak

from ledger.bench.harness import Report, cpu_seconds, send_all
from ledger.chain.client import Ledger
from ledger.domain import model_id, usage_cost
from ledger.keys import embedded_account
from ledger.protocol.eip712 import Domains, Redemption, UsageReceipt, typed_digest
from ledger.protocol.secp256k1 import sign_digest
from ledger.units import ONE_TOKEN
from ledger.window import Window

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
NODE_KEY_INDEX = 10
TARGETS = {"settled_calls_per_s": 2_000, "gas_per_settled_call": 500, "lag_p99_over_interval": 2.0}


@dataclass(frozen=True)
class BenchConfig:
    calls: int = 20_000
    pairs: int = 200
    writers: int = 2
    in_flight: int = 64
    workers: int = 1
    concurrency: int = 2
    batch_interval: float = 2.0
    batch_max: int = 50_000
    batch_max_items: int = 400
    block_time: float = 0.0  # seconds between blocks while settling; 0: a block per transaction
    mode: str = "live"  # live, drain or both
    timeout: float = 600.0


# A window that never refuses the bench's calls (settlement runs after all metering).
BENCH_WINDOW = Window(hold_lifetime=3600, receipt_allowance=30, settlement_bound=86_400, mirror_lag_allowance=30)

# --------------------------------------------------------------------------- funding


def fund_pairs(ledger: Ledger, operator: LocalAccount, pairs: int, tokens: int) -> list[tuple[bytes, bytes, bytes]]:
    """`pairs` funded pairs as raw (spender key, spender address, payer address).

    Payer i, issued `tokens` straight into its escrow, pays for itself (pair 2i) and for developer i,
    whom it gave a budget of `tokens` (pair 2i + 1).
    """
    payers = [Account.create() for _ in range((pairs + 1) // 2)]
    developers = [Account.create() for _ in payers]
    token, sale = ledger.token.functions, ledger.sale.functions
    txs: list[dict[str, Any]] = []
    for payer in payers:
        txs.append({"to": ledger.token.address,
                    "data": token.setAllowlisted(payer.address, True)._encode_transaction_data()})
        txs.append({"to": ledger.sale.address, "data": sale.issueToEscrow(
            payer.address, tokens * ONE_TOKEN, b"bench".ljust(32, b"\x00"))._encode_transaction_data()})
    send_all(ledger.sender(operator), txs)
    approvals = []
    settlement = ledger.settlement.functions
    for payer, developer in zip(payers, developers, strict=True):
        tx = {"to": ledger.settlement.address,
              "data": settlement.setBudget(developer.address, tokens * ONE_TOKEN)._encode_transaction_data()}
        sender = ledger.sender(payer)
        approvals.append((sender, tx, *sender.send({**tx, "gas": 100_000})))  # type: ignore[typeddict-item]
    for sender, tx, tx_hash, nonce in approvals:
        sender.wait(tx_hash, nonce, tx)  # type: ignore[arg-type]
    out: list[tuple[bytes, bytes, bytes]] = []
    for payer, developer in zip(payers, developers, strict=True):
        for spender in (payer, developer):
            out.append((bytes(spender.key), bytes.fromhex(spender.address[2:]), bytes.fromhex(payer.address[2:])))
    return out[:pairs]


# --------------------------------------------------------------------------- metering


def _prepare(domains: Domains, rates: tuple[int, int], pairs: list[tuple[bytes, bytes, bytes]], calls: int,
             offset: int) -> list[tuple[Any, ...]]:
    """Signed calls and node receipts, made before the clock starts."""
    from redemption.auth import VerifiedCall

    node_key = bytes(embedded_account(NODE_KEY_INDEX).key)
    node = embedded_account(NODE_KEY_INDEX).address
    prepared = []
    for i in range(calls):
        spender_key, spender_raw, payer_raw = pairs[(offset + i) % len(pairs)]
        payer, spender = "0x" + payer_raw.hex(), "0x" + spender_raw.hex()
        prompt, completion = 50 + secrets.randbelow(400), 1 + secrets.randbelow(300)
        max_cost = usage_cost(prompt, 512, *rates)
        cost = usage_cost(prompt, completion, *rates)
        body = os.urandom(32)
        body_hash = keccak(body)
        nonce, deadline = secrets.randbits(128), int(time.time()) + 3600
        digest = typed_digest(domains.redemption, Redemption(payer, body_hash, max_cost, nonce, deadline).struct_hash())
        call = VerifiedCall(spender, payer, max_cost, nonce, deadline, sign_digest(spender_key, digest), body,
                            body_hash, digest)
        job = os.urandom(32)
        receipt = UsageReceipt(job, payer, spender, model_id(MODEL), prompt, completion, cost, digest)
        receipt_signature = sign_digest(node_key, typed_digest(domains.receipt, receipt.struct_hash()))
        prepared.append((job, call, max_cost, node, prompt, completion, cost, receipt_signature))
    return prepared


async def _meter_async(db_url: str, prepared: list[tuple[Any, ...]], in_flight: int, ready: Any, start: Any) -> None:
    """Meter through the service's own Store: reserve_hold, then meter_hold, grouped per round trip under load."""
    import asyncio

    from psycopg_pool import AsyncConnectionPool

    from redemption.store import Store

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(db_url, min_size=2, max_size=4, open=False,
                                                         kwargs={"autocommit": True})
    await pool.open(wait=True, timeout=30)
    try:
        store = Store(pool)
        ready.release()
        await asyncio.to_thread(start.wait)
        calls = iter(prepared)

        async def lane() -> None:
            for job, call, max_cost, node, prompt, completion, cost, receipt_signature in calls:
                outcome = await store.reserve_hold(job, call, max_cost, MODEL, BENCH_WINDOW, None, 0, 60)
                if outcome != "ok":
                    raise RuntimeError(f"hold refused: {outcome}")
                await store.meter_hold(job, call.payer, call.spender, node, prompt, completion, cost,
                                       receipt_signature, datetime.now(UTC))

        await asyncio.gather(*(lane() for _ in range(in_flight)))
    finally:
        await pool.close()


def _writer(db_url: str, domains: Domains, rates: tuple[int, int], pairs: list[tuple[bytes, bytes, bytes]],
            calls: int, offset: int, in_flight: int, ready: Any, start: Any, errors: Any) -> None:
    """One writer process: sign its calls, wait for the start, then meter them `in_flight` at a time."""
    import asyncio

    try:
        prepared = _prepare(domains, rates, pairs, calls, offset)
        asyncio.run(_meter_async(db_url, prepared, in_flight, ready, start))
    except BaseException as exc:
        errors.put(repr(exc))
        ready.release()
        raise


def meter_calls(db_url: str, domains: Domains, rates: tuple[int, int], pairs: list[tuple[bytes, bytes, bytes]],
                config: BenchConfig) -> float:
    """Meter config.calls calls from config.writers processes at full speed; returns the seconds it took."""
    calls, writers, in_flight = config.calls, config.writers, config.in_flight
    ctx = multiprocessing.get_context("fork")
    ready, start, errors = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    share = [calls // writers + (1 if k < calls % writers else 0) for k in range(writers)]
    procs = [ctx.Process(target=_writer, args=(db_url, domains, rates, pairs, share[k], sum(share[:k]), in_flight,
                                               ready, start, errors), daemon=True)
             for k in range(writers)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    began = time.monotonic()
    start.set()
    for p in procs:
        p.join()
    took = time.monotonic() - began
    if not errors.empty() or any(p.exitcode for p in procs):
        raise RuntimeError(f"a writer failed: {errors.get() if not errors.empty() else 'exit code'}")
    return took


# --------------------------------------------------------------------------- workers and figures


@contextlib.contextmanager
def running_workers(env: dict[str, str], config: BenchConfig, log_dir: Path) -> Iterator[Callable[[], float]]:
    """`sluice worker` processes (the first with beat); yields a function giving their CPU seconds so far."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for k in range(config.workers):
            log = (log_dir / f"worker-{k}.log").open("ab")
            logs.append(log)
            args = [sys.executable, "-m", "ledger.cli.worker", "--concurrency", str(config.concurrency),
                    "--loglevel", "warning"]
            if k == 0:
                args.append("--beat")
            procs.append(subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        yield lambda: sum(cpu_seconds(p.pid) for p in procs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()


FIGURES_SQL = """
WITH phase AS (
    SELECT u.job_id, u.finished_at, b.cut_at, b.confirmed_at, b.batch_id
    FROM usage_records u JOIN settlement_batches b ON b.batch_id = u.batch_id
    WHERE u.finished_at >= %(since)s
)
SELECT count(*), min(finished_at), max(finished_at), max(confirmed_at),
       (SELECT min(cut_at) FROM settlement_batches WHERE batch_id IN (SELECT batch_id FROM phase)),
       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM confirmed_at - finished_at)),
       (SELECT count(*) FROM settlement_batches WHERE batch_id IN (SELECT batch_id FROM phase)),
       (SELECT sum(item_count) FROM settlement_batches WHERE batch_id IN (SELECT batch_id FROM phase)),
       (SELECT sum(gas_used) FROM settlement_batches WHERE batch_id IN (SELECT batch_id FROM phase)),
       (SELECT count(*) FROM settlement_attempts WHERE action = 'failed' AND at >= %(since)s),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM cut_at - finished_at)),
       (SELECT avg(extract(epoch FROM confirmed_at - cut_at)) FROM settlement_batches
        WHERE batch_id IN (SELECT batch_id FROM phase))
FROM phase
"""


def figures(db_url: str, since: datetime, metering_s: float, config: BenchConfig, mode: str) -> dict[str, Any]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(FIGURES_SQL, {"since": since}).fetchone()
    assert row is not None
    calls, first, _last_metered, last_confirmed, first_cut, lag, batches, items, gas, failures, waited, confirming = row
    # live: from the first metered call; drain: from the first cut (the workers' start-up is not settlement).
    start = first if mode == "live" else first_cut
    total_s = (last_confirmed - start).total_seconds()
    p50, p99 = float(lag[0]), float(lag[1])
    out = {
        "mode": mode,
        "calls": int(calls),
        "pairs": config.pairs,
        "batch_interval_s": config.batch_interval,
        "batch_max": config.batch_max,
        "batch_max_items": config.batch_max_items,
        "block_time_s": config.block_time,
        "workers": config.workers,
        "concurrency": config.concurrency,
        "metering_s": round(metering_s, 2),
        "metered_calls_per_s": round(int(calls) / metering_s, 1),
        "time_until_all_confirmed_s": round(total_s, 2),
        "settled_calls_per_s": round(int(calls) / total_s, 1),
        "batches": int(batches),
        "records_per_batch": round(int(calls) / int(batches), 1),
        "items_per_batch": round(int(items) / int(batches), 1),
        "gas_total": int(gas),
        "gas_per_item": round(int(gas) / int(items)),
        "gas_per_settled_call": round(int(gas) / int(calls)),
        "lag_p50_s": round(p50, 3),
        "lag_p99_s": round(p99, 3),
        "wait_for_cut_p50_s": round(float(waited), 3),
        "cut_to_confirmed_avg_s": round(float(confirming), 3),
        "failed_attempts": int(failures),
    }
    out["targets"] = {
        "settled_calls_per_s": out["settled_calls_per_s"] >= TARGETS["settled_calls_per_s"],
        "gas_per_settled_call": out["gas_per_settled_call"] <= TARGETS["gas_per_settled_call"],
        "lag_p99": p99 <= TARGETS["lag_p99_over_interval"] * config.batch_interval,
    }
    return out


def _now(db_url: str) -> datetime:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def run(config: BenchConfig, report: Report = print) -> dict[str, Any]:
    """Start a throwaway stack, fund the pairs, meter and settle in the configured mode(s); returns the figures."""
    import tempfile

    from ledger.chain.connection import connect
    from ledger.chain.deploy import deploy_all
    from ledger.chain.deployment import save_deployment
    from ledger.config import Settings
    from ledger.followers.mirror import ChainMirror
    from ledger.settlement.store import release_settled
    from ledger.stack.probes import free_port
    from ledger.stack.services import client_environment, default_services
    from ledger.stack.supervisor import Stack

    modes = ("live", "drain") if config.mode == "both" else (config.mode,)
    results: dict[str, Any] = {"runs": []}
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as home:
        settings = Settings(home=Path(home), chain_port=free_port())
        stack = Stack(default_services(settings), lambda m: report(f"  {m}"))
        stack.start()
        stop = threading.Event()
        try:
            clients = stack.client_settings(settings)
            db_url = clients.database_url
            assert db_url is not None
            w3 = connect(settings.effective_rpc_url)
            operator = embedded_account(0)
            deployment = deploy_all(settings, w3, operator, embedded_account(1))
            save_deployment(settings.state_dir, deployment)
            ledger = Ledger(w3, deployment, timeout=120)
            report(f"funding {config.pairs} pairs")
            pairs = fund_pairs(ledger, operator, config.pairs, tokens=1_000)
            mirror = ChainMirror(w3, ledger, db_url)
            mirror.sync_once()
            # The service's job while it runs: follow the chain and release what the mirror has seen.
            mirror_thread = mirror.spawn(stop, interval=0.5)
            rate = ledger.rate(MODEL)
            rates = (int(rate.input_rate), int(rate.output_rate))
            domains = Domains(deployment.chain_id, deployment.contracts["settlement"])
            env = {
                **client_environment(settings),
                "SLUICE_BATCH_INTERVAL": str(config.batch_interval),
                "SLUICE_BATCH_MAX": str(config.batch_max),
                "SLUICE_BATCH_MAX_ITEMS": str(config.batch_max_items),
                "SLUICE_WORKER_METRICS_PORT": "0",
            }

            def release_loop() -> None:
                with psycopg.connect(db_url, autocommit=True) as conn:
                    while not stop.wait(1.0):
                        release_settled(conn)

            releaser = threading.Thread(target=release_loop, daemon=True)
            releaser.start()
            if config.block_time:
                # Funding ran on instant blocks; settlement runs at the cadence of a permissioned chain.
                w3.provider.make_request("evm_setIntervalMining", [config.block_time])  # type: ignore[arg-type]
            for mode in modes:
                since = _now(db_url)
                report(f"{mode}: metering {config.calls:,} calls from {config.writers} writers"
                       + (" while the workers settle" if mode == "live" else ", then settling the backlog"))
                if mode == "live":
                    with running_workers(env, config, Path(home)) as cpu:
                        took = meter_calls(db_url, domains, rates, pairs, config)
                        report(f"  metered in {took:.1f} s ({config.calls / took:,.0f} calls/s)")
                        wait_settled_since(db_url, since, config.calls, config.timeout, report)
                        worker_cpu = cpu()
                else:
                    took = meter_calls(db_url, domains, rates, pairs, config)
                    report(f"  metered in {took:.1f} s ({config.calls / took:,.0f} calls/s)")
                    with running_workers(env, config, Path(home)) as cpu:
                        wait_settled_since(db_url, since, config.calls, config.timeout, report)
                        worker_cpu = cpu()
                run_figures = figures(db_url, since, took, config, mode)
                run_figures["worker_cpu_s"] = round(worker_cpu, 2)
                run_figures["worker_cpu_ms_per_call"] = round(1000 * worker_cpu / config.calls, 3)
                run_figures["load_average_1m"] = round(os.getloadavg()[0], 2)
                _print(run_figures, report)
                results["runs"].append(run_figures)
            stop.set()
            mirror_thread.join(10)
            releaser.join(5)
        finally:
            stop.set()
            stack.stop()
    return results


def wait_settled_since(db_url: str, since: datetime, expected: int, timeout: float, report: Report) -> None:
    deadline = time.monotonic() + timeout
    last_report = 0.0
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status IN ('settled', 'released')), count(*) FROM usage_records"
                " WHERE finished_at >= %s", (since,)).fetchone()
            settled, metered = (int(row[0]), int(row[1])) if row else (0, 0)
            if settled >= expected:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {settled} of {expected} calls settled after {timeout:.0f} s")
            if time.monotonic() - last_report > 5:
                report(f"  {metered:,} metered, {settled:,} settled")
                last_report = time.monotonic()
            time.sleep(0.05)


def _print(f: dict[str, Any], report: Report) -> None:
    ok = {True: "ok", False: "MISSED"}
    blocks = f"{f['block_time_s']:g} s blocks" if f["block_time_s"] else "instant blocks"
    report(f"{f['mode']}: {f['calls']:,} calls over {f['pairs']} pairs, interval {f['batch_interval_s']} s,"
           f" batch max {f['batch_max_items']:,} items / {f['batch_max']:,} records, {blocks}")
    report(f"  metering            {f['metered_calls_per_s']:>10,.0f} calls/s")
    report(f"  all confirmed after {f['time_until_all_confirmed_s']:>10.2f} s")
    report(f"  settled calls/s     {f['settled_calls_per_s']:>10,.0f}   target >= 2,000: "
           f"{ok[f['targets']['settled_calls_per_s']]}")
    report(f"  gas per settled call{f['gas_per_settled_call']:>10,}   target <= 500: "
           f"{ok[f['targets']['gas_per_settled_call']]}")
    report(f"  lag p50 / p99       {f['lag_p50_s']:>6.2f} / {f['lag_p99_s']:.2f} s   target p99 <= "
           f"{2 * f['batch_interval_s']:.1f} s: {ok[f['targets']['lag_p99']]}")
    report(f"    waiting for a cut p50 {f['wait_for_cut_p50_s']:.2f} s; cut to confirmed"
           f" {f['cut_to_confirmed_avg_s']:.2f} s per batch on average")
    report(f"  {f['batches']} batches, {f['records_per_batch']:,.0f} calls and {f['items_per_batch']:.0f} items"
           f" each, {f['gas_per_item']:,} gas per item, {f['failed_attempts']} failed attempts")
    report(f"  worker CPU {f['worker_cpu_s']:.1f} s ({f['worker_cpu_ms_per_call']:.2f} ms per call, start-up"
           f" included); machine load average {f['load_average_1m']}")
