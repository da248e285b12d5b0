"""`sluice audit verify`: check a Sluice deployment's settled history from the chain, trusting nothing else.

The chain (any JSON-RPC endpoint the auditor chooses) is the only source taken as true. The audit
API is asked only for raw data — each batch's receipts with their signatures and proofs, and the
registered node keys — and everything it says is recomputed here:

- supply: minted - burned from every `Transfer` log of the token equals `totalSupply()` at the
  same block, and each settlement transaction burned exactly its `BatchSettled.total`;
- for every `BatchSettled` log: the receipts served for it count `items`, hash (OpenZeppelin
  StandardMerkleTree leaves) to its `receiptsRoot`, and each one's served proof holds against that
  root; per (payer, spender) the receipts sum to the batch's `Redeemed` amount, or to a `Shortfall`'s
  `owed` with `Redeemed` = its `paid`; a debt batch's leaves each clear part of an earlier `Shortfall`;
- for every metered receipt: the EIP-712 `Redemption` digest is recomputed from the served fields
  and must recover to the spender, `cost <= maxCost`, the cost must be the published `RateSet` price
  of the model's token counts, the (spender, nonce) pair backs one receipt only, and the node's
  EIP-712 `UsageReceipt` signature — over the job id, the token counts, the cost and the request
  digest — must recover to a registered node key.

The Merkle tree is `ledger.protocol.merkle`, checked against OpenZeppelin's own JavaScript
`@openzeppelin/merkle-tree` in tests/ledger/test_merkle.py; the EIP-712 digests are computed in
this module from the type strings of DESIGN.md (the same bytes eth-account hashes, see
tests/ledger/test_eip712.py). A batch is fetched as soon as the range of logs holding its
`BatchSettled` is read, and checked whole — parsed, hashed, its two signatures per receipt recovered
with libsecp256k1 (~50-100 µs each) — in a pool of forked processes while the rest of the chain is
read; this process keeps only what spans batches (job ids, nonces, debts cleared).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from ledger.chain.rpc import JsonRpc, LogSpan, too_large
from ledger.domain import usage_cost
from ledger.errors import LedgerError
from ledger.protocol.eip712 import (
    DOMAIN_TYPE,
    DOMAIN_VERSION,
    RECEIPT_DOMAIN_NAME,
    RECEIPT_TYPE,
    REDEMPTION_DOMAIN_NAME,
    REDEMPTION_TYPE,
)
from ledger.protocol.keccak import keccak256
from ledger.protocol.merkle import build_tree, verify_proof

Pair = tuple[bytes, bytes]
ZERO = b"\x00" * 20
HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


class VerifyError(LedgerError):
    """Verification could not run (not a discrepancy: the API refused, the chain does not answer, ...)."""


# --------------------------------------------------------------------------- fast primitives


def _raw_recover() -> Callable[[bytes, bytes], bytes | None]:
    """The 20-byte address that signed `digest` (65-byte r||s||v, low-s only), or None."""
    from coincurve._libsecp256k1 import ffi, lib
    from coincurve.context import GLOBAL_CONTEXT

    ctx = GLOBAL_CONTEXT.ctx
    local = threading.local()

    def recover(digest: bytes, signature: bytes) -> bytes | None:
        if len(signature) != 65 or len(digest) != 32:
            return None
        v = signature[64] - 27 if signature[64] >= 27 else signature[64]
        s = int.from_bytes(signature[32:64], "big")
        if v not in (0, 1) or not 0 < s <= HALF_N:
            return None
        if getattr(local, "sig", None) is None:
            local.sig = ffi.new("secp256k1_ecdsa_recoverable_signature *")
            local.pub = ffi.new("secp256k1_pubkey *")
            local.out = ffi.new("unsigned char[65]")
            local.size = ffi.new("size_t *")
        if not lib.secp256k1_ecdsa_recoverable_signature_parse_compact(ctx, local.sig, signature[:64], v):
            return None
        if not lib.secp256k1_ecdsa_recover(ctx, local.pub, local.sig, digest):
            return None
        local.size[0] = 65
        lib.secp256k1_ec_pubkey_serialize(ctx, local.out, local.size, local.pub, lib.SECP256K1_EC_UNCOMPRESSED)
        return keccak256(bytes(ffi.buffer(local.out, 65))[1:])[12:]

    return recover


recover_signer = _raw_recover()


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _addr_word(raw: bytes) -> bytes:
    return b"\x00" * 12 + raw


def domain_separator(name: str, chain_id: int, verifying_contract: bytes) -> bytes:
    return keccak256(keccak256(DOMAIN_TYPE.encode()) + keccak256(name.encode()) + keccak256(DOMAIN_VERSION.encode())
                     + _word(chain_id) + _addr_word(verifying_contract))


_REDEMPTION_TYPEHASH = keccak256(REDEMPTION_TYPE.encode())
_RECEIPT_TYPEHASH = keccak256(RECEIPT_TYPE.encode())


def redemption_digest(separator: bytes, payer: bytes, body_hash: bytes, max_cost: int, nonce: int,
                      deadline: int) -> bytes:
    struct = keccak256(_REDEMPTION_TYPEHASH + _addr_word(payer) + body_hash + _word(max_cost) + _word(nonce)
                       + _word(deadline))
    return keccak256(b"\x19\x01" + separator + struct)


def receipt_digest(separator: bytes, job: bytes, payer: bytes, spender: bytes, model: bytes, prompt: int,
                   completion: int, cost: int, request_digest: bytes) -> bytes:
    struct = keccak256(_RECEIPT_TYPEHASH + job + _addr_word(payer) + _addr_word(spender) + model + _word(prompt)
                       + _word(completion) + _word(cost) + request_digest)
    return keccak256(b"\x19\x01" + separator + struct)


def leaf_of(job: bytes, payer: bytes, spender: bytes, cost: int) -> bytes:
    """The StandardMerkleTree leaf of (bytes32, address, address, uint256)."""
    return keccak256(keccak256(job + _addr_word(payer) + _addr_word(spender) + _word(cost)))


def _warm() -> int:
    return os.getpid()


# --------------------------------------------------------------------------- the chain's side


_TRANSFER = keccak256(b"Transfer(address,address,uint256)")
_BATCH_SETTLED = keccak256(b"BatchSettled(bytes32,bytes32,uint256,uint256)")
_REDEEMED = keccak256(b"Redeemed(bytes32,address,address,uint256)")
_SHORTFALL = keccak256(b"Shortfall(bytes32,address,address,uint256,uint256)")
_RATE_SET = keccak256(b"RateSet(bytes32,uint256,uint256)")


@dataclass(frozen=True)
class SettledBatch:
    batch_id: bytes
    root: bytes
    items: int
    total: int
    tx_hash: bytes
    block: int


@dataclass
class ChainHistory:
    """What the logs of the token, the settlement and the rate card say, up to `to_block`."""

    from_block: int
    to_block: int
    events: int = 0
    minted: int = 0
    burned: int = 0
    burns_by_tx: dict[bytes, int] = field(default_factory=lambda: defaultdict(int))
    batches: dict[bytes, SettledBatch] = field(default_factory=dict)
    duplicate_batches: list[bytes] = field(default_factory=list)
    redeemed: dict[bytes, dict[Pair, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    shortfalls: dict[bytes, dict[Pair, tuple[int, int]]] = field(default_factory=lambda: defaultdict(dict))
    rates: dict[bytes, list[tuple[int, int, int]]] = field(default_factory=lambda: defaultdict(list))


def read_chain(rpc: JsonRpc, token: bytes, settlement: bytes, rate_card: bytes, from_block: int, to_block: int,
               history: ChainHistory | None = None) -> Iterator[tuple[int, list[SettledBatch]]]:
    """Read every log the checks need into `history`, range by range (adaptive `eth_getLogs`).

    Yields after each range the last block read and the batches settled in it: a batch's Redeemed and
    Shortfall logs come from its own transaction, so they are read by then and it can be checked at once.
    """
    history = history if history is not None else ChainHistory(from_block, to_block)
    params_base = {
        "address": ["0x" + a.hex() for a in (token, settlement, rate_card)],
        "topics": [["0x" + t.hex() for t in (_TRANSFER, _BATCH_SETTLED, _REDEEMED, _SHORTFALL, _RATE_SET)]],
    }
    span = LogSpan(initial=256, max_span=100_000, target_logs=20_000)
    start = from_block
    while start <= to_block:
        end = span.end(start, to_block)
        began = time.perf_counter()
        try:
            logs = rpc.call("eth_getLogs", [{**params_base, "fromBlock": hex(start), "toBlock": hex(end)}])
        except Exception as exc:
            if end > start and too_large(exc):
                span.refused(end - start + 1)
                continue
            raise
        span.answered(end - start + 1, len(logs), time.perf_counter() - began)
        yield end, _absorb(history, logs, token, settlement, rate_card)
        start = end + 1


def _absorb(history: ChainHistory, logs: Iterable[dict[str, Any]], token: bytes, settlement: bytes,
            rate_card: bytes) -> list[SettledBatch]:
    """Add one range's logs to `history` (compared as the node's hex, decoded only where needed)."""
    token_hex, settlement_hex, rate_card_hex = ("0x" + a.hex() for a in (token, settlement, rate_card))
    transfer, settled, redeemed, shortfall, rate_set = (
        "0x" + t.hex() for t in (_TRANSFER, _BATCH_SETTLED, _REDEEMED, _SHORTFALL, _RATE_SET))
    zero = "0" * 40
    new: list[SettledBatch] = []
    for entry in logs:
        topics: list[str] = entry["topics"]
        if entry.get("removed") or not topics:
            continue
        history.events += 1
        address, topic, data = str(entry["address"]).lower(), topics[0].lower(), str(entry["data"])
        if topic == transfer and address == token_hex and len(topics) == 3:
            value = int(data[2:66], 16)
            if topics[1][26:] == zero:
                history.minted += value
            if topics[2][26:] == zero:
                history.burned += value
                history.burns_by_tx[bytes.fromhex(entry["transactionHash"][2:])] += value
        elif address != settlement_hex:
            if address == rate_card_hex and topic == rate_set:
                history.rates[bytes.fromhex(topics[1][2:])].append(
                    (int(entry["blockNumber"], 16), int(data[2:66], 16), int(data[66:130], 16)))
        elif topic == redeemed:
            pair = (bytes.fromhex(topics[2][26:]), bytes.fromhex(topics[3][26:]))
            history.redeemed[bytes.fromhex(topics[1][2:])][pair] += int(data[2:66], 16)
        elif topic == shortfall:
            pair = (bytes.fromhex(topics[2][26:]), bytes.fromhex(topics[3][26:]))
            history.shortfalls[bytes.fromhex(topics[1][2:])][pair] = (int(data[2:66], 16), int(data[66:130], 16))
        elif topic == settled:
            batch = SettledBatch(bytes.fromhex(topics[1][2:]), bytes.fromhex(data[2:66]), int(data[66:130], 16),
                                 int(data[130:194], 16), bytes.fromhex(entry["transactionHash"][2:]),
                                 int(entry["blockNumber"], 16))
            if batch.batch_id in history.batches:
                history.duplicate_batches.append(batch.batch_id)
            history.batches[batch.batch_id] = batch
            new.append(batch)
    return new


# --------------------------------------------------------------------------- the audit API


class AuditApi:
    """Signed GETs to a Sluice audit API (empty body, maxCost 0, from a key holding AUDITOR_ROLE)."""

    def __init__(self, base_url: str, auditor: LocalAccount, *, timeout: float = 60.0) -> None:
        from redemption.sdk import SluiceAuth

        self.base_url = base_url.rstrip("/")
        self.auditor = auditor
        self.client = httpx.Client(base_url=self.base_url, auth=SluiceAuth(auditor, max_cost=0), timeout=timeout,
                                   limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))

    def discovery(self) -> dict[str, Any]:
        try:
            response = httpx.get(self.base_url + "/.well-known/sluice.json", timeout=10)
        except httpx.HTTPError as exc:
            raise VerifyError(f"the audit API at {self.base_url} does not answer ({exc.__class__.__name__})") from exc
        if response.status_code != 200:
            raise VerifyError(f"{self.base_url} has no Sluice discovery document (HTTP {response.status_code})")
        data: dict[str, Any] = orjson.loads(response.content)
        return data

    def get(self, path: str, params: dict[str, Any] | None = None, *, missing_ok: bool = False) -> Any:
        try:
            response = self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise VerifyError(f"the audit API at {self.base_url} does not answer ({exc.__class__.__name__})") from exc
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code != 200:
            try:
                error = orjson.loads(response.content)["error"]
                message, code = str(error["message"]), str(error["code"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                message, code = response.text[:200], "http_error"
            raise VerifyError(f"the audit API refused {path} (HTTP {response.status_code} {code}): {message}")
        if response.headers.get("content-type", "").startswith("text/csv"):
            return response.text, response.headers.get("sluice-next-cursor")
        return orjson.loads(response.content)

    def batch_json(self, batch_id: bytes) -> bytes | None:
        """The raw JSON of /audit/batches/{batch_id}; None when the API does not know the batch."""
        path = f"/audit/batches/0x{batch_id.hex()}"
        try:
            response = self.client.get(path)
        except httpx.HTTPError as exc:
            raise VerifyError(f"the audit API at {self.base_url} does not answer ({exc.__class__.__name__})") from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            self.get(path)  # raises with the API's error message
        return response.content

    def node_keys(self) -> set[bytes]:
        data = self.get("/audit/nodes")
        return {bytes.fromhex(n["node"][2:]) for n in data["nodes"]}

    def close(self) -> None:
        self.client.close()


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Discrepancy:
    check: str
    detail: str
    batch: str | None = None
    job: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"check": self.check, "batch": self.batch, "job": self.job, "detail": self.detail}


@dataclass
class PairTotals:
    receipts: int = 0
    receipts_cost: int = 0
    redeemed: int = 0
    shortfall_unpaid: int = 0
    debt_receipts_cost: int = 0


@dataclass
class VerifyReport:
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
            "seconds": {"reading_logs": round(self.seconds_chain, 3), "after_logs": round(self.seconds_receipts, 3),
                        "total": round(self.seconds_total, 3)},
            "receipts_per_second": round(self.receipts_per_second, 1),
        }  # fmt: skip


def _hex(value: str) -> bytes:
    return bytes.fromhex(value[2:])  # "0x..." as the API writes it; anything else fails the receipt


def _who(pair: Pair) -> str:
    return f"({to_checksum_address(pair[0])}, {to_checksum_address(pair[1])})"


# --------------------------------------------------------------------------- one batch (in a worker)


@dataclass(frozen=True)
class BatchContext:
    """What the chain says about one settled batch, and what its receipts are checked against."""

    batch: SettledBatch
    redeemed: dict[Pair, int]
    shortfalls: dict[Pair, tuple[int, int]]
    separators: tuple[bytes, bytes]
    nodes: frozenset[bytes]
    rates: dict[bytes, list[tuple[int, int, int]]]


@dataclass
class BatchFindings:
    """The checks of one batch that need nothing from other batches, and what the cross-batch checks need."""

    problems: list[tuple[str, str | None, str]] = field(default_factory=list)  # (check, job, detail)
    usage: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # (job, spender, nonce)
    debts: list[tuple[bytes, Pair, int]] = field(default_factory=list)  # (shortfall batch, pair, amount)
    usage_by_pair: dict[Pair, list[int]] = field(default_factory=dict)  # pair -> [receipts, cost]
    debt_by_pair: dict[Pair, int] = field(default_factory=dict)
    signatures: int = 0


def check_batch(context: BatchContext, body: bytes) -> BatchFindings:
    """Every check of one batch's served receipts against its on-chain record (runs in a pool process)."""
    batch = context.batch
    found = BatchFindings()
    problem = found.problems.append
    receipts: list[dict[str, Any]] = orjson.loads(body).get("receipts") or []
    if len(receipts) != batch.items:
        problem(("receipt_count", None, f"the API serves {len(receipts)} receipts, BatchSettled commits to "
                                        f"{batch.items}"))
    owed: dict[Pair, int] = defaultdict(int)
    leaves: list[bytes] = []
    model_ids: dict[str, bytes] = {}
    for receipt in receipts:
        before = len(leaves)
        try:
            _check_receipt(context, receipt, found, owed, leaves, model_ids)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            problem(("malformed_receipt", str(receipt.get("job_id")) if isinstance(receipt, dict) else None,
                     f"the served receipt cannot be read: {exc.__class__.__name__}: {exc}"))
            if len(leaves) == before:
                leaves.append(b"\x00" * 32)  # no leaf hashes to zero: the root check fails, as it must
    _check_tree(batch, receipts, leaves, problem)
    _check_sums(context, owed, problem)
    return found


def _check_receipt(context: BatchContext, receipt: dict[str, Any], found: BatchFindings, owed: dict[Pair, int],
                   leaves: list[bytes], model_ids: dict[str, bytes]) -> None:
    batch = context.batch
    problem = found.problems.append
    request_sep, receipt_sep = context.separators
    label = str(receipt["job_id"])
    job, payer, spender = _hex(label), _hex(receipt["payer"]), _hex(receipt["spender"])
    cost = int(receipt["cost"])
    pair = (payer, spender)
    leaves.append(leaf_of(job, payer, spender, cost))
    owed[pair] += cost
    if receipt.get("kind") == "debt":
        found.debts.append((job, pair, cost))
        found.debt_by_pair[pair] = found.debt_by_pair.get(pair, 0) + cost
        return
    totals = found.usage_by_pair.setdefault(pair, [0, 0])
    totals[0] += 1
    totals[1] += cost
    request = receipt["request"]
    nonce, max_cost = int(request["nonce"]), int(request["max_cost"])
    found.usage.append((job, spender, nonce))
    name = str(receipt["model"])
    model = model_ids.get(name)
    if model is None:
        model = model_ids[name] = keccak256(name.encode())
    prompt, completion = int(receipt["prompt_tokens"]), int(receipt["completion_tokens"])
    rates = context.rates.get(model, ())
    if cost not in {usage_cost(prompt, completion, i, o) for b, i, o in rates if b <= batch.block}:
        problem(("cost_not_at_published_rate", label, f"cost {cost} is not {prompt} prompt + {completion} "
                                                      f"completion tokens at any RateSet of {name!r}"))
    node = _hex(receipt["node"])
    if node not in context.nodes:
        problem(("unregistered_node", label, f"node {receipt['node']} is not a registered node key"))
    if _hex(request["payer"]) != payer:
        problem(("request_payer", label, "the signed payer is not the receipt's payer"))
    if cost > max_cost:
        problem(("cost_over_max_cost", label, f"cost {cost} is above the signed maxCost {max_cost}"))
    digest = redemption_digest(request_sep, payer, _hex(request["body_hash"]), max_cost, nonce,
                               int(request["deadline"]))
    if digest != _hex(request["digest"]):
        problem(("request_digest", label, "the served request digest is not the EIP-712 digest of the served "
                                          "Redemption fields"))
    signer = recover_signer(digest, _hex(request["signature"]))
    if signer != spender:
        who = "nothing" if signer is None else to_checksum_address(signer)
        problem(("request_signature", label, f"the request signature recovers to {who}, not the spender"))
    node_digest = receipt_digest(receipt_sep, job, payer, spender, model, prompt, completion, cost, digest)
    node_signer = recover_signer(node_digest, _hex(receipt["node_signature"]))
    if node_signer != node:
        who = "nothing" if node_signer is None else to_checksum_address(node_signer)
        problem(("node_signature", label, f"the node receipt signature recovers to {who}, not the node "
                                          f"{to_checksum_address(node)}"))
    found.signatures += 2


def _check_tree(batch: SettledBatch, receipts: list[dict[str, Any]], leaves: list[bytes],
                problem: Callable[[tuple[str, str | None, str]], None]) -> None:
    tree = build_tree(leaves) if leaves else None
    if tree is None or tree.root != batch.root:
        problem(("merkle_root", None, f"the served receipts hash to root "
                                      f"{'none' if tree is None else '0x' + tree.root.hex()}, BatchSettled commits "
                                      f"to 0x{batch.root.hex()}"))
    for receipt, leaf in zip(receipts, leaves, strict=True):
        proof = [_hex(p) for p in receipt.get("merkle_proof") or []]
        # The proof is what an auditor checks one receipt with; equal to ours it needs no hashing.
        if tree is not None and tree.root == batch.root and proof == tree.proof(leaf):
            continue
        if not verify_proof(leaf, proof, batch.root):
            problem(("merkle_proof", str(receipt["job_id"]), "the served proof does not lead from this receipt to "
                                                             "the on-chain receiptsRoot"))


def _check_sums(context: BatchContext, owed: dict[Pair, int],
                problem: Callable[[tuple[str, str | None, str]], None]) -> None:
    """Per (payer, spender): receipts = Redeemed, or = Shortfall.owed with Redeemed = Shortfall.paid."""
    redeemed, shortfalls = context.redeemed, context.shortfalls
    for pair in sorted(set(owed) | set(redeemed) | set(shortfalls)):
        want, paid = owed.get(pair, 0), redeemed.get(pair, 0)
        short = shortfalls.get(pair)
        if short is not None:
            if short[0] != want:
                problem(("shortfall_owed", None, f"{_who(pair)}: receipts sum to {want}, the Shortfall says "
                                                 f"{short[0]} was owed"))
            if short[1] != paid:
                problem(("shortfall_paid", None, f"{_who(pair)}: Redeemed {paid}, the Shortfall says {short[1]} "
                                                 "was paid"))
        elif want != paid:
            problem(("redeemed_sum", None, f"{_who(pair)}: receipts sum to {want}, Redeemed burned {paid}"))
    if sum(redeemed.values()) != context.batch.total:
        problem(("batch_total", None, f"Redeemed logs sum to {sum(redeemed.values())}, BatchSettled.total is "
                                      f"{context.batch.total}"))


# --------------------------------------------------------------------------- the run


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
        nodes = frozenset(self.given_nodes if self.given_nodes is not None else self.api.node_keys())
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
        token, settlement, rate_card = (_hex(contracts[k]) for k in ("token", "settlement", "rate_card"))
        for name, address in (("token", token), ("settlement", settlement), ("rate_card", rate_card)):
            if self.rpc.call("eth_getCode", ["0x" + address.hex(), "latest"]) in ("0x", None):
                raise VerifyError(f"no contract at the {name} address {to_checksum_address(address)} on this chain")
        bound = self.rpc.call("eth_call", [{"to": "0x" + settlement.hex(), "data": "0xfc0c546a"}, "latest"])  # token()
        if _hex(bound)[12:] != token:
            raise VerifyError("the settlement contract the API names does not burn the token it names")
        domain = doc["eip712_domain"]
        if (domain["name"], str(domain["version"]), int(domain["chainId"]), _hex(domain["verifyingContract"])) != (
            REDEMPTION_DOMAIN_NAME, DOMAIN_VERSION, chain_id, settlement
        ):
            raise VerifyError(f"the API's EIP-712 domain {domain} is not Sluice's for this chain and settlement")
        separators = (domain_separator(REDEMPTION_DOMAIN_NAME, chain_id, settlement),
                      domain_separator(RECEIPT_DOMAIN_NAME, chain_id, settlement))
        return token, settlement, rate_card, separators

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
            if tx not in settled_by_tx:  # holders' own burn/burnFrom: explained by their own transaction
                report.direct_burns += 1
                report.direct_burned += burned
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
            if found is None:
                report.discrepancies.append(Discrepancy(
                    "batch_unknown_to_api", f"settled on chain in block {batch.block} with {batch.items} receipts, "
                    "but the API has no such batch", label))
                continue
            report.discrepancies.extend(Discrepancy(check, detail, label, job) for check, job, detail in found.problems)
            report.signatures += found.signatures
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
                        "debt_without_shortfall", f"clears {amount} of {_who(pair)} for no Shortfall of batch "
                        f"0x{origin.hex()}", label, f"0x{origin.hex()}"))
                    continue
                cleared[(origin, pair)] += amount
                if cleared[(origin, pair)] > short[0] - short[1]:
                    report.discrepancies.append(Discrepancy(
                        "debt_over_shortfall", f"{_who(pair)}: clears {cleared[(origin, pair)]} in all, the "
                        f"Shortfall left {short[0] - short[1]} unpaid", label, f"0x{origin.hex()}"))


def verify(rpc_url: str, api: AuditApi, *, node_keys: set[bytes] | None = None, from_block: int = 0,
           workers: int | None = None, progress: Callable[[str, int, int], None] | None = None) -> VerifyReport:
    """Run every check; the report lists each discrepancy (none: the history verifies)."""
    return Verifier(rpc_url, api, node_keys=node_keys, from_block=from_block, workers=workers,
                    progress=progress).run()
