"""The EIP-712 messages of the signed-call protocol and their domains, hashed fast.

Three typed messages, all under domains bound to the chain id and the
Settlement contract:
- `Redemption` (domain "Sluice"): a developer's signed API call (DESIGN.md wire protocol);
- `DispatchTicket` (domain "Sluice Dispatch"): the redemption service's order to a node;
- `UsageReceipt` (domain "Sluice Node"): a node's signed statement of what a job used.

Hashing follows EIP-712 for static fields exactly (so eth-account's
`sign_typed_data` produces the same digests); signing and recovery are
`ledger.protocol.secp256k1`. `redemption_hash` and `receipt_hash` are the struct
hashes of the messages the verifier recomputes per receipt, taking addresses as raw
bytes too; the dataclasses' `struct_hash` is the same function.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ledger.protocol.abi import address_word, bytes32_word, uint_word
from ledger.protocol.address import to_checksum_address
from ledger.protocol.keccak import keccak256

REDEMPTION_TYPE = "Redemption(address payer,bytes32 bodyHash,uint256 maxCost,uint256 nonce,uint256 deadline)"
TICKET_TYPE = (
    "DispatchTicket(bytes32 jobId,address node,address payer,address spender,bytes32 model,uint256 maxTokens,"
    "uint256 inputRate,uint256 outputRate,bytes32 requestDigest,uint256 expires)"
)
RECEIPT_TYPE = (
    "UsageReceipt(bytes32 jobId,address payer,address spender,bytes32 model,uint256 promptTokens,"
    "uint256 completionTokens,uint256 cost,bytes32 requestDigest)"
)
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"

REDEMPTION_DOMAIN_NAME = "Sluice"
TICKET_DOMAIN_NAME = "Sluice Dispatch"
RECEIPT_DOMAIN_NAME = "Sluice Node"
DOMAIN_VERSION = "1"


def type_fields(type_string: str) -> list[dict[str, str]]:
    """`Name(t1 a,t2 b)` as the `[{"name": "a", "type": "t1"}, ...]` list of eth_signTypedData_v4."""
    fields = type_string[type_string.index("(") + 1:-1].split(",")
    return [{"name": name, "type": kind} for kind, name in (field.split(" ") for field in fields)]


# What a wallet's eth_signTypedData_v4 takes as `types` to sign a call (DESIGN.md "The signed call").
REDEMPTION_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": type_fields(DOMAIN_TYPE),
    "Redemption": type_fields(REDEMPTION_TYPE),
}
REDEMPTION_PRIMARY_TYPE = "Redemption"


@cache
def domain_separator(name: str, chain_id: int, verifying_contract: str) -> bytes:
    """The EIP712Domain(name, version "1", chainId, verifyingContract) separator of one Sluice domain."""
    return keccak256(
        keccak256(DOMAIN_TYPE.encode())
        + keccak256(name.encode())
        + keccak256(DOMAIN_VERSION.encode())
        + uint_word(chain_id)
        + address_word(verifying_contract)
    )


def typed_digest(separator: bytes, struct_hash: bytes) -> bytes:
    """The digest that is signed: keccak256(0x1901 || domain separator || struct hash)."""
    return keccak256(b"\x19\x01" + separator + struct_hash)


_REDEMPTION_TYPEHASH = keccak256(REDEMPTION_TYPE.encode())
_TICKET_TYPEHASH = keccak256(TICKET_TYPE.encode())
_RECEIPT_TYPEHASH = keccak256(RECEIPT_TYPE.encode())


def redemption_hash(payer: str | bytes, body_hash: bytes, max_cost: int, nonce: int, deadline: int) -> bytes:
    """The EIP-712 struct hash of `Redemption(payer, bodyHash, maxCost, nonce, deadline)`."""
    return keccak256(
        _REDEMPTION_TYPEHASH
        + address_word(payer)
        + bytes32_word(body_hash)
        + uint_word(max_cost)
        + uint_word(nonce)
        + uint_word(deadline)
    )


def receipt_hash(job_id: bytes, payer: str | bytes, spender: str | bytes, model: bytes, prompt_tokens: int,
                 completion_tokens: int, cost: int, request_digest: bytes) -> bytes:
    """The EIP-712 struct hash of `UsageReceipt(jobId, payer, spender, model, ..., cost, requestDigest)`."""
    return keccak256(
        _RECEIPT_TYPEHASH
        + bytes32_word(job_id)
        + address_word(payer)
        + address_word(spender)
        + bytes32_word(model)
        + uint_word(prompt_tokens)
        + uint_word(completion_tokens)
        + uint_word(cost)
        + bytes32_word(request_digest)
    )


@dataclass(frozen=True, slots=True)
class Redemption:
    payer: str
    body_hash: bytes
    max_cost: int
    nonce: int
    deadline: int

    def struct_hash(self) -> bytes:
        return redemption_hash(self.payer, self.body_hash, self.max_cost, self.nonce, self.deadline)


@dataclass(frozen=True, slots=True)
class DispatchTicket:
    job_id: bytes
    node: str
    payer: str
    spender: str
    model: bytes
    max_tokens: int
    input_rate: int
    output_rate: int
    request_digest: bytes
    expires: int

    def struct_hash(self) -> bytes:
        return keccak256(
            _TICKET_TYPEHASH
            + bytes32_word(self.job_id)
            + address_word(self.node)
            + address_word(self.payer)
            + address_word(self.spender)
            + bytes32_word(self.model)
            + uint_word(self.max_tokens)
            + uint_word(self.input_rate)
            + uint_word(self.output_rate)
            + bytes32_word(self.request_digest)
            + uint_word(self.expires)
        )


@dataclass(frozen=True, slots=True)
class UsageReceipt:
    job_id: bytes
    payer: str
    spender: str
    model: bytes
    prompt_tokens: int
    completion_tokens: int
    cost: int
    request_digest: bytes

    def struct_hash(self) -> bytes:
        return receipt_hash(self.job_id, self.payer, self.spender, self.model, self.prompt_tokens,
                            self.completion_tokens, self.cost, self.request_digest)


@dataclass(frozen=True)
class Domains:
    """The three domain separators of one deployment."""

    chain_id: int
    verifying_contract: str

    @property
    def redemption(self) -> bytes:
        return domain_separator(REDEMPTION_DOMAIN_NAME, self.chain_id, self.verifying_contract)

    @property
    def ticket(self) -> bytes:
        return domain_separator(TICKET_DOMAIN_NAME, self.chain_id, self.verifying_contract)

    @property
    def receipt(self) -> bytes:
        return domain_separator(RECEIPT_DOMAIN_NAME, self.chain_id, self.verifying_contract)

    def eth_account_domain(self, name: str = REDEMPTION_DOMAIN_NAME) -> dict[str, object]:
        """The domain as eth-account's `sign_typed_data` takes it."""
        return {"name": name, "version": DOMAIN_VERSION, "chainId": self.chain_id,
                "verifyingContract": to_checksum_address(self.verifying_contract)}

