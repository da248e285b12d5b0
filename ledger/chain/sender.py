"""One transaction sender per key, and waiting for a transaction's receipt.

`TxSender` is safe under concurrent callers: nonces are handed out under a lock,
a nonce is consumed only once the node accepted the transaction (so none is
skipped), and a node that reports the nonce as used makes the sender resync
(so none collides). It works on EIP-1559 chains and on zero-gas-price
permissioned chains, where wallets hold no ether at all.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams, TxReceipt

from ledger.errors import ChainUnavailable, ContractRevert, TransactionTimeout, decode_revert

_NONCE_ERRORS = ("nonce too low", "already known", "nonce has already been used", "replacement transaction")


def revert_from(exc: ContractLogicError, tx_hash: str | None = None) -> ContractRevert:
    """Decode web3's revert exception into the ledger's typed exception."""
    data = exc.data if isinstance(exc.data, str) else None
    return decode_revert(data, tx_hash)


@dataclass(frozen=True)
class TxResult:
    """A mined, successful transaction."""

    tx_hash: str
    block_number: int
    gas_used: int
    nonce: int
    receipt: TxReceipt


class TxSender:
    """Signs and sends transactions from one key; share one instance per key per process."""

    def __init__(self, w3: Web3, account: LocalAccount, *, timeout: float = 120.0, confirmations: int = 0) -> None:
        self.w3 = w3
        self.account = account
        self.address = account.address
        self.timeout = timeout
        self.confirmations = confirmations
        self._lock = threading.Lock()
        self._next_nonce: int | None = None
        self._chain_id = w3.eth.chain_id

    # -- fees ---------------------------------------------------------------------------
    def fee_fields(self) -> dict[str, int]:
        """Fee fields for a new transaction: EIP-1559 when the chain has a base fee, else legacy."""
        block = self.w3.eth.get_block("latest")
        base_fee = block.get("baseFeePerGas")
        if base_fee is None:
            return {"gasPrice": int(self.w3.eth.gas_price)}
        if base_fee == 0:
            # Free-gas permissioned chain: no tip either, so ether-less wallets can send. (A node that
            # still demands a tip refuses the transaction with its own message.)
            return {"maxFeePerGas": 0, "maxPriorityFeePerGas": 0}
        tip = int(self.w3.eth.max_priority_fee)
        return {"maxFeePerGas": 2 * int(base_fee) + tip, "maxPriorityFeePerGas": tip}

    # -- sending ------------------------------------------------------------------------
    def build(self, tx: TxParams) -> TxParams:
        """Fill `from`, chain id, fees and gas; estimating gas surfaces reverts before a nonce is used."""
        params: dict[str, Any] = dict(tx)
        params["from"] = self.address
        params["chainId"] = self._chain_id
        params.setdefault("value", 0)
        if "gasPrice" not in params and "maxFeePerGas" not in params:
            params.update(self.fee_fields())
        if "gas" not in params:
            try:
                estimate = self.w3.eth.estimate_gas(params)  # type: ignore[arg-type]
            except ContractLogicError as exc:
                raise revert_from(exc) from None
            params["gas"] = estimate * 6 // 5 + 10_000  # headroom for state that moves before mining
        return params  # type: ignore[return-value]

    def send(self, tx: TxParams, *, nonce: int | None = None) -> tuple[str, int]:
        """Sign and broadcast; returns (tx hash, nonce). Does not wait for mining."""
        params = self.build(tx)
        with self._lock:
            for _attempt in range(3):
                use_nonce = nonce if nonce is not None else self._allocate()
                params["nonce"] = use_nonce  # type: ignore[typeddict-item]  # web3 types it as Nonce
                signed = self.account.sign_transaction(params)  # type: ignore[arg-type]
                try:
                    tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
                except Web3RPCError as exc:
                    message = str(exc).lower()
                    if nonce is None and any(s in message for s in _NONCE_ERRORS):
                        self._next_nonce = None  # another process used this key: resync and retry
                        continue
                    raise
                except (requests.ConnectionError, requests.Timeout) as exc:
                    self._next_nonce = None  # unknown whether the node took it: resync next time
                    raise ChainUnavailable(f"the chain did not answer while sending: {exc}") from exc
                if nonce is None:
                    self._next_nonce = use_nonce + 1
                return "0x" + bytes(tx_hash).hex(), use_nonce
        raise ChainUnavailable(f"could not find a free nonce for {self.address} after 3 resyncs")

    def _allocate(self) -> int:
        pending = self.w3.eth.get_transaction_count(self.address, "pending")
        # Every transaction this sender handed to the node is mined or in its pool, so a cached nonce above
        # the pending count means some were lost (a chain restored from an older state, a dropped
        # transaction): continue from the chain's count instead of queueing behind a gap forever.
        if self._next_nonce is None or self._next_nonce > pending:
            self._next_nonce = pending
        return self._next_nonce

    def transact(self, tx: TxParams) -> TxResult:
        """Send and wait for the receipt; raise the decoded ContractRevert if it failed."""
        tx_hash, nonce = self.send(tx)
        return self.wait(tx_hash, nonce, tx)

    def wait(self, tx_hash: str, nonce: int, tx: TxParams | None = None) -> TxResult:
        try:
            receipt = wait_for_receipt(self.w3, tx_hash, self.timeout, self.confirmations)
        except TransactionTimeout:
            with self._lock:
                self._next_nonce = None  # resync on the next send; the caller may replace this nonce
            raise
        if receipt["status"] != 1:
            raise self._explain_failure(tx_hash, receipt, tx)
        return TxResult(tx_hash, int(receipt["blockNumber"]), int(receipt["gasUsed"]), nonce, receipt)

    def _explain_failure(self, tx_hash: str, receipt: TxReceipt, tx: TxParams | None) -> ContractRevert:
        if tx is None:
            return decode_revert(None, tx_hash)
        call = {k: v for k, v in dict(tx).items() if k in ("to", "data", "value")}
        call["from"] = self.address
        mined = int(receipt["blockNumber"])
        # Replay to learn the revert reason: first against the state before the block, then against the
        # state after it — a transaction ahead of this one in the same block (a settlement burning the
        # escrow a withdrawal asked for, on a chain with a block time) is only in the latter.
        for block in (mined - 1, mined):
            try:
                self.w3.eth.call(call, block)  # type: ignore[arg-type]
            except ContractLogicError as exc:
                return revert_from(exc, tx_hash)
        return decode_revert(None, tx_hash)


def wait_for_receipt(w3: Web3, tx_hash: str, timeout: float, confirmations: int = 0) -> TxReceipt:
    """Poll for a receipt (fast first, backing off to 0.1 s), then for `confirmations` more blocks."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    receipt: TxReceipt | None = None
    while True:
        try:
            receipt = w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        except TransactionNotFound:
            receipt = None
        if receipt is not None and w3.eth.block_number >= int(receipt["blockNumber"]) + confirmations:
            return receipt
        if time.monotonic() > deadline:
            state = "not mined" if receipt is None else f"mined, waiting for {confirmations} confirmations"
            raise TransactionTimeout(f"transaction {tx_hash} {state} after {timeout:.0f} s", tx_hash)
        time.sleep(delay)
        delay = min(delay * 2, 0.1)  # a block is 1-2 s on a QBFT chain: notice it within 0.1 s

