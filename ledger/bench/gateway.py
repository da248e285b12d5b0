"""`sluice bench gateway`: what the redemption service adds to a call, measured in one run.

The same load — pre-signed calls, 64 concurrent connections, non-streamed, 16
output tokens, a simulated node with zero latency — goes to the node's engine
directly, to the node agent directly (with pre-signed dispatch tickets) and
through the redemption service (signed calls: verification, hold, dispatch,
metering). Everything runs on this machine, load generator included, on a
throwaway embedded stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from eth_account import Account
from eth_hash.auto import keccak

from ledger.bench.harness import Report, cpu_seconds
from ledger.chain.client import Ledger
from ledger.chain.connection import connect
from ledger.chain.deploy import deploy_all
from ledger.chain.deployment import save_deployment
from ledger.config import Settings
from ledger.keys import embedded_account
from ledger.paths import StatePaths
from ledger.polling import poll_until
from ledger.protocol.eip712 import DispatchTicket, Domains, Redemption, typed_digest
from ledger.protocol.secp256k1 import sign_digest
from ledger.stack.apps import EmbeddedNode, api_service, node_services, register_embedded_nodes
from ledger.stack.probes import free_port
from ledger.stack.services import anvil_binary, anvil_service, postgres_service
from ledger.stack.supervisor import Stack
from ledger.units import ONE_TOKEN

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONCURRENCY = 64
OUTPUT_TOKENS = 16

Call = tuple[str, bytes, dict[str, str]]


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _drive(calls: list[Call], concurrency: int) -> dict[str, Any]:
    """Send every call with `concurrency` workers over keep-alive connections; latencies in ms."""
    latencies: list[float] = []
    failures: dict[int, int] = {}
    queue = iter(calls)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for url, body, headers in queue:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        failures[response.status] = failures.get(response.status, 0) + 1
                        continue
                latencies.append((time.perf_counter() - started) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return {
        "calls": len(calls), "ok": len(latencies), "failures": failures, "seconds": round(elapsed, 3),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(_percentile(latencies, 0.99), 2) if latencies else None,
    }


def _body(i: int) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": f"benchmark call {i}"}],
                       "max_tokens": OUTPUT_TOKENS}).encode()


def signed_calls(api: str, key: bytes, payer: str, domains: Domains, count: int, max_cost: int) -> list[Call]:
    calls = []
    deadline = int(time.time()) + 290
    for i in range(count):
        body = _body(i)
        nonce = int.from_bytes(os.urandom(16), "big")
        message = Redemption(payer, keccak(body), max_cost, nonce, deadline)
        digest = typed_digest(domains.redemption, message.struct_hash())
        headers = {"content-type": "application/json", "Sluice-Payer": payer, "Sluice-Max-Cost": str(max_cost),
                   "Sluice-Nonce": str(nonce), "Sluice-Deadline": str(deadline),
                   "Sluice-Signature": "0x" + sign_digest(key, digest).hex()}
        calls.append((api + "/v1/chat/completions", body, headers))
    return calls


def ticketed_calls(agent: str, node: str, dispatch_key: bytes, payer: str, domains: Domains, count: int,
                   rates: tuple[int, int]) -> list[Call]:
    from inference_node.protocol import TICKET_HEADER, SignedTicket

    calls = []
    for i in range(count):
        ticket = DispatchTicket(os.urandom(32), node, payer, payer, keccak(MODEL.encode()), OUTPUT_TOKENS, rates[0],
                                rates[1], os.urandom(32), int(time.time()) + 600)
        signature = sign_digest(dispatch_key, typed_digest(domains.ticket, ticket.struct_hash()))
        headers = {"content-type": "application/json", TICKET_HEADER: SignedTicket(ticket, signature).encode()}
        calls.append((agent + "/v1/chat/completions", _body(i), headers))
    return calls


def run(calls_per_leg: int = 3000, report: Report = print, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as home_dir:
        home = Path(home_dir)
        paths = StatePaths(home)
        chain_port = free_port()
        stack = Stack([anvil_service(paths, port=chain_port, chain_id=31337, binary=anvil_binary(Settings(home=home))),
                       postgres_service(paths)], lambda m: report(f"  {m}"))
        stack.start()
        try:
            settings = Settings(home=home, rpc_url=f"http://127.0.0.1:{chain_port}", api_port=free_port(),
                                database_url=stack.url("database"), node_base_port=free_port())
            w3 = connect(settings.effective_rpc_url)
            operator = embedded_account(0)
            deployment = deploy_all(settings, w3, operator, embedded_account(1))
            save_deployment(settings.state_dir, deployment)
            node = EmbeddedNode("bench-1", "edge", "bench", 10, (0,))
            register_embedded_nodes(settings, deployment.to_json(), (node,))  # the service trusts registered nodes only
            services = [api_service(settings, deployment.to_json()),
                        *node_services(settings, deployment.to_json(), (node,),
                                       {"ttft_seconds": 0, "per_token_seconds": 0})]
            stack.start_services(services)
            ledger = Ledger(w3, deployment)
            payer = Account.create()
            ledger.set_allowlisted(operator, payer.address, True)
            ledger.issue(operator, payer.address, 10**9 * ONE_TOKEN, "bench", into_escrow=True)
            api = services[0].url or ""
            sim, agent = services[1].url or "", services[2].url or ""
            import httpx

            from redemption.sdk import reader_auth

            poll_until(lambda: httpx.get(api + "/health").json()["nodes"] >= 1, 30, "the node registering")
            poll_until(lambda: httpx.get(api + "/v1/budget", params={"payer": payer.address},
                                                 auth=reader_auth(payer)).json()[
                "escrow_available"] != "0", 30, "the mirror seeing the payer's escrow")
            domains = Domains(deployment.chain_id, deployment.contracts["settlement"])
            rate = ledger.rate(MODEL)
            report(f"signing {3 * calls_per_leg} calls and tickets ...")
            engine_calls = [(sim + "/v1/chat/completions", _body(i), {"content-type": "application/json"})
                            for i in range(calls_per_leg)]
            node_addr = embedded_account(10).address
            agent_calls = ticketed_calls(agent, node_addr, bytes(embedded_account(2).key), payer.address, domains,
                                         calls_per_leg, (rate.input_rate, rate.output_rate))
            service_calls = signed_calls(api, bytes(payer.key), payer.address, domains, calls_per_leg, 10**17)
            warm = signed_calls(api, bytes(payer.key), payer.address, domains, 200, 10**17)
            asyncio.run(_drive(warm, concurrency))  # connections, caches and the JIT-less interpreter warm up
            figures: dict[str, Any] = {"concurrency": concurrency, "output_tokens": OUTPUT_TOKENS,
                                       "calls_per_leg": calls_per_leg}
            launched = {"service": "api", "agent": services[2].name, "engine": services[1].name,
                        "postgres": "database"}
            watched = {role: stack.pid(name) for role, name in launched.items()}
            for leg, calls in (("engine_direct", engine_calls), ("node_agent_direct", agent_calls),
                               ("through_service", service_calls)):
                before = {name: cpu_seconds(pid) for name, pid in watched.items()}
                client_before = time.process_time()
                figures[leg] = asyncio.run(_drive(calls, concurrency))
                f = figures[leg]
                f["cpu_ms_per_call"] = {name: round((cpu_seconds(pid) - before[name]) * 1000 / len(calls), 3)
                                        for name, pid in watched.items()}
                f["cpu_ms_per_call"]["load_generator"] = round(
                    (time.process_time() - client_before) * 1000 / len(calls), 3)
                report(f"{leg:18} {f['calls_per_s']:>8} calls/s   p50 {f['p50_ms']} ms   p99 {f['p99_ms']} ms"
                       f"   failures {f['failures'] or 0}   CPU ms/call {f['cpu_ms_per_call']}")
            svc, node_leg = figures["through_service"], figures["node_agent_direct"]
            figures["added_vs_node_p50_ms"] = round(svc["p50_ms"] - node_leg["p50_ms"], 2)
            figures["added_vs_node_p99_ms"] = round(svc["p99_ms"] - node_leg["p99_ms"], 2)
            metrics = httpx.get(api + "/metrics").text
            figures["service_overhead_histogram"] = [
                line for line in metrics.splitlines() if line.startswith("sluice_gateway_overhead_seconds")]
            report(f"added latency vs the node: p50 {figures['added_vs_node_p50_ms']} ms, "
                   f"p99 {figures['added_vs_node_p99_ms']} ms")
            return figures
        finally:
            stack.stop()
