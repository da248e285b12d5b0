"""The receipts tree must equal OpenZeppelin's StandardMerkleTree, checked against the npm package itself."""

from __future__ import annotations

import os

import pytest
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.protocol.merkle import build_tree, receipt_leaf, verify_proof
from tests.support.ledger import openzeppelin_tree


def receipts(count: int) -> list[tuple[bytes, str, str, int]]:
    accounts = [Account.create().address for _ in range(4)]
    return [(os.urandom(32), accounts[i % 4], accounts[(i * 7) % 4], (i + 1) * 10**15 + i) for i in range(count)]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 64, 257])
def test_root_and_proofs_match_openzeppelin(count: int) -> None:
    rows = receipts(count)
    leaves = [receipt_leaf(*row) for row in rows]
    tree = build_tree(leaves)
    expected = openzeppelin_tree([["0x" + job.hex(), payer, spender, str(cost)] for job, payer, spender, cost in rows])
    assert "0x" + tree.root.hex() == expected["root"]
    proofs = expected["proofs"]
    assert isinstance(proofs, list)
    for leaf, oz_proof in zip(leaves, proofs, strict=True):
        assert ["0x" + p.hex() for p in tree.proof(leaf)] == oz_proof
        assert verify_proof(leaf, tree.proof(leaf), tree.root)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40, unique=True), st.data())
def test_every_member_proves_and_a_tampered_leaf_does_not(leaves: list[bytes], data: st.DataObject) -> None:
    tree = build_tree(leaves)
    for leaf in leaves:
        assert verify_proof(leaf, tree.proof(leaf), tree.root)
    victim = data.draw(st.sampled_from(leaves))
    tampered = bytes([victim[0] ^ 1]) + victim[1:]
    if tampered not in leaves:
        assert not verify_proof(tampered, tree.proof(victim), tree.root)


def test_empty_tree_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one leaf"):
        build_tree([])
