"""`sluice bench audit`: indexer backfill speed (events/s) and `sluice audit verify` speed (receipts/s).

Everything runs on a throwaway stack (Anvil and PostgreSQL in a temporary state dir, free ports):

1. Setup, not timed: `receipts` metered jobs with real signatures — each developer key signs its
   EIP-712 `Redemption`, a node key signs the `UsageReceipt` — are written to `usage_records`,
   `settlement_batches` and `settlement_items` as migration 0003 defines them, and settled on chain
   in batches of `batch_size`, pipelined. Each receipt is its own settlement item, so it emits a
   `Transfer` burn and a `Redeemed` (ERC-20 cannot put many transfers in one transaction; a batch
   can put many items), plus one `BatchSettled` per batch: >= 100,000 events for 50,000 receipts.
2. Indexer backfill: `ChainIndexer.sync_once()` from the deployment block into an empty index.
3. Verify: the redemption service is started as its own process on the same database and chain, an
   auditor key is granted AUDITOR_ROLE, and `verify` reads the chain's logs, fetches every batch from
   the API and checks every receipt. receipts/s counts the whole run (logs, API, Merkle, signatures),
   with the service's own mirror and indexer threads polling as they do in production.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from ledger.bench.harness import Report
from ledger.chain.client import Ledger
from ledger.domain import model_id, usage_cost
from ledger.protocol.eip712 import Domains, Redemption, UsageReceipt, typed_digest
from ledger.protocol.merkle import build_tree, receipt_leaf
from ledger.protocol.secp256k1 import sign_digest
from ledger.units import ONE_TOKEN

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TARGET_EVENTS_PER_SECOND = 20_000
TARGET_RECEIPTS_PER_SECOND = 5_000
# Row of usage_records as COPY writes it (see _write_receipts).
Receipt = tuple[Any, ...]


@dataclass(frozen=True)
class BenchConfig:
    receipts: int = 50_000
    batch_size: int = 1_000
    payers: int = 10
    workers: int = 2


def _sign_chunk(args: tuple[int, bytes, bytes, list[tuple[bytes, bytes, str, str]], int, int, int]) -> list[Receipt]:
    """Sign `count` jobs (runs in a pool process): (job, payer, spender, ..., both signatures)."""
    from redemption.calls import job_id_for

    seed, request_sep, receipt_sep, keys, count, input_rate, output_rate = args
    rng = secrets.SystemRandom()
    model = model_id(MODEL)
    node_key = keys[0][1]
    out: list[Receipt] = []
    for i in range(count):
        spender_key, _node, payer, spender = keys[1 + (seed + i) % (len(keys) - 1)]
        prompt, completion = rng.randint(8, 2_000), rng.randint(1, 1_000)
        cost = usage_cost(prompt, completion, input_rate, output_rate)
        body_hash, nonce = os.urandom(32), rng.getrandbits(128)
        deadline = int(time.time()) + 300
        max_cost = cost + rng.randint(0, cost)
        request = Redemption(payer, body_hash, max_cost, nonce, deadline)
        digest = typed_digest(request_sep, request.struct_hash())
        signature = sign_digest(spender_key, digest)
        job = job_id_for(spender, digest)
        usage = UsageReceipt(job, payer, spender, model, prompt, completion, cost, digest)
        node_signature = sign_digest(node_key, typed_digest(receipt_sep, usage.struct_hash()))
        out.append((job, payer, spender, prompt, completion, cost, max_cost, body_hash, nonce, deadline, signature,
                    digest, node_signature))
    return out


def _send_all(ledger: Ledger, signer: LocalAccount, calls: Sequence[Any], gas: int) -> list[Any]:
    """Pipeline transactions from one key (send all, then wait for each); gas given, nothing estimated."""
    sender = ledger.sender(signer)
    sent = []
    for fn in calls:
        tx = {"to": fn.address, "data": fn._encode_transaction_data(), "gas": gas, "maxFeePerGas": 0,
              "maxPriorityFeePerGas": 0}
        sent.append((tx, *sender.send(tx)))  # type: ignore[arg-type]
    return [sender.wait(tx_hash, nonce, tx) for tx, tx_hash, nonce in sent]  # type: ignore[arg-type]


def build_history(ledger: Ledger, db_url: str, config: BenchConfig, operator: LocalAccount, settler: LocalAccount,
                  node: LocalAccount, report: Report) -> tuple[int, int]:
    """Sign, store and settle `config.receipts` receipts; returns (receipts, batches)."""
    deployment = ledger.deployment
    domains = Domains(deployment.chain_id, deployment.contracts["settlement"])
    rate = ledger.rate(MODEL)
    payers = [Account.create() for _ in range(config.payers)]
    developers = [Account.create() for _ in range(config.payers)]
    # Half the pairs pay for themselves, half spend an approved developer's allowance.
    pairs = [(p, p) for p in payers] + list(zip(payers, developers, strict=True))
    token = ledger.token.functions
    setup = [token.setAllowlisted(p.address, True) for p in payers]
    setup += [token.mint(p.address, 10**9 * ONE_TOKEN) for p in payers]
    _send_all(ledger, operator, setup, 200_000)
    for payer, developer in zip(payers, developers, strict=True):
        _send_all(ledger, payer, [token.approve(developer.address, 2**256 - 1)], 200_000)

    began = time.perf_counter()
    keys = [(b"", bytes(node.key), "", "")] + [(bytes(s.key), b"", p.address, s.address) for p, s in pairs]
    chunk = 2_000
    jobs = [(i, domains.redemption, domains.receipt, keys, min(chunk, config.receipts - i), rate.input_rate,
             rate.output_rate) for i in range(0, config.receipts, chunk)]
    with ProcessPoolExecutor(config.workers) as pool:
        receipts = [r for part in pool.map(_sign_chunk, jobs) for r in part]
    report(f"signed {len(receipts):,} requests and node receipts in {time.perf_counter() - began:.1f} s")

    began = time.perf_counter()
    batches: list[tuple[bytes, bytes, list[Receipt], list[list[bytes]]]] = []
    calls = []
    for i in range(0, len(receipts), config.batch_size):
        part = receipts[i : i + config.batch_size]
        leaves = [receipt_leaf(r[0], r[1], r[2], r[5]) for r in part]
        tree = build_tree(leaves)
        batch_id = keccak(tree.root)
        batches.append((batch_id, tree.root, part, [tree.proof(leaf) for leaf in leaves]))
        items = [(r[1], r[2], r[5]) for r in part]
        calls.append(ledger.settlement.functions.settle(batch_id, tree.root, len(part), items))
    mined = _send_all(ledger, settler, calls, 28_000_000)
    report(f"settled {len(batches)} batches on chain in {time.perf_counter() - began:.1f} s "
           f"({sum(m.gas_used for m in mined) // len(receipts):,} gas per receipt)")
    _write_rows(db_url, batches, mined, node, MODEL)
    return len(receipts), len(batches)


def _write_rows(db_url: str, batches: Sequence[tuple[bytes, bytes, list[Receipt], list[list[bytes]]]],
                mined: Sequence[Any], node: LocalAccount, model: str) -> None:
    """The database as a settled history leaves it: records settled, batches confirmed, the node registered."""
    raw = bytes.fromhex
    with psycopg.connect(db_url) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO nodes (node, url, models, tier, region, capacity) VALUES (%s, %s, %s, %s, %s, %s)",
                    (raw(node.address[2:]), "http://127.0.0.1:1", [model], "edge", "bench", 1))
        for (batch_id, root, part, _proofs), tx in zip(batches, mined, strict=True):
            items: dict[tuple[bytes, bytes], list[int]] = defaultdict(lambda: [0, 0])
            for r in part:
                entry = items[(raw(r[1][2:]), raw(r[2][2:]))]
                entry[0] += r[5]
                entry[1] += 1
            total = sum(a for a, _n in items.values())
            cur.execute(
                "INSERT INTO settlement_batches (batch_id, kind, receipts_root, receipt_count, item_count, total,"
                " status, attempts, tx_hash, settled_block, gas_used, paid, confirmed_at)"
                " VALUES (%s, 'usage', %s, %s, %s, %s, 'confirmed', 1, %s, %s, %s, %s, now())",
                (batch_id, root, len(part), len(items), Decimal(total), raw(tx.tx_hash[2:]), tx.block_number,
                 tx.gas_used, Decimal(total)),
            )
            cur.executemany(
                "INSERT INTO settlement_items (batch_id, payer, spender, amount, receipts, paid)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                [(batch_id, p, s, Decimal(a), n, Decimal(a)) for (p, s), (a, n) in items.items()],
            )
        with cur.copy(
            "COPY usage_records (job_id, payer, spender, model, prompt_tokens, completion_tokens, cost, max_cost, node,"
            " body_hash, nonce, deadline, request_signature, request_digest, receipt_signature, started_at, status,"
            " batch_id, settled_block, merkle_proof) FROM STDIN"
        ) as copy:
            copy.set_types(["bytea", "bytea", "bytea", "text", "int4", "int4", "numeric", "numeric", "bytea",
                            "bytea", "numeric", "int8", "bytea", "bytea", "bytea", "timestamptz", "text", "bytea",
                            "int8", "bytea[]"])
            from datetime import UTC, datetime

            now = datetime.now(UTC)
            node_raw = raw(node.address[2:])
            for (batch_id, _root, part, proofs), tx in zip(batches, mined, strict=True):
                for r, proof in zip(part, proofs, strict=True):
                    copy.write_row((r[0], raw(r[1][2:]), raw(r[2][2:]), model, r[3], r[4], r[5], r[6], node_raw,
                                    r[7], r[8], r[9], r[10], r[11], r[12], now, "released", batch_id,
                                    tx.block_number, proof))
        conn.commit()


def run(config: BenchConfig, report: Report = print) -> dict[str, Any]:
    """Build the throwaway stack and history, then time the backfill and the verification."""
    from ledger.audit.api import AuditApi
    from ledger.audit.verifier import verify
    from ledger.chain.connection import connect
    from ledger.chain.deploy import deploy_all
    from ledger.chain.deployment import save_deployment
    from ledger.config import Settings
    from ledger.db import migrate
    from ledger.followers.indexer import ChainIndexer
    from ledger.keys import embedded_account
    from ledger.paths import StatePaths
    from ledger.stack.apps import api_service
    from ledger.stack.probes import free_port
    from ledger.stack.services import anvil_binary, anvil_service, postgres_service
    from ledger.stack.supervisor import Stack

    with tempfile.TemporaryDirectory(prefix="sluice-bench-audit-") as home:
        chain_port = free_port()
        settings = Settings(home=Path(home), chain_port=chain_port, api_port=free_port())
        paths = StatePaths(settings.state_dir)
        chain = anvil_service(paths, port=chain_port, chain_id=settings.chain_id, binary=anvil_binary(settings))
        database = postgres_service(paths)
        stack = Stack([chain, database], lambda msg: report(f"  {msg}"))
        stack.start()
        try:
            assert database.url is not None
            db_url = database.url
            migrate(db_url)
            w3 = connect(settings.effective_rpc_url, timeout=300)
            operator, settler, node = embedded_account(0), embedded_account(1), embedded_account(10)
            deployment = deploy_all(settings, w3, operator, settler)
            save_deployment(settings.state_dir, deployment)
            ledger = Ledger(w3, deployment, timeout=300)
            receipts, batches = build_history(ledger, db_url, config, operator, settler, node, report)

            indexer = ChainIndexer(ledger, db_url)
            began = time.perf_counter()
            status = indexer.sync()
            backfill = time.perf_counter() - began
            events = indexer.events_indexed
            indexer.close()
            report(f"indexer backfill: {events:,} events over {status.block - deployment.deploy_block + 1} blocks in "
                   f"{backfill:.2f} s = {events / backfill:,.0f} events/s (target {TARGET_EVENTS_PER_SECOND:,})")

            auditor = Account.create()
            ledger.grant_role(operator, "AUDITOR_ROLE", auditor.address)
            api = api_service(settings, deployment.to_json())
            stack.start_services([api])
            assert api.url is not None
            client = AuditApi(api.url, auditor, timeout=120)
            try:
                result = verify(settings.effective_rpc_url, client, workers=config.workers)
            finally:
                client.close()
            if not result.ok:
                raise AssertionError(f"verify found discrepancies in the bench history: {result.discrepancies[:5]}")
            rate = result.receipts / result.seconds_total
            report(f"verify: {result.receipts:,} receipts ({result.signatures:,} signatures, {result.events:,} logs) "
                   f"in {result.seconds_total:.2f} s = {rate:,.0f} receipts/s end to end "
                   f"(target {TARGET_RECEIPTS_PER_SECOND:,}); the logs were read in the first "
                   f"{result.seconds_chain:.2f} s while batches were already being checked")
        finally:
            stack.stop()
    return {
        "machine": {"cpus": os.cpu_count()},
        "history": {"receipts": receipts, "batches": batches, "batch_size": config.batch_size,
                    "pairs": 2 * config.payers},
        "indexer_backfill": {"events": events, "seconds": round(backfill, 3),
                             "events_per_second": round(events / backfill, 1),
                             "target_events_per_second": TARGET_EVENTS_PER_SECOND,
                             "meets_target": events / backfill >= TARGET_EVENTS_PER_SECOND},
        "verify": {"receipts": result.receipts, "signatures": result.signatures, "logs": result.events,
                   "seconds": round(result.seconds_total, 3), "seconds_reading_logs": round(result.seconds_chain, 3),
                   "receipts_per_second": round(rate, 1), "workers": config.workers,
                   "target_receipts_per_second": TARGET_RECEIPTS_PER_SECOND,
                   "meets_target": rate >= TARGET_RECEIPTS_PER_SECOND},
    }  # fmt: skip
