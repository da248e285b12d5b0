"""Typed Python API over the Sluice contracts, bound from the committed artifacts.

Reads go straight to the chain; writes go through one `TxSender` per key and
raise the decoded `ContractRevert` subclass when the contracts refuse them. web3 is imported only
where a write or a web3 connection needs it: over `ledger.chain.light.LightWeb3` every view works
without it (the CLI's read commands).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from ledger.chain.artifacts import abi_of
from ledger.chain.deployment import Deployment
from ledger.domain import Tier, effective_budget, model_id
from ledger.units import BaseUnits

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3
    from web3.contract import Contract
    from web3.contract.contract import ContractFunction

    from ledger.chain.light import LightWeb3
    from ledger.chain.sender import TxResult, TxSender

CONTRACT_ARTIFACTS = {
    "token": "ComputeToken",
    "sale": "TokenSale",
    "rate_card": "RateCard",
    "settlement": "Settlement",
    "payment_token": "TestStablecoin",
    "node_registry": "NodeRegistry",
}

# Which contract holds each role.
ROLE_CONTRACT = {
    "MINTER_ROLE": "token",
    "REDEEMER_ROLE": "token",
    "COMPLIANCE_ROLE": "token",
    "PAUSER_ROLE": "token",
    "AUDITOR_ROLE": "token",
    "SETTLER_ROLE": "settlement",
    "DEPOSITOR_ROLE": "settlement",
    "REGISTRAR_ROLE": "node_registry",
    "ISSUER_ROLE": "sale",
    "RATE_SETTER_ROLE": "rate_card",
}


def role_id(name: str) -> bytes:
    """The bytes32 id of an AccessControl role."""
    return b"\x00" * 32 if name == "DEFAULT_ADMIN_ROLE" else keccak(text=name)



def ref_bytes32(ref: str) -> bytes:
    """An issuance reference as bytes32: its UTF-8 text, right-padded (readable on chain)."""
    raw = ref.encode()
    if len(raw) > 32:
        raise ValueError(f"reference {ref!r} is {len(raw)} bytes; use at most 32")
    return raw.ljust(32, b"\x00")



@dataclass(frozen=True)
class Rate:
    model: str
    input_rate: BaseUnits
    output_rate: BaseUnits
    tier: Tier


@dataclass(frozen=True)
class SettlementItem:
    payer: str
    spender: str
    amount: BaseUnits


@dataclass(frozen=True)
class Redemption:
    payer: str
    spender: str
    amount: BaseUnits


@dataclass(frozen=True)
class Shortfall:
    payer: str
    spender: str
    owed: BaseUnits
    paid: BaseUnits


@dataclass(frozen=True)
class Budget:
    """A spender's budget from a payer's escrow, as Settlement.budgetOf reports it (a cut whose
    time has come shows applied). `scheduled`/`effective_at` describe a pending cut (0, 0 if none)."""

    remaining: BaseUnits
    scheduled: BaseUnits
    effective_at: int

    @property
    def cut_pending(self) -> bool:
        return self.effective_at != 0

    @property
    def effective(self) -> BaseUnits:
        """What admission may count on: a pending cut counts at once."""
        return BaseUnits(effective_budget(self.remaining, self.scheduled, self.effective_at))


@dataclass(frozen=True)
class PendingWithdrawal:
    amount: BaseUnits
    unlocks_at: int  # unix seconds; 0 when none is pending


NODE_STATUS = ("unknown", "active", "retired")


@dataclass(frozen=True)
class NodeRecord:
    """A node's NodeRegistry record; blocks are where it was (last) registered and retired (0 if not)."""

    node: str
    status: str  # one of NODE_STATUS
    registered_block: int
    retired_block: int
    endpoint: str
    tier: str
    region: str

    @property
    def active(self) -> bool:
        return self.status == "active"


def batch_id_of(receipts_root: bytes) -> bytes:
    """The batch id a receipts root settles under: keccak256(abi.encodePacked(receiptsRoot))."""
    return keccak(receipts_root)


@dataclass(frozen=True)
class SettleResult:
    tx: TxResult
    batch_id: bytes
    total: BaseUnits
    redeemed: list[Redemption]
    shortfalls: list[Shortfall]



class Ledger:
    """The Sluice contracts of one deployment."""

    def __init__(self, w3: Web3 | LightWeb3, deployment: Deployment, *, timeout: float = 120.0,
                 confirmations: int = 0) -> None:
        self.w3: Web3 = w3  # type: ignore[assignment]  # a LightWeb3 serves the views: see the module docstring
        self.deployment = deployment
        self.timeout = timeout
        self.confirmations = confirmations
        self.token = self._bind("token")
        self.sale = self._bind("sale")
        self.rate_card = self._bind("rate_card")
        self.settlement = self._bind("settlement")
        self.payment_token = self._bind("payment_token")
        self.node_registry = self._bind("node_registry")
        self._senders: dict[str, TxSender] = {}
        self._senders_lock = threading.Lock()

    def _bind(self, key: str) -> Contract:
        address = to_checksum_address(self.deployment.contracts[key])
        return self.w3.eth.contract(address=address, abi=abi_of(CONTRACT_ARTIFACTS[key]))

    def contract(self, key: str) -> Contract:
        return {
            "token": self.token,
            "sale": self.sale,
            "rate_card": self.rate_card,
            "settlement": self.settlement,
            "payment_token": self.payment_token,
            "node_registry": self.node_registry,
        }[key]

    def sender(self, account: LocalAccount) -> TxSender:
        """The one sender for `account` in this process (shared so nonces never collide)."""
        with self._senders_lock:
            sender = self._senders.get(account.address)
            if sender is None:
                from ledger.chain.sender import TxSender

                sender = TxSender(self.w3, account, timeout=self.timeout, confirmations=self.confirmations)
                self._senders[account.address] = sender
            return sender

    def _call(self, fn: ContractFunction) -> Any:
        try:
            return fn.call()
        except Exception as exc:
            web3_errors = sys.modules.get("web3.exceptions")  # not loaded: no web3 revert (LightWeb3 decodes its own)
            if web3_errors is None or not isinstance(exc, web3_errors.ContractLogicError):
                raise
            from ledger.chain.sender import revert_from

            raise revert_from(exc) from None

    def _permit_deadline(self) -> int:
        """An hour from now by the later of this clock and the chain's (a dev chain's time may run ahead)."""
        chain_now = int(self.w3.eth.get_block("latest")["timestamp"])
        return max(int(time.time()), chain_now) + 3600

    def _transact(self, account: LocalAccount, fn: ContractFunction) -> TxResult:
        tx = {"to": fn.address, "data": fn._encode_transaction_data()}
        return self.sender(account).transact(tx)  # type: ignore[arg-type]

    # -- reads -----------------------------------------------------------------------------
    def balance_of(self, account: str) -> BaseUnits:
        return BaseUnits(self._call(self.token.functions.balanceOf(to_checksum_address(account))))

    def allowance(self, owner: str, spender: str) -> BaseUnits:
        fn = self.token.functions.allowance(to_checksum_address(owner), to_checksum_address(spender))
        return BaseUnits(self._call(fn))

    def total_supply(self) -> BaseUnits:
        return BaseUnits(self._call(self.token.functions.totalSupply()))

    def is_allowlisted(self, account: str) -> bool:
        return bool(self._call(self.token.functions.isAllowlisted(to_checksum_address(account))))

    def paused(self) -> bool:
        return bool(self._call(self.token.functions.paused()))

    def has_role(self, role: str, account: str, *, on: str | None = None) -> bool:
        contract = self.contract(on or ROLE_CONTRACT.get(role, "token"))
        return bool(self._call(contract.functions.hasRole(role_id(role), to_checksum_address(account))))

    def payment_balance(self, account: str) -> int:
        return int(self._call(self.payment_token.functions.balanceOf(to_checksum_address(account))))

    def rate(self, model: str) -> Rate:
        raw = self._call(self.rate_card.functions.rateOf(model_id(model)))
        return Rate(model, BaseUnits(raw[0]), BaseUnits(raw[1]), Tier(raw[2]))

    def rates(self) -> list[Rate]:
        """Every listed model with its rate, in listing order."""
        out: list[Rate] = []
        for mid in self._call(self.rate_card.functions.models()):
            name = self._call(self.rate_card.functions.nameOf(mid))
            try:
                raw = self._call(self.rate_card.functions.rateOf(mid))
            except Exception:  # delisted model: not for sale now
                continue
            out.append(Rate(name, BaseUnits(raw[0]), BaseUnits(raw[1]), Tier(raw[2])))
        return out

    def quote_usage(self, model: str, prompt_tokens: int, completion_tokens: int) -> BaseUnits:
        fn = self.rate_card.functions.quote(model_id(model), prompt_tokens, completion_tokens)
        return BaseUnits(self._call(fn))

    def quote_purchase(self, amount: int) -> tuple[int, int]:
        """(payment cost, tier index) of buying `amount` base units."""
        cost, tier = self._call(self.sale.functions.quote(amount))
        return int(cost), int(tier)

    def sale_tiers(self) -> list[tuple[int, int]]:
        return [(int(t[0]), int(t[1])) for t in self._call(self.sale.functions.tiers())]

    def is_settled(self, batch_id: bytes) -> bool:
        return bool(self._call(self.settlement.functions.isSettled(batch_id)))

    def receipts_root_of(self, batch_id: bytes) -> bytes:
        return bytes(self._call(self.settlement.functions.receiptsRootOf(batch_id)))

    def escrow_of(self, account: str) -> BaseUnits:
        """`account`'s escrow in Settlement, pending withdrawal included."""
        return BaseUnits(self._call(self.settlement.functions.escrowOf(to_checksum_address(account))))

    def pending_withdrawal_of(self, account: str) -> PendingWithdrawal:
        amount, unlocks_at = self._call(self.settlement.functions.pendingWithdrawalOf(to_checksum_address(account)))
        return PendingWithdrawal(BaseUnits(amount), int(unlocks_at))

    def budget_of(self, payer: str, spender: str) -> Budget:
        fn = self.settlement.functions.budgetOf(to_checksum_address(payer), to_checksum_address(spender))
        remaining, scheduled, effective_at = self._call(fn)
        return Budget(BaseUnits(remaining), BaseUnits(scheduled), int(effective_at))

    def unlock_period(self) -> int:
        """Seconds a withdrawal request or budget cut waits before it takes effect."""
        return int(self._call(self.settlement.functions.unlockPeriod()))

    def total_escrowed(self) -> BaseUnits:
        return BaseUnits(self._call(self.settlement.functions.totalEscrowed()))

    def escrow_address(self) -> str:
        """The token's escrow contract (the Settlement address once wired)."""
        return str(self._call(self.token.functions.escrow()))

    def settlement_paused(self) -> bool:
        return bool(self._call(self.settlement.functions.paused()))

    def is_node_active(self, node: str) -> bool:
        return bool(self._call(self.node_registry.functions.isActive(to_checksum_address(node))))

    def node_of(self, node: str) -> NodeRecord:
        raw = self._call(self.node_registry.functions.nodeOf(to_checksum_address(node)))
        status, registered, retired, endpoint, tier, region = raw
        return NodeRecord(to_checksum_address(node), NODE_STATUS[int(status)], int(registered), int(retired),
                          str(endpoint), str(tier), str(region))

    def nodes(self) -> list[NodeRecord]:
        """Every node key ever registered, in registration order, with its record."""
        return [self.node_of(a) for a in self._call(self.node_registry.functions.nodes())]

    # -- operator writes -------------------------------------------------------------------
    def set_allowlisted(self, signer: LocalAccount, account: str, allowed: bool) -> TxResult:
        return self._transact(signer, self.token.functions.setAllowlisted(to_checksum_address(account), allowed))

    def mint(self, signer: LocalAccount, to: str, amount: int) -> TxResult:
        return self._transact(signer, self.token.functions.mint(to_checksum_address(to), amount))

    def issue(self, signer: LocalAccount, to: str, amount: int, ref: str, *, into_escrow: bool = False) -> TxResult:
        """Issue `amount` against `ref` to `to`'s wallet, or straight into its escrow."""
        issue = self.sale.functions.issueToEscrow if into_escrow else self.sale.functions.issue
        return self._transact(signer, issue(to_checksum_address(to), amount, ref_bytes32(ref)))

    def set_escrow(self, signer: LocalAccount, escrow: str) -> TxResult:
        return self._transact(signer, self.token.functions.setEscrow(to_checksum_address(escrow)))

    def set_unlock_period(self, signer: LocalAccount, seconds: int) -> TxResult:
        return self._transact(signer, self.settlement.functions.setUnlockPeriod(seconds))

    def credit_minted(self, signer: LocalAccount, account: str, amount: int) -> TxResult:
        return self._transact(signer, self.settlement.functions.creditMinted(to_checksum_address(account), amount))

    def pause_settlement(self, signer: LocalAccount) -> TxResult:
        return self._transact(signer, self.settlement.functions.pause())

    def unpause_settlement(self, signer: LocalAccount) -> TxResult:
        return self._transact(signer, self.settlement.functions.unpause())

    def register_node(self, signer: LocalAccount, node: str, endpoint: str, tier: str, region: str) -> TxResult:
        fn = self.node_registry.functions.register(to_checksum_address(node), endpoint, tier, region)
        return self._transact(signer, fn)

    def update_node(self, signer: LocalAccount, node: str, endpoint: str, tier: str, region: str) -> TxResult:
        fn = self.node_registry.functions.update(to_checksum_address(node), endpoint, tier, region)
        return self._transact(signer, fn)

    def retire_node(self, signer: LocalAccount, node: str) -> TxResult:
        return self._transact(signer, self.node_registry.functions.retire(to_checksum_address(node)))

    def set_rate(self, signer: LocalAccount, model: str, input_rate: int, output_rate: int, tier: Tier) -> TxResult:
        return self._transact(signer, self.rate_card.functions.setRate(model, input_rate, output_rate, int(tier)))

    def pause(self, signer: LocalAccount) -> TxResult:
        return self._transact(signer, self.token.functions.pause())

    def unpause(self, signer: LocalAccount) -> TxResult:
        return self._transact(signer, self.token.functions.unpause())

    def grant_role(self, signer: LocalAccount, role: str, account: str, *, on: str | None = None) -> TxResult:
        """Grant `role` on its contract (`on` names another: PAUSER_ROLE lives on token and settlement)."""
        contract = self.contract(on or ROLE_CONTRACT.get(role, "token"))
        return self._transact(signer, contract.functions.grantRole(role_id(role), to_checksum_address(account)))

    def revoke_role(self, signer: LocalAccount, role: str, account: str, *, on: str | None = None) -> TxResult:
        contract = self.contract(on or ROLE_CONTRACT.get(role, "token"))
        return self._transact(signer, contract.functions.revokeRole(role_id(role), to_checksum_address(account)))

    def mint_payment(self, signer: LocalAccount, to: str, amount: int) -> TxResult:
        """Fund a wallet with the embedded chain's test stablecoin."""
        return self._transact(signer, self.payment_token.functions.mint(to_checksum_address(to), amount))

    # -- holder writes ---------------------------------------------------------------------
    def approve(self, signer: LocalAccount, spender: str, amount: int) -> TxResult:
        return self._transact(signer, self.token.functions.approve(to_checksum_address(spender), amount))

    def transfer(self, signer: LocalAccount, to: str, amount: int) -> TxResult:
        return self._transact(signer, self.token.functions.transfer(to_checksum_address(to), amount))

    def buy(self, signer: LocalAccount, amount: int, max_cost: int | None = None, *, permit: bool = True,
            into_escrow: bool = False) -> TxResult:
        """Buy `amount` base units with the payment token (a permit, else approve), to the wallet or
        straight into the buyer's escrow."""
        cost, _tier = self.quote_purchase(amount)
        limit = cost if max_cost is None else max_cost
        sale = self.sale.functions
        if permit:
            deadline = self._permit_deadline()
            v, r, s = self.sign_permit(self.payment_token, signer, self.sale.address, limit, deadline)
            buy_permit = sale.buyToEscrowWithPermit if into_escrow else sale.buyWithPermit
            return self._transact(signer, buy_permit(amount, limit, deadline, v, r, s))
        self._transact(signer, self.payment_token.functions.approve(self.sale.address, limit))
        return self._transact(signer, (sale.buyToEscrow if into_escrow else sale.buy)(amount, limit))

    # -- escrow and budgets ----------------------------------------------------------------
    def deposit(self, signer: LocalAccount, amount: int, *, permit: bool = True) -> TxResult:
        """Move `amount` of the signer's tokens into its escrow (one permit transaction, else approve + deposit)."""
        if permit:
            deadline = self._permit_deadline()
            v, r, s = self.sign_permit(self.token, signer, self.settlement.address, amount, deadline)
            return self.deposit_with_permit(signer, amount, deadline, v, r, s)
        self.approve(signer, self.settlement.address, amount)
        return self._transact(signer, self.settlement.functions.deposit(amount))

    def deposit_with_permit(self, signer: LocalAccount, amount: int, deadline: int,
                            v: int, r: bytes, s: bytes) -> TxResult:
        return self._transact(signer, self.settlement.functions.depositWithPermit(amount, deadline, v, r, s))

    def deposit_for(self, signer: LocalAccount, account: str, amount: int, *, approve: bool = True) -> TxResult:
        """Fund `account`'s escrow from the signer's wallet (approving Settlement first unless told not to)."""
        if approve:
            self.approve(signer, self.settlement.address, amount)
        return self._transact(signer, self.settlement.functions.depositFor(to_checksum_address(account), amount))

    def request_withdrawal(self, signer: LocalAccount, amount: int) -> TxResult:
        """Ask to withdraw `amount` of the signer's escrow after the unlock period (0 cancels)."""
        return self._transact(signer, self.settlement.functions.requestWithdrawal(amount))

    def withdraw(self, signer: LocalAccount) -> TxResult:
        """Complete the signer's unlocked withdrawal."""
        return self._transact(signer, self.settlement.functions.withdraw())

    def set_budget(self, signer: LocalAccount, spender: str, amount: int) -> TxResult:
        """Set `spender`'s budget from the signer's escrow: a raise applies now, a cut after the unlock period."""
        return self._transact(signer, self.settlement.functions.setBudget(to_checksum_address(spender), amount))

    def sign_permit(
        self, token: Contract, owner: LocalAccount, spender: str, value: int, deadline: int, nonce: int | None = None
    ) -> tuple[int, bytes, bytes]:
        """An EIP-2612 permit signature (v, r, s) by `owner` on `token`."""
        if nonce is None:
            nonce = int(token.functions.nonces(owner.address).call())
        fields = token.functions.eip712Domain().call()
        domain = {"name": fields[1], "version": fields[2], "chainId": fields[3], "verifyingContract": fields[4]}
        message = {"owner": owner.address, "spender": to_checksum_address(spender), "value": value,
                   "nonce": nonce, "deadline": deadline}
        types = {"Permit": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"},
                            {"name": "value", "type": "uint256"}, {"name": "nonce", "type": "uint256"},
                            {"name": "deadline", "type": "uint256"}]}
        signed = owner.sign_typed_data(domain, types, message)
        return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")

    def permit(self, signer: LocalAccount, owner: str, spender: str, value: int, deadline: int,
               v: int, r: bytes, s: bytes) -> TxResult:
        fn = self.token.functions.permit(to_checksum_address(owner), to_checksum_address(spender), value,
                                         deadline, v, r, s)
        return self._transact(signer, fn)

    # -- settlement ------------------------------------------------------------------------
    def settle_fn(self, root: bytes, receipt_count: int, items: Sequence[SettlementItem]) -> ContractFunction:
        rows = [(to_checksum_address(i.payer), to_checksum_address(i.spender), int(i.amount)) for i in items]
        return self.settlement.functions.settle(root, receipt_count, rows)

    def settle_batch(self, signer: LocalAccount, root: bytes, receipt_count: int,
                     items: Sequence[SettlementItem]) -> SettleResult:
        """Submit the batch of receipts under `root` and wait for it; returns what was burned and any
        shortfalls. The batch id is `batch_id_of(root)`."""
        tx = self._transact(signer, self.settle_fn(root, receipt_count, items))
        return self.settle_result(tx)

    def settle_result(self, tx: TxResult) -> SettleResult:
        from web3.logs import DISCARD

        events = self.settlement.events
        redeemed = [Redemption(e["args"]["payer"], e["args"]["spender"], BaseUnits(e["args"]["amount"]))
                    for e in events.Redeemed().process_receipt(tx.receipt, errors=DISCARD)]
        shortfalls = [Shortfall(e["args"]["payer"], e["args"]["spender"], BaseUnits(e["args"]["owed"]),
                                BaseUnits(e["args"]["paid"]))
                      for e in events.Shortfall().process_receipt(tx.receipt, errors=DISCARD)]
        settled = events.BatchSettled().process_receipt(tx.receipt, errors=DISCARD)
        args = settled[0]["args"]
        return SettleResult(tx, bytes(args["batchId"]), BaseUnits(args["total"]), redeemed, shortfalls)
