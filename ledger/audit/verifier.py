"""`sluice audit verify`: check a Sluice deployment's settled history from the chain, trusting nothing else.

What it trusts:
- the chain, through the JSON-RPC endpoint the auditor chooses: its logs (`Transfer`,
  `BatchSettled`, `Redeemed`, `Shortfall`, `RateSet`), `totalSupply()` and contract code;
- the core's pure protocol code (`ledger.protocol`: EIP-712 hashing, secp256k1 recovery, the
  StandardMerkleTree), which is checked against eth-account and OpenZeppelin's own
  `@openzeppelin/merkle-tree` in tests/ledger/protocol and tests/ledger/audit.

What it does not trust: Sluice's database and the service's code. The audit API
(`ledger.audit.api`) is asked only for raw data — each batch's receipts as recorded, with their
two signatures and Merkle proofs, and the registered node keys — and every figure it serves is
recomputed here:

- supply (`ledger.audit.history`): minted - burned from every `Transfer` log of the token equals
  `totalSupply()` at the same block, and each settlement transaction burned exactly its
  `BatchSettled.total`; a burn in any other transaction is a discrepancy (Settlement is the only
  burner, so every burn is a settlement), and so is any `Shortfall` (admitted is paid: Invariant 7);
- each batch (`ledger.audit.checks`): receipts count, Merkle root and proofs, sums against
  `Redeemed` / `Shortfall`, both signatures of every receipt, cost at the published rate;
- across batches (here): a job settled once, a (spender, nonce) signing one job, debts cleared at
  most as far as their `Shortfall` left unpaid.

A batch is fetched as soon as the range of logs holding its `BatchSettled` is read, and checked
whole — parsed, hashed, its two signatures per receipt recovered (~30 µs each) — in a pool of
forked processes while the rest of the chain is read; this process keeps only what spans batches
(job ids, nonces, debts cleared).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from eth_utils.address import to_checksum_address

from ledger.audit.api import AuditApi
from ledger.audit.checks import BatchContext, BatchFindings, check_batch, unhex, who
from ledger.audit.history import ChainHistory, Pair, SettledBatch, read_chain
from ledger.chain.registry_events import RegistryLog
from ledger.chain.rpc import JsonRpc
from ledger.errors import VerifyError
from ledger.protocol.eip712 import DOMAIN_VERSION, REDEMPTION_DOMAIN_NAME, Domains


@dataclass(frozen=True)
class Discrepancy:
    """One finding: which check failed, in which batch and for which job, and why."""

    check: str
    detail: str
    batch: str | None = None
    job: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"check": self.check, "batch": self.batch, "job": self.job, "detail": self.detail}


@dataclass
class PairTotals:
    """What the run found for one (payer, spender): receipts and their cost, burned, still unpaid."""

    receipts: int = 0
    receipts_cost: int = 0
    redeemed: int = 0
    shortfall_unpaid: int = 0
    debt_receipts_cost: int = 0


@dataclass
class VerifyReport:
    """The result of one run: figures, per-pair totals and every discrepancy (none: the history verifies)."""

    chain_id: int
    from_block: int
    to_block: int
    events: int = 0
    batches: int = 0
    receipts: int = 0
    debt_receipts: int = 0
    signatures: int = 0
    minted: int = 0
    burned: int = 0
    total_supply: int = 0
    direct_burns: int = 0
    direct_burned: int = 0
    node_keys: int = 0
    pairs: dict[Pair, PairTotals] = field(default_factory=lambda: defaultdict(PairTotals))
    discrepancies: list[Discrepancy] = field(default_factory=list)
    # Settled usage charged fail-closed, without a node receipt (Invariant 9): its own class, always reported.
    unreceipted: list[dict[str, str]] = field(default_factory=list)
    seconds_chain: float = 0.0  # reading the logs (batches are fetched and checked meanwhile)
    seconds_receipts: float = 0.0  # from the last log read to the last batch checked
    seconds_total: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    @property
    def receipts_per_second(self) -> float:
        """Receipts checked per second of the whole run (logs, API, Merkle trees, signatures)."""
        return (self.receipts + self.debt_receipts) / self.seconds_total if self.seconds_total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "chain_id": self.chain_id, "from_block": self.from_block, "to_block": self.to_block,
            "events": self.events, "batches": self.batches, "receipts": self.receipts,
            "debt_receipts": self.debt_receipts, "signatures_checked": self.signatures, "node_keys": self.node_keys,
            "supply": {"minted": str(self.minted), "burned": str(self.burned), "total_supply": str(self.total_supply),
                       "direct_burns": self.direct_burns, "direct_burned": str(self.direct_burned)},
            "pairs": [
                {"payer": to_checksum_address(p), "spender": to_checksum_address(s), "receipts": t.receipts,
                 "receipts_cost": str(t.receipts_cost), "redeemed": str(t.redeemed),
                 "shortfall_unpaid": str(t.shortfall_unpaid), "debt_receipts_cost": str(t.debt_receipts_cost)}
                for (p, s), t in sorted(self.pairs.items())
            ],
            "discrepancies": [d.to_json() for d in self.discrepancies],
            "unreceipted": self.unreceipted,
            "seconds": {"reading_logs": round(self.seconds_chain, 3), "after_logs": round(self.seconds_receipts, 3),
                        "total": round(self.seconds_total, 3)},
            "receipts_per_second": round(self.receipts_per_second, 1),
        }  # fmt: skip


def _warm() -> int:
    """A no-op each pool process runs once, so it has forked before the run's first batch."""
    return os.getpid()


class Verifier:
    """One verification run: the chain read once, every settled batch checked against it."""

    def __init__(self, rpc_url: str, api: AuditApi, *, node_keys: set[bytes] | None = None, from_block: int = 0,
                 workers: int | None = None, fetchers: int = 4,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.rpc = JsonRpc(rpc_url)
        self.api = api
        self.given_nodes = node_keys
        self.from_block = from_block
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.fetchers = fetchers
        self.progress = progress or (lambda _stage, _done, _total: None)

    def run(self) -> VerifyReport:
        began = time.perf_counter()
        chain_id = int(self.rpc.call("eth_chainId", []), 16)
        token, settlement, rate_card, separators = self._deployment(chain_id)
        head = int(self.rpc.call("eth_blockNumber", []), 16)
        report = VerifyReport(chain_id, self.from_block, head)
        nodes: dict[bytes, tuple[int, int | None]] = (
            {key: (0, None) for key in self.given_nodes} if self.given_nodes is not None else self._registry(head))
        report.node_keys = len(nodes)
        history = ChainHistory(self.from_block, head)
        pool: ProcessPoolExecutor | None = None
        if self.workers > 1:
            # Forked (instant, and no re-import of the caller's __main__) before this run starts any thread;
            # the workers only parse, hash and recover signatures.
            pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
            for ready in [pool.submit(_warm) for _ in range(self.workers)]:
                ready.result()
        checks: list[Future[tuple[SettledBatch, BatchFindings | None]]] = []
        try:
            with ThreadPoolExecutor(self.fetchers, thread_name_prefix="audit-fetch") as fetch:
                # Batches are fetched and checked while the rest of the chain is still being read.
                for end, settled in read_chain(self.rpc, token, settlement, rate_card, self.from_block, head,
                                               history):
                    for batch in settled:
                        context = BatchContext(
                            batch, dict(history.redeemed.get(batch.batch_id, {})),
                            dict(history.shortfalls.get(batch.batch_id, {})), separators, nodes,
                            {model: list(rates) for model, rates in history.rates.items()})
                        checks.append(fetch.submit(self._fetch_and_check, context, pool))
                    self.progress("chain", end - self.from_block + 1, head - self.from_block + 1)
                supply_word = self.rpc.call("eth_call", [{"to": "0x" + token.hex(), "data": "0x18160ddd"},
                                                         hex(head)])
                report.seconds_chain = time.perf_counter() - began
                report.total_supply = int(supply_word, 16)
                report.events, report.minted, report.burned = history.events, history.minted, history.burned
                self._check_supply(history, report)
                results = []
                for done, check in enumerate(as_completed(checks), 1):
                    results.append(check.result())
                    self.progress("batches", done, len(checks))
            self._cross_batch(results, history, report)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        report.seconds_receipts = time.perf_counter() - began - report.seconds_chain
        report.seconds_total = time.perf_counter() - began
        return report

    def _fetch_and_check(self, context: BatchContext,
                         pool: ProcessPoolExecutor | None) -> tuple[SettledBatch, BatchFindings | None]:
        """One batch from the API, checked in the pool (or here); None findings when the API does not know it."""
        body = self.api.batch_json(context.batch.batch_id)
        if body is None:
            return context.batch, None
        if pool is None:
            return context.batch, check_batch(context, body)
        return context.batch, pool.submit(check_batch, context, body).result()

    def _deployment(self, chain_id: int) -> tuple[bytes, bytes, bytes, tuple[bytes, bytes]]:
        """The contracts the API names, checked against the chain, and the two EIP-712 domain separators."""
        doc = self.api.discovery()
        if int(doc["chain_id"]) != chain_id:
            raise VerifyError(f"the API serves chain {doc['chain_id']}, the RPC endpoint chain {chain_id}")
        contracts = doc["contracts"]
        token, settlement, rate_card = (unhex(contracts[k]) for k in ("token", "settlement", "rate_card"))
        for name, address in (("token", token), ("settlement", settlement), ("rate_card", rate_card)):
            if self.rpc.call("eth_getCode", ["0x" + address.hex(), "latest"]) in ("0x", None):
                raise VerifyError(f"no contract at the {name} address {to_checksum_address(address)} on this chain")
        bound = self.rpc.call("eth_call", [{"to": "0x" + settlement.hex(), "data": "0xfc0c546a"}, "latest"])  # token()
        if unhex(bound)[12:] != token:
            raise VerifyError("the settlement contract the API names does not burn the token it names")
        domain = doc["eip712_domain"]
        if (domain["name"], str(domain["version"]), int(domain["chainId"]), unhex(domain["verifyingContract"])) != (
            REDEMPTION_DOMAIN_NAME, DOMAIN_VERSION, chain_id, settlement
        ):
            raise VerifyError(f"the API's EIP-712 domain {domain} is not Sluice's for this chain and settlement")
        domains = Domains(chain_id, "0x" + settlement.hex())
        separators = (domains.redemption, domains.receipt)
        return token, settlement, rate_card, separators

    def _registry(self, head: int) -> dict[bytes, tuple[int, int | None]]:
        """Every NodeRegistry key with its registration and retirement blocks, from the chain's own logs."""
        address = self.api.discovery()["contracts"].get("node_registry")
        if not address:
            raise VerifyError("the API names no node_registry contract: receipt keys cannot be checked on chain")
        if self.rpc.call("eth_getCode", [address, "latest"]) in ("0x", None):
            raise VerifyError(f"no contract at the node_registry address {address} on this chain")
        log = RegistryLog(self.rpc, address, 0)
        log.sync()
        return {unhex(r.node): (r.registered_block, r.retired_block) for r in log.nodes.values()}

    def _check_supply(self, history: ChainHistory, report: VerifyReport) -> None:
        if report.total_supply != history.minted - history.burned:
            report.discrepancies.append(Discrepancy(
                "supply", f"totalSupply() is {report.total_supply} at block {history.to_block}, but Transfer logs "
                          f"mint {history.minted} and burn {history.burned} (= {history.minted - history.burned})"))
        settled_by_tx: dict[bytes, int] = defaultdict(int)
        for batch in history.batches.values():
            settled_by_tx[batch.tx_hash] += batch.total
        for tx, total in settled_by_tx.items():
            burned = history.burns_by_tx.get(tx, 0)
            if burned != total:
                report.discrepancies.append(Discrepancy(
                    "burns_vs_batch_total",
                    f"transaction 0x{tx.hex()} burned {burned}, its BatchSettled totals {total}"))
        for tx, burned in history.burns_by_tx.items():
            if tx not in settled_by_tx:  # every burn is a settlement: Settlement is the only burner (Invariant 4)
                report.direct_burns += 1
                report.direct_burned += burned
                report.discrepancies.append(Discrepancy(
                    "burn_without_settlement", f"transaction 0x{tx.hex()} burned {burned} with no BatchSettled"))
        for batch_id in history.duplicate_batches:
            report.discrepancies.append(
                Discrepancy("batch_settled_twice", "two BatchSettled logs", f"0x{batch_id.hex()}"))

    def _cross_batch(self, results: list[tuple[SettledBatch, BatchFindings | None]], history: ChainHistory,
                     report: VerifyReport) -> None:
        """Each batch's own findings, then what spans batches: a job or a nonce used twice, debts over-cleared."""
        report.batches = len(results)
        seen_jobs: dict[bytes, bytes] = {}
        seen_nonces: dict[tuple[bytes, int], bytes] = {}
        cleared: dict[tuple[bytes, Pair], int] = defaultdict(int)
        for batch, found in sorted(results, key=lambda r: r[0].block):
            label = f"0x{batch.batch_id.hex()}"
            for pair, amount in history.redeemed.get(batch.batch_id, {}).items():
                report.pairs[pair].redeemed += amount
            for pair, (owed, paid) in history.shortfalls.get(batch.batch_id, {}).items():
                report.pairs[pair].shortfall_unpaid += owed - paid
                # Invariant 7: admitted is paid, so any Shortfall is the operator's failure.
                report.discrepancies.append(Discrepancy(
                    "shortfall", f"{who(pair)}: owed {owed}, paid {paid}: admitted usage went unpaid", label))
            if found is None:
                report.discrepancies.append(Discrepancy(
                    "batch_unknown_to_api", f"settled on chain in block {batch.block} with {batch.items} receipts, "
                    "but the API has no such batch", label))
                continue
            report.discrepancies.extend(Discrepancy(check, detail, label, job) for check, job, detail in found.problems)
            report.signatures += found.signatures
            report.unreceipted.extend({"batch_id": label, "job_id": job, "reason": why}
                                      for job, why in found.unreceipted)
            report.receipts += len(found.usage)
            report.debt_receipts += len(found.debts)
            for pair, (count, cost) in found.usage_by_pair.items():
                report.pairs[pair].receipts += count
                report.pairs[pair].receipts_cost += cost
            for pair, cost in found.debt_by_pair.items():
                report.pairs[pair].debt_receipts_cost += cost
            in_batch: set[bytes] = set()
            for job, spender, nonce in found.usage:
                first = seen_jobs.setdefault(job, batch.batch_id)
                if first != batch.batch_id or job in in_batch:
                    report.discrepancies.append(Discrepancy("job_settled_twice", f"also in batch 0x{first.hex()}",
                                                            label, f"0x{job.hex()}"))
                in_batch.add(job)
                signed = seen_nonces.setdefault((spender, nonce), job)
                if signed != job:
                    report.discrepancies.append(Discrepancy(
                        "nonce_reused", f"the spender's nonce {nonce} also signed job 0x{signed.hex()}", label,
                        f"0x{job.hex()}"))
            for origin, pair, amount in found.debts:
                short = history.shortfalls.get(origin, {}).get(pair)
                if short is None:
                    report.discrepancies.append(Discrepancy(
                        "debt_without_shortfall", f"clears {amount} of {who(pair)} for no Shortfall of batch "
                        f"0x{origin.hex()}", label, f"0x{origin.hex()}"))
                    continue
                cleared[(origin, pair)] += amount
                if cleared[(origin, pair)] > short[0] - short[1]:
                    report.discrepancies.append(Discrepancy(
                        "debt_over_shortfall", f"{who(pair)}: clears {cleared[(origin, pair)]} in all, the "
                        f"Shortfall left {short[0] - short[1]} unpaid", label, f"0x{origin.hex()}"))


def verify(rpc_url: str, api: AuditApi, *, node_keys: set[bytes] | None = None, from_block: int = 0,
           workers: int | None = None, progress: Callable[[str, int, int], None] | None = None) -> VerifyReport:
    """Run every check; the report lists each discrepancy (none: the history verifies)."""
    return Verifier(rpc_url, api, node_keys=node_keys, from_block=from_block, workers=workers,
                    progress=progress).run()
