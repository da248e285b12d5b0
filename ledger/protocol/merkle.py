"""The receipts Merkle tree, exactly as OpenZeppelin's StandardMerkleTree builds it.

Leaf: keccak256(bytes.concat(keccak256(abi.encode(jobId, payer, spender, cost)))) with
types (bytes32, address, address, uint256); leaves sorted by hash; the tree laid out
as a complete binary tree in an array; pairs hashed sorted, as MerkleProof expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ledger.protocol.abi import address_word, bytes32_word, uint_word
from ledger.protocol.keccak import keccak256


def receipt_leaf(job_id: bytes, payer: str | bytes, spender: str | bytes, cost: int) -> bytes:
    """The double-hashed leaf of one receipt (static ABI encoding is four 32-byte words); addresses 0x-hex or raw."""
    encoded = bytes32_word(job_id) + address_word(payer) + address_word(spender) + uint_word(cost)
    return keccak256(keccak256(encoded))


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak256(a + b if a <= b else b + a)


@dataclass(frozen=True)
class MerkleTree:
    """A built tree; `index_of[leaf]` is the leaf's position in `tree`."""

    tree: tuple[bytes, ...]
    index_of: dict[bytes, int]

    @property
    def root(self) -> bytes:
        return self.tree[0]

    def proof(self, leaf: bytes) -> list[bytes]:
        """Sibling hashes from `leaf` up to the root."""
        index = self.index_of[leaf]
        proof: list[bytes] = []
        while index > 0:
            proof.append(self.tree[index + 1 if index % 2 else index - 1])
            index = (index - 1) // 2
        return proof


def build_tree(leaves: Sequence[bytes]) -> MerkleTree:
    """Build the StandardMerkleTree over leaf hashes (they are sorted here)."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    ordered = sorted(leaves)
    size = 2 * len(ordered) - 1
    tree: list[bytes] = [b""] * size
    for i, leaf in enumerate(ordered):
        tree[size - 1 - i] = leaf
    for i in range(size - 1 - len(ordered), -1, -1):
        tree[i] = hash_pair(tree[2 * i + 1], tree[2 * i + 2])
    return MerkleTree(tuple(tree), {leaf: size - 1 - i for i, leaf in enumerate(ordered)})


def verify_proof(leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """OpenZeppelin MerkleProof.verify."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
