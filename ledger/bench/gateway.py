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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
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


def signed_calls(api: str, key: bytes, payer: str, domains: Domains, count: int, max_cost: int,
                 body: bytes | None = None) -> list[Call]:
    """`count` calls signed by `key` for `payer`, each with its own nonce (of `body`, else a numbered one)."""
    calls = []
    deadline = int(time.time()) + 290
    for i in range(count):
        body_i = _body(i) if body is None else body
        nonce = int.from_bytes(os.urandom(16), "big")
        message = Redemption(payer, keccak(body_i), max_cost, nonce, deadline)
        digest = typed_digest(domains.redemption, message.struct_hash())
        headers = {"content-type": "application/json", "Sluice-Payer": payer, "Sluice-Max-Cost": str(max_cost),
                   "Sluice-Nonce": str(nonce), "Sluice-Deadline": str(deadline),
                   "Sluice-Signature": "0x" + sign_digest(key, digest).hex()}
        calls.append((api + "/v1/chat/completions", body_i, headers))
    return calls


def ticketed_calls(agent: str, node: str, dispatch_key: bytes, payer: str, domains: Domains, count: int,
                   rates: tuple[int, int], body: bytes | None = None) -> list[Call]:
    """`count` calls straight to a node agent, each with its own dispatch ticket."""
    from inference_node.protocol import TICKET_HEADER, SignedTicket

    calls = []
    for i in range(count):
        ticket = DispatchTicket(os.urandom(32), node, payer, payer, keccak(MODEL.encode()), OUTPUT_TOKENS, rates[0],
                                rates[1], os.urandom(32), int(time.time()) + 600)
        signature = sign_digest(dispatch_key, typed_digest(domains.ticket, ticket.struct_hash()))
        headers = {"content-type": "application/json", TICKET_HEADER: SignedTicket(ticket, signature).encode()}
        calls.append((agent + "/v1/chat/completions", _body(i) if body is None else body, headers))
    return calls


@dataclass
class GatewayStack:
    """A throwaway embedded stack for the gateway benchmarks: a zero-latency simulated node, its agent and
    the redemption service, a funded payer, and what signing calls and tickets takes."""

    stack: Stack
    api: str
    sim: str
    agent: str
    payer: LocalAccount
    domains: Domains
    rates: tuple[int, int]
    node: str  # the node's receipt key address
    dispatch_key: bytes
    pids: dict[str, int]  # service, agent, engine (the simulator), postgres

    def signed_calls(self, count: int, max_cost: int = 10**17, body: bytes | None = None) -> list[Call]:
        return signed_calls(self.api, bytes(self.payer.key), self.payer.address, self.domains, count, max_cost,
                            body)

    def ticketed_calls(self, count: int, body: bytes | None = None) -> list[Call]:
        return ticketed_calls(self.agent, self.node, self.dispatch_key, self.payer.address, self.domains, count,
                              self.rates, body)

    def engine_calls(self, count: int) -> list[Call]:
        return [(self.sim + "/v1/chat/completions", _body(i), {"content-type": "application/json"})
                for i in range(count)]


@contextmanager
def gateway_stack(report: Report = print, env: dict[str, str] | None = None) -> Iterator[GatewayStack]:
    """Start the benchmark stack on free ports in a temporary state dir; stop it and remove the dir on exit.

    `env` is added to the service's environment (a benchmark's knobs).
    """
    import httpx

    from redemption.sdk import reader_auth

    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as home_dir:
        home = Path(home_dir)
        paths = StatePaths(home)
        chain_port = free_port()
        stack = Stack([anvil_service(paths, port=chain_port, chain_id=31337, binary=anvil_binary(Settings(home=home))),
                       postgres_service(paths)], lambda m: report(f"  {m}"))
        stack.start()
        try:
            # No settlement worker runs here: an hour's unlock period and a half-hour settlement bound keep
            # the service admitting (it refuses with settlement_overdue once usage waits past the bound).
            settings = Settings(home=home, rpc_url=f"http://127.0.0.1:{chain_port}", api_port=free_port(),
                                database_url=stack.url("database"), node_base_port=free_port(), unlock_period=3600)
            w3 = connect(settings.effective_rpc_url)
            operator = embedded_account(0)
            deployment = deploy_all(settings, w3, operator, embedded_account(1))
            save_deployment(settings.state_dir, deployment)
            node = EmbeddedNode("bench-1", "edge", "bench", 10, (0,))
            register_embedded_nodes(settings, deployment.to_json(), (node,))  # the service trusts registered nodes only
            api = api_service(settings, deployment.to_json())
            knobs = {"SLUICE_SETTLEMENT_BOUND_SECONDS": "1800", **(env or {})}
            if api.launch is not None:
                api = replace(api, launch=replace(api.launch, env={**(api.launch.env or {}), **knobs}))
            services = [api, *node_services(settings, deployment.to_json(), (node,),
                                            {"ttft_seconds": 0, "per_token_seconds": 0})]
            stack.start_services(services)
            ledger = Ledger(w3, deployment)
            payer = Account.create()
            ledger.set_allowlisted(operator, payer.address, True)
            ledger.issue(operator, payer.address, 10**9 * ONE_TOKEN, "bench", into_escrow=True)
            api_url = services[0].url or ""
            poll_until(lambda: httpx.get(api_url + "/health").json()["nodes"] >= 1, 30, "the node registering")
            poll_until(lambda: httpx.get(api_url + "/v1/budget", params={"payer": payer.address},
                                         auth=reader_auth(payer)).json()["escrow_available"] != "0", 30,
                       "the mirror seeing the payer's escrow")
            rate = ledger.rate(MODEL)
            launched = {"service": "api", "agent": services[2].name, "engine": services[1].name,
                        "postgres": "database"}
            yield GatewayStack(
                stack=stack, api=api_url, sim=services[1].url or "", agent=services[2].url or "", payer=payer,
                domains=Domains(deployment.chain_id, deployment.contracts["settlement"]),
                rates=(rate.input_rate, rate.output_rate), node=embedded_account(10).address,
                dispatch_key=bytes(embedded_account(2).key),
                pids={role: stack.pid(name) for role, name in launched.items()},
            )
        finally:
            stack.stop()


def run(calls_per_leg: int = 3000, report: Report = print, concurrency: int = CONCURRENCY) -> dict[str, Any]:

    with gateway_stack(report) as bench:
        report(f"signing {3 * calls_per_leg} calls and tickets ...")
        engine_calls = bench.engine_calls(calls_per_leg)
        agent_calls = bench.ticketed_calls(calls_per_leg)
        service_calls = bench.signed_calls(calls_per_leg)
        asyncio.run(_drive(bench.signed_calls(200), concurrency))  # connections and caches warm up
        figures: dict[str, Any] = {"concurrency": concurrency, "output_tokens": OUTPUT_TOKENS,
                                   "calls_per_leg": calls_per_leg}
        watched = bench.pids
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
        report(f"added latency vs the node: p50 {figures['added_vs_node_p50_ms']} ms, "
               f"p99 {figures['added_vs_node_p99_ms']} ms")
        return figures
