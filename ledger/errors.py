"""The ledger's exception tree, mirroring the contracts' custom errors.

Every revert is decoded against the ABIs of all Sluice contracts (and the
OpenZeppelin errors they inherit), so callers catch `NotAllowlisted` or
`InsufficientBalance` with the failing values instead of parsing strings.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from ledger.chain.artifacts import CONTRACT_NAMES, abi_of


class LedgerError(Exception):
    """Base of every error raised by the ledger package."""


class ChainUnavailable(LedgerError):
    """The JSON-RPC endpoint did not answer."""


class TransactionTimeout(LedgerError):
    """A sent transaction was not mined (or not confirmed) in time."""

    def __init__(self, message: str, tx_hash: str) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class DeploymentMissing(LedgerError):
    """No Sluice deployment is recorded for the chain."""


class SettlementPending(LedgerError):
    """A batch's transaction is not mined or not confirmed yet: try again later."""


class SettlementMismatch(LedgerError):
    """What the chain recorded for a batch disagrees with the stored batch."""


class DebtNotCovered(LedgerError):
    """The payer's balance or allowance does not cover its debts yet."""


class VerifyError(LedgerError):
    """An audit could not run (not a discrepancy: the API refused, the chain does not answer, ...)."""


class ContractRevert(LedgerError):
    """A call or transaction reverted. `error` is the custom error's name, `args` its values."""

    def __init__(self, error: str, args: dict[str, Any], data: str, tx_hash: str | None = None) -> None:
        self.error = error
        self.args_by_name = args
        self.data = data
        self.tx_hash = tx_hash
        values = ", ".join(f"{k}={_show(v)}" for k, v in args.items())
        super().__init__(f"{error}({values})" if error else f"reverted without reason (data {data or '0x'})")

    @property
    def values(self) -> tuple[Any, ...]:
        return tuple(self.args_by_name.values())


class NotAllowlisted(ContractRevert):
    """ComputeTokenNotAllowlisted: the account must be allowlisted by the operator."""


class Unauthorized(ContractRevert):
    """AccessControlUnauthorizedAccount / OwnableUnauthorizedAccount: the key lacks a role."""


class Paused(ContractRevert):
    """EnforcedPause: the token is paused."""


class InsufficientBalance(ContractRevert):
    """ERC20InsufficientBalance."""


class InsufficientAllowance(ContractRevert):
    """ERC20InsufficientAllowance."""


class PermitRejected(ContractRevert):
    """ERC2612ExpiredSignature / ERC2612InvalidSigner: the permit is expired, replayed or forged."""


class BatchAlreadySettled(ContractRevert):
    """SettlementBatchAlreadySettled: the receipts root (its batch id) is already settled on chain."""


class InvalidBatch(ContractRevert):
    """SettlementInvalidBatch."""


class WithdrawalLocked(ContractRevert):
    """SettlementWithdrawalLocked: the withdrawal's unlock time has not come."""


class WithdrawalRefused(ContractRevert):
    """SettlementWithdrawalAboveEscrow / SettlementNoWithdrawalPending."""


class BudgetRefused(ContractRevert):
    """SettlementBudgetTooLarge / SettlementInvalidSpender."""


class EscrowTransferRefused(ContractRevert):
    """ComputeTokenDirectEscrowTransfer: tokens enter escrow only through Settlement's deposit paths."""


class NodeRegistryRefused(ContractRevert):
    """A NodeRegistry error: already registered, retired for good, not active, bad tier or endpoint."""


class PaymentShort(ContractRevert):
    """TokenSalePaymentShort: the buyer lacks payment tokens or allowance."""


class CostAboveMax(ContractRevert):
    """TokenSaleCostAboveMax: the quote rose above the buyer's limit."""


class UnknownModel(ContractRevert):
    """RateCardUnknownModel."""


ERROR_CLASSES: dict[str, type[ContractRevert]] = {
    "ComputeTokenNotAllowlisted": NotAllowlisted,
    "AccessControlUnauthorizedAccount": Unauthorized,
    "OwnableUnauthorizedAccount": Unauthorized,
    "EnforcedPause": Paused,
    "ERC20InsufficientBalance": InsufficientBalance,
    "ERC20InsufficientAllowance": InsufficientAllowance,
    "ERC2612ExpiredSignature": PermitRejected,
    "ERC2612InvalidSigner": PermitRejected,
    "SettlementBatchAlreadySettled": BatchAlreadySettled,
    "SettlementInvalidBatch": InvalidBatch,
    "SettlementNotAllowlisted": NotAllowlisted,
    "SettlementWithdrawalLocked": WithdrawalLocked,
    "SettlementWithdrawalAboveEscrow": WithdrawalRefused,
    "SettlementNoWithdrawalPending": WithdrawalRefused,
    "SettlementBudgetTooLarge": BudgetRefused,
    "SettlementInvalidSpender": BudgetRefused,
    "ComputeTokenDirectEscrowTransfer": EscrowTransferRefused,
    "NodeRegistryAlreadyRegistered": NodeRegistryRefused,
    "NodeRegistryNodeRetired": NodeRegistryRefused,
    "NodeRegistryNotActive": NodeRegistryRefused,
    "NodeRegistryInvalidNode": NodeRegistryRefused,
    "NodeRegistryInvalidTier": NodeRegistryRefused,
    "NodeRegistryInvalidEndpoint": NodeRegistryRefused,
    "TokenSalePaymentShort": PaymentShort,
    "TokenSaleCostAboveMax": CostAboveMax,
    "RateCardUnknownModel": UnknownModel,
}


def _show(value: Any) -> str:
    return "0x" + value.hex() if isinstance(value, bytes) else str(value)


def _canonical_type(param: dict[str, Any]) -> str:
    kind: str = param["type"]
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in param["components"])
        return f"({inner}){kind[5:]}"
    return kind


@cache
def _error_table() -> dict[bytes, tuple[str, list[str], list[str]]]:
    from eth_utils.crypto import keccak  # imported on first decode: every command imports this module

    table: dict[bytes, tuple[str, list[str], list[str]]] = {
        keccak(text="Error(string)")[:4]: ("Error", ["message"], ["string"]),
        keccak(text="Panic(uint256)")[:4]: ("Panic", ["code"], ["uint256"]),
    }
    for contract in CONTRACT_NAMES:
        for entry in abi_of(contract):
            if entry.get("type") != "error":
                continue
            types = [_canonical_type(p) for p in entry["inputs"]]
            names = [p["name"] or f"arg{i}" for i, p in enumerate(entry["inputs"])]
            selector = keccak(text=f"{entry['name']}({','.join(types)})")[:4]
            table[selector] = (entry["name"], names, types)
    return table


def decode_revert(data: str | bytes | None, tx_hash: str | None = None) -> ContractRevert:
    """Turn raw revert data into the matching ContractRevert subclass with named values."""
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else (data or b"")
    hex_data = "0x" + raw.hex()
    known = _error_table().get(raw[:4])
    if known is None:
        return ContractRevert("", {}, hex_data, tx_hash)
    from eth_abi.abi import decode as abi_decode
    from eth_utils.address import to_checksum_address

    name, names, types = known
    try:
        values = abi_decode(types, raw[4:])
    except Exception:  # malformed revert payload: keep the raw data for the operator
        return ContractRevert(name, {}, hex_data, tx_hash)
    args = {n: to_checksum_address(v) if t == "address" else v for n, t, v in zip(names, types, values, strict=True)}
    return ERROR_CLASSES.get(name, ContractRevert)(name, args, hex_data, tx_hash)
