"""CPU per paid call with one, two and three service processes on one PostgreSQL.

One throwaway stack (Anvil, PostgreSQL, one zero-latency simulated node): the same pre-signed,
non-streamed calls (16 output tokens, 64 connections) go to one service process, then, with more
processes started on the same database and chain, round-robin to all of them. The calls are spread
over many payers and developer keys (`--payers`, `--spenders` each), as real traffic is, rather than
queueing every hold on one payer's row lock (`--payers 1 --spenders 0` does that). Before each
leg the processes are watched idle for `--idle-seconds`: their idle CPU is reported on its own
(ms per second per process) and the per-call figures are given both gross and net of it. Prints
calls/s, p50, CPU ms per call of the service processes (summed), PostgreSQL and the node agent,
PostgreSQL write transactions and connections, context switches per call, and the load average;
writes the figures as JSON with --json. On two cores throughput cannot grow with processes; the point
is that CPU per call stays flat.

    .venv/bin/python scripts/bench_scale_out.py --calls 3000 --json /tmp/scale.json
    .venv/bin/python scripts/bench_scale_out.py --payers 1 --spenders 0   # every call on one self-paying payer
    .venv/bin/python scripts/bench_scale_out.py --per-process --concurrency 21   # 21, 42, 63 connections
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.bench.gateway import CONCURRENCY, MODEL, Call, _drive, signed_calls
from ledger.bench.harness import cpu_seconds, proc_stats
from ledger.chain.client import Ledger
from ledger.chain.connection import connect
from ledger.chain.deploy import deploy_all
from ledger.chain.deployment import save_deployment
from ledger.config import Settings
from ledger.keys import embedded_account
from ledger.paths import StatePaths
from ledger.polling import poll_until
from ledger.protocol.eip712 import Domains
from ledger.stack.apps import EmbeddedNode, api_service, node_services, register_embedded_nodes
from ledger.stack.probes import free_port
from ledger.stack.services import anvil_binary, anvil_service, postgres_service
from ledger.stack.supervisor import Stack
from ledger.units import ONE_TOKEN
from redemption.sdk import reader_auth


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def spread(apis: list[str], keys: list[tuple[LocalAccount, LocalAccount]], domains: Domains, count: int) -> list[Call]:
    """`count` calls round-robin over `apis`, each key (payer, signer) taking its turn."""
    per_key = -(-count // len(keys))
    by_key = [signed_calls("", bytes(signer.key), payer.address, domains, per_key, 10**17) for payer, signer in keys]
    calls = [c for group in zip(*by_key, strict=True) for c in group][:count]
    return [(apis[i % len(apis)] + url, body, headers) for i, (url, body, headers) in enumerate(calls)]


def system_seconds(pid: int) -> float:
    """System (kernel) CPU of process `pid` and its children alive now, from /proc: PostgreSQL's WAL flushes."""
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[12]) / ticks for process, fields in proc_stats() if pid in (process, int(fields[1])))


def context_switches(pid: int) -> int:
    """Context switches (voluntary and not) of process `pid` and its children alive now, from /proc."""
    total = 0
    for process, fields in proc_stats():
        if pid not in (process, int(fields[1])):
            continue
        try:
            status = Path(f"/proc/{process}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def database_figures(url: str) -> tuple[int, int]:
    """(write transactions begun in the cluster so far, client connections now). Transaction ids count
    at once, where pg_stat_database's commit counts reach the statistics only seconds later."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_xact_id()::text::bigint,"
                           " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per leg")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--per-process", action="store_true",
                        help="the concurrency is per service process: N processes get N x --concurrency "
                             "connections, so each process carries the same load as the one-process leg")
    parser.add_argument("--processes", default="1,2,3", help="service processes per leg, comma separated, rising")
    parser.add_argument("--payers", type=int, default=24, help="payers the calls are spread over")
    parser.add_argument("--spenders", type=int, default=2,
                        help="developer keys per payer, each with a budget (0: each payer signs its own calls)")
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="idle watch before each leg")
    parser.add_argument("--postgres-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a PostgreSQL setting for the run (ALTER SYSTEM, reloaded), e.g. commit_delay=200")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    legs = [int(n) for n in args.processes.split(",")]
    print(f"load average at start: {load_average()}")
    with tempfile.TemporaryDirectory(prefix="sluice-scale-") as home_dir:
        home = Path(home_dir)
        paths = StatePaths(home)
        chain_port = free_port()
        stack = Stack([anvil_service(paths, port=chain_port, chain_id=31337, binary=anvil_binary(Settings(home=home))),
                       postgres_service(paths)], lambda m: print(f"  {m}"))
        stack.start()
        try:
            database_url = stack.url("database")
            assert database_url is not None
            with psycopg.connect(database_url, autocommit=True) as conn:
                for setting in args.postgres_setting:
                    name, value = setting.split("=", 1)
                    conn.execute(f"ALTER SYSTEM SET {name} = '{value}'".encode())
                conn.execute("SELECT pg_reload_conf()")
            settings = Settings(home=home, rpc_url=f"http://127.0.0.1:{chain_port}", api_port=free_port(),
                                database_url=database_url, node_base_port=free_port())
            w3 = connect(settings.effective_rpc_url)
            operator = embedded_account(0)
            deployment = deploy_all(settings, w3, operator, embedded_account(1))
            save_deployment(settings.state_dir, deployment)
            record = deployment.to_json()
            node = EmbeddedNode("bench-1", "edge", "bench", 10, (0,))
            register_embedded_nodes(settings, record, (node,))
            first = api_service(settings, record)
            nodes = node_services(settings, record, (node,), {"ttft_seconds": 0, "per_token_seconds": 0})
            stack.start_services([first, *nodes])
            ledger = Ledger(w3, deployment)
            keys: list[tuple[LocalAccount, LocalAccount]] = []
            for _ in range(args.payers):
                payer: LocalAccount = Account.create()
                ledger.set_allowlisted(operator, payer.address, True)
                ledger.issue(operator, payer.address, 10**9 * ONE_TOKEN, "bench", into_escrow=True)
                spenders: list[LocalAccount] = [Account.create() for _ in range(args.spenders)] or [payer]
                for spender in spenders:
                    if spender is not payer:
                        ledger.set_budget(payer, spender.address, 10**9 * ONE_TOKEN)
                    keys.append((payer, spender))
            domains = Domains(deployment.chain_id, deployment.contracts["settlement"])
            last_payer = keys[-1][0]
            services = [first]

            def ready(api: str) -> None:
                poll_until(lambda: httpx.get(api + "/health").json()["nodes"] >= 1, 30, "the node registering")
                poll_until(lambda: httpx.get(api + "/v1/budget", params={"payer": last_payer.address},
                                             auth=reader_auth(last_payer)).json()["escrow_available"] != "0", 30,
                           "the mirror seeing the payers' escrow")

            ready(first.url or "")
            figures: dict[str, Any] = {"calls_per_leg": args.calls, "concurrency": args.concurrency,
                                       "per_process": args.per_process, "model": MODEL,
                                       "payers": args.payers, "keys": len(keys), "idle_seconds": args.idle_seconds,
                                       "load_average_at_start": load_average(),
                                       "postgres_settings": args.postgres_setting, "legs": {}}
            for count in legs:
                while len(services) < count:
                    extra = api_service(settings.model_copy(update={"api_port": free_port()}), record)
                    extra = dataclasses.replace(extra, name=f"{extra.name}-{len(services)}")
                    stack.start_services([extra])
                    ready(extra.url or "")
                    services.append(extra)
                apis = [s.url or "" for s in services]
                calls = spread(apis, keys, domains, args.calls)
                concurrency = args.concurrency * count if args.per_process else args.concurrency
                asyncio.run(_drive(spread(apis, keys, domains, 100 * count), concurrency))  # warm every process
                watched = {**{f"service-{i}": stack.pid(s.name) for i, s in enumerate(services)},
                           "postgres": stack.pid("database"), "agent": stack.pid(nodes[1].name)}
                # Idle: what the processes spend with no traffic (followers, housekeeping, heartbeats).
                time.sleep(1.0)
                before = {name: cpu_seconds(pid) for name, pid in watched.items()}
                idle_began = time.perf_counter()
                time.sleep(args.idle_seconds)
                idle_for = time.perf_counter() - idle_began
                idle = {name: (cpu_seconds(pid) - before[name]) * 1000 / idle_for for name, pid in watched.items()}
                commits_before, _ = database_figures(database_url)
                pg_system_before = system_seconds(stack.pid("database"))
                switches_before = {name: context_switches(pid) for name, pid in watched.items()}
                before = {name: cpu_seconds(pid) for name, pid in watched.items()}
                f = asyncio.run(_drive(calls, concurrency))
                spent = {name: (cpu_seconds(pid) - before[name]) * 1000 for name, pid in watched.items()}
                pg_system = (system_seconds(stack.pid("database")) - pg_system_before) * 1000
                switches = {name: context_switches(pid) - switches_before[name] for name, pid in watched.items()}
                commits_after, connections = database_figures(database_url)
                ok = f["ok"] or 1
                seconds = f["seconds"]

                def per_call(names: list[str], net: bool = False, seconds: float = seconds, ok: int = ok,
                             spent: dict[str, float] = spent, idle: dict[str, float] = idle) -> float:
                    total = sum(spent[n] - (idle[n] * seconds if net else 0.0) for n in names)
                    return round(total / ok, 3)

                service_names = [n for n in watched if n.startswith("service-")]
                f["cpu_ms_per_call"] = {
                    "services": per_call(service_names), "postgres": per_call(["postgres"]),
                    "gateway_host": per_call([*service_names, "postgres"]), "agent": per_call(["agent"]),
                }
                f["cpu_ms_per_call_net_of_idle"] = {
                    "services": per_call(service_names, True), "postgres": per_call(["postgres"], True),
                    "gateway_host": per_call([*service_names, "postgres"], True),
                }
                f["idle_cpu_ms_per_s"] = {
                    "per_service_process": [round(idle[n], 1) for n in service_names],
                    "postgres": round(idle["postgres"], 1), "agent": round(idle["agent"], 1),
                }
                f["postgres_transactions_per_call"] = round((commits_after - commits_before) / ok, 3)
                f["postgres_system_cpu_ms_per_call"] = round(pg_system / ok, 3)
                f["postgres_connections"] = connections
                f["context_switches_per_call"] = {
                    "services": round(sum(switches[n] for n in watched if n.startswith("service-")) / ok, 2),
                    "postgres": round(switches["postgres"] / ok, 2), "agent": round(switches["agent"] / ok, 2)}
                f["processes"] = count
                f["load_average"] = load_average()
                f["concurrency"] = concurrency
                figures["legs"][str(count)] = f
                print(f"{count} process(es), c={concurrency}: {f['calls_per_s']:>7} calls/s  p50 {f['p50_ms']} ms  "
                      f"failures {f['failures'] or 0}  load {f['load_average']}\n"
                      f"    CPU ms/call {f['cpu_ms_per_call']}\n"
                      f"    net of idle {f['cpu_ms_per_call_net_of_idle']}\n"
                      f"    idle ms/s {f['idle_cpu_ms_per_s']}  PostgreSQL transactions/call "
                      f"{f['postgres_transactions_per_call']}  PostgreSQL system CPU ms/call "
                      f"{f['postgres_system_cpu_ms_per_call']}  connections {connections}\n"
                      f"    context switches/call {f['context_switches_per_call']}")
        finally:
            stack.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
