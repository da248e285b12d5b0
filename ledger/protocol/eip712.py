"""The EIP-712 messages of the signed-call protocol, hashed and verified fast.

Three typed messages, all under domains bound to the chain id and the
Settlement contract:
- `Redemption` (domain "Sluice"): a developer's signed API call (DESIGN.md wire protocol);
- `DispatchTicket` (domain "Sluice Dispatch"): the redemption service's order to a node;
- `UsageReceipt` (domain "Sluice Node"): a node's signed statement of what a job used.

Hashing follows EIP-712 for static fields exactly (so eth-account's
`sign_typed_data` produces the same digests); signing and recovery use
coincurve's libsecp256k1 and accept only low-s signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

from coincurve import PrivateKey, PublicKey
from eth_utils.address import to_checksum_address

from ledger.protocol.keccak import keccak256

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
HALF_N = SECP256K1_N // 2

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


keccak = keccak256


class SignatureError(ValueError):
    """A signature is malformed, high-s, or does not recover."""


def _word_address(address: str) -> bytes:
    raw = bytes.fromhex(address[2:] if address.startswith(("0x", "0X")) else address)
    if len(raw) != 20:
        raise ValueError(f"{address!r} is not a 20-byte address")
    return raw.rjust(32, b"\x00")


def _word_uint(value: int) -> bytes:
    if not 0 <= value < 2**256:
        raise ValueError(f"{value} does not fit in uint256")
    return value.to_bytes(32, "big")


def _word_bytes32(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError("expected 32 bytes")
    return value


@cache
def domain_separator(name: str, chain_id: int, verifying_contract: str) -> bytes:
    return keccak(
        keccak(DOMAIN_TYPE.encode())
        + keccak(name.encode())
        + keccak(DOMAIN_VERSION.encode())
        + _word_uint(chain_id)
        + _word_address(verifying_contract)
    )


def typed_digest(separator: bytes, struct_hash: bytes) -> bytes:
    return keccak(b"\x19\x01" + separator + struct_hash)


_REDEMPTION_TYPEHASH = keccak(REDEMPTION_TYPE.encode())
_TICKET_TYPEHASH = keccak(TICKET_TYPE.encode())
_RECEIPT_TYPEHASH = keccak(RECEIPT_TYPE.encode())


@dataclass(frozen=True, slots=True)
class Redemption:
    payer: str
    body_hash: bytes
    max_cost: int
    nonce: int
    deadline: int

    def struct_hash(self) -> bytes:
        return keccak(
            _REDEMPTION_TYPEHASH
            + _word_address(self.payer)
            + _word_bytes32(self.body_hash)
            + _word_uint(self.max_cost)
            + _word_uint(self.nonce)
            + _word_uint(self.deadline)
        )


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
        return keccak(
            _TICKET_TYPEHASH
            + _word_bytes32(self.job_id)
            + _word_address(self.node)
            + _word_address(self.payer)
            + _word_address(self.spender)
            + _word_bytes32(self.model)
            + _word_uint(self.max_tokens)
            + _word_uint(self.input_rate)
            + _word_uint(self.output_rate)
            + _word_bytes32(self.request_digest)
            + _word_uint(self.expires)
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
        return keccak(
            _RECEIPT_TYPEHASH
            + _word_bytes32(self.job_id)
            + _word_address(self.payer)
            + _word_address(self.spender)
            + _word_bytes32(self.model)
            + _word_uint(self.prompt_tokens)
            + _word_uint(self.completion_tokens)
            + _word_uint(self.cost)
            + _word_bytes32(self.request_digest)
        )


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


@lru_cache(maxsize=64)
def _signing_key(private_key: bytes) -> PrivateKey:
    # Building a PrivateKey derives its public key: a service signing every ticket keeps it.
    return PrivateKey(private_key)


def sign_digest(private_key: bytes, digest: bytes) -> bytes:
    """A 65-byte r||s||v signature (v = 27/28, low-s as libsecp256k1 always produces)."""
    sig = _signing_key(private_key).sign_recoverable(digest, hasher=None)
    return sig[:64] + bytes([sig[64] + 27])


def recover_digest(digest: bytes, signature: bytes) -> str:
    """The checksummed address that signed `digest`; SignatureError for malformed or high-s signatures."""
    return to_checksum_address(recover_address(digest, signature))


def recover_address(digest: bytes, signature: bytes) -> bytes:
    """The 20 address bytes that signed `digest` (no checksumming: the hot path compares bytes)."""
    if len(signature) != 65:
        raise SignatureError(f"a signature is 65 bytes, got {len(signature)}")
    v = signature[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1):
        raise SignatureError("signature v must be 27 or 28")
    s = int.from_bytes(signature[32:64], "big")
    if not 0 < s <= HALF_N:
        raise SignatureError("signature s must be in the lower half of the curve order (low-s)")
    r = int.from_bytes(signature[:32], "big")
    if not 0 < r < SECP256K1_N:
        raise SignatureError("signature r is out of range")
    try:
        public = PublicKey.from_signature_and_message(signature[:64] + bytes([v]), digest, hasher=None)
    except Exception as exc:  # libsecp256k1 refuses points that do not recover
        raise SignatureError("signature does not recover to a public key") from exc
    return keccak(public.format(compressed=False)[1:])[12:]
