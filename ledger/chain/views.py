"""Contract view functions as raw `eth_call`s: thousands per JSON-RPC batch, decoded without web3's contract layer.

`ContractView` encodes one view of a bound contract (one-word static arguments padded by hand,
the ABI codec otherwise) and decodes its answer; the chain mirror re-reads every key a window
touched with them. `read_direct` reads the figures a hold is checked against straight from the
chain, at one block, for when the mirror lags.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from eth_typing import ABIFunction
from eth_utils.abi import function_abi_to_4byte_selector, get_abi_input_types, get_abi_output_types
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract

from ledger.chain.client import Ledger
from ledger.chain.rpc import RpcError, batch, call, result
from ledger.domain import ChainFigures, effective_budget
from ledger.units import BaseUnits

_WORD_INPUTS = {"address": 20, "bytes32": 32}  # ABI type -> byte length of a one-word static argument


@dataclass(frozen=True)
class ContractView:
    """One view function of a bound contract, encoded for raw JSON-RPC batches (no per-call web3 overhead)."""

    address: str
    selector: bytes
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, contract: Contract, name: str) -> ContractView:
        abi = next(e for e in contract.abi if e.get("type") == "function" and e.get("name") == name)
        fn = cast(ABIFunction, abi)
        selector = function_abi_to_4byte_selector(fn)
        return cls(str(contract.address), selector, tuple(get_abi_input_types(fn)), tuple(get_abi_output_types(fn)))

    def request(self, w3: Web3, args: Sequence[Any], block: int) -> tuple[str, list[Any]]:
        if all(isinstance(a, bytes) and len(a) == _WORD_INPUTS.get(t) for t, a in zip(self.inputs, args, strict=True)):
            # Static one-word arguments (20-byte addresses, bytes32) are just left-padded: the general
            # ABI encoder costs more than the node's answer when thousands of keys are re-read.
            data = self.selector + b"".join(a.rjust(32, b"\x00") for a in args)
        else:
            data = self.selector + w3.codec.encode(self.inputs, args)
        return "eth_call", [{"to": self.address, "data": "0x" + data.hex()}, hex(block)]

    def decode(self, w3: Web3, result: str) -> Any:
        raw = bytes.fromhex(result.removeprefix("0x"))
        if not raw:
            raise RpcError("eth_call", {"message": f"empty answer from {self.address}: no contract at that block"})
        if len(raw) == 32 and self.outputs == ("uint256",):
            return int.from_bytes(raw, "big")
        if len(raw) == 32 and self.outputs == ("bool",) and int.from_bytes(raw, "big") in (0, 1):
            return raw[31] == 1
        values = w3.codec.decode(self.outputs, raw)
        return values[0] if len(values) == 1 else values


def error_selector(contract: Contract, name: str) -> str:
    """The 0x-hex selector of custom error `name` of `contract`, as revert data starts with it."""
    abi = cast(dict[str, Any], next(e for e in contract.abi if e.get("type") == "error" and e.get("name") == name))
    types = ",".join(str(i["type"]) for i in abi.get("inputs", []))
    return "0x" + keccak(text=f"{name}({types})")[:4].hex()


def _address(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        if len(value) != 20:
            raise ValueError(f"an address is 20 bytes, not {len(value)}")
        return value
    return bytes.fromhex(to_checksum_address(value).removeprefix("0x"))


def read_direct(ledger: Ledger, payer: str | bytes, spender: str | bytes) -> ChainFigures:
    """Escrow, pending withdrawal, budget, allowlist and pause for (payer, spender) from the chain, at one block.

    Two round trips: the block number, then one batch of eth_calls pinned to it.
    """
    w3 = ledger.w3
    settlement, token = ledger.settlement, ledger.token
    payer_hex = to_checksum_address(_address(payer))
    spender_hex = to_checksum_address(_address(spender))
    block = int(call(w3, "eth_blockNumber", []), 16)
    views = (
        ContractView.of(settlement, "escrowOf"),
        ContractView.of(settlement, "pendingWithdrawalOf"),
        ContractView.of(settlement, "budgetOf"),
        ContractView.of(token, "isAllowlisted"),
        ContractView.of(token, "paused"),
    )
    args: Iterable[list[Any]] = ([payer_hex], [payer_hex], [payer_hex, spender_hex], [payer_hex], [])
    calls = [view.request(w3, a, block) for view, a in zip(views, args, strict=True)]
    answers = batch(w3, calls, len(calls))
    escrow, pending, budget, allowlisted, paused = (
        view.decode(w3, result(answer, "eth_call")) for view, answer in zip(views, answers, strict=True)
    )
    remaining, scheduled, effective_at = budget
    spendable = None if payer_hex == spender_hex else BaseUnits(effective_budget(remaining, scheduled, effective_at))
    return ChainFigures(BaseUnits(int(escrow)), BaseUnits(int(pending[0])), spendable, bool(allowlisted),
                        bool(paused), block)
