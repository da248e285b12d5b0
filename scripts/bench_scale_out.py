"""CPU per paid call with one service process and with three on one PostgreSQL (issue 14, goal 3).

One throwaway stack (Anvil, PostgreSQL, one zero-latency simulated node): the same pre-signed,
non-streamed calls (16 output tokens, 64 connections) go first to one service process, then, with
two more processes started on the same database and chain, round-robin to all three. Prints calls/s,
p50 and CPU ms per call of the service processes (summed), PostgreSQL and the node agent, and writes
the figures as JSON with --json. On two cores throughput cannot grow with processes; the point is
that CPU per call stays flat.

    .venv/bin/python scripts/bench_scale_out.py --calls 3000 --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account

from ledger.bench.gateway import CONCURRENCY, MODEL, _drive, signed_calls
from ledger.bench.harness import cpu_seconds
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per leg")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluice-scale-") as home_dir:
        home = Path(home_dir)
        paths = StatePaths(home)
        chain_port = free_port()
        stack = Stack([anvil_service(paths, port=chain_port, chain_id=31337, binary=anvil_binary(Settings(home=home))),
                       postgres_service(paths)], lambda m: print(f"  {m}"))
        stack.start()
        try:
            settings = Settings(home=home, rpc_url=f"http://127.0.0.1:{chain_port}", api_port=free_port(),
                                database_url=stack.url("database"), node_base_port=free_port())
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
            payer = Account.create()
            ledger.set_allowlisted(operator, payer.address, True)
            ledger.issue(operator, payer.address, 10**9 * ONE_TOKEN, "bench", into_escrow=True)
            domains = Domains(deployment.chain_id, deployment.contracts["settlement"])
            services = [first]

            def ready(api: str) -> None:
                poll_until(lambda: httpx.get(api + "/health").json()["nodes"] >= 1, 30, "the node registering")
                poll_until(lambda: httpx.get(api + "/v1/budget", params={"payer": payer.address},
                                             auth=reader_auth(payer)).json()["escrow_available"] != "0", 30,
                           "the mirror seeing the payer's escrow")

            ready(first.url or "")
            figures: dict[str, Any] = {"calls_per_leg": args.calls, "concurrency": args.concurrency, "model": MODEL}
            for leg, count in (("one_process", 1), ("three_processes", 3)):
                while len(services) < count:
                    extra = api_service(settings.model_copy(update={"api_port": free_port()}), record)
                    extra = dataclasses.replace(extra, name=f"{extra.name}-{len(services)}")
                    stack.start_services([extra])
                    ready(extra.url or "")
                    services.append(extra)
                apis = [s.url or "" for s in services]
                per_api = [signed_calls(api, bytes(payer.key), payer.address, domains, -(-args.calls // count), 10**17)
                           for api in apis]
                calls = [c for group in zip(*per_api, strict=True) for c in group][: args.calls]
                warm = [c for group in zip(*(signed_calls(api, bytes(payer.key), payer.address, domains, 100, 10**17)
                                             for api in apis), strict=True) for c in group]
                asyncio.run(_drive(warm, args.concurrency))
                watched = {**{f"service-{i}": stack.pid(s.name) for i, s in enumerate(services)},
                           "postgres": stack.pid("database"), "agent": stack.pid(nodes[1].name)}
                before = {name: cpu_seconds(pid) for name, pid in watched.items()}
                f = asyncio.run(_drive(calls, args.concurrency))
                spent = {name: (cpu_seconds(pid) - before[name]) * 1000 / len(calls) for name, pid in watched.items()}
                services_ms = sum(v for k, v in spent.items() if k.startswith("service-"))
                f["cpu_ms_per_call"] = {"services": round(services_ms, 3), "postgres": round(spent["postgres"], 3),
                                        "gateway_host": round(services_ms + spent["postgres"], 3),
                                        "agent": round(spent["agent"], 3)}
                f["processes"] = count
                figures[leg] = f
                print(f"{leg:16} {f['calls_per_s']:>8} calls/s   p50 {f['p50_ms']} ms   failures "
                      f"{f['failures'] or 0}   CPU ms/call {f['cpu_ms_per_call']}")
        finally:
            stack.stop()
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
