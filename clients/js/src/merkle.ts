/**
 * The receipts Merkle tree, as OpenZeppelin's StandardMerkleTree builds it and MerkleProof checks it.
 *
 * Leaf: `keccak256(bytes.concat(keccak256(abi.encode(bytes32 jobId, address payer, address spender,
 * uint256 cost))))`; leaves sorted by value; the tree laid out as a complete binary tree in an array
 * (root first, leaves last in reverse order); pairs hashed sorted.
 */

import { type Address, concat, encodeAbiParameters, type Hex, keccak256 } from 'viem';

import { SluiceProtocolError } from './errors.js';
import { toAddress, toBytes32, toUint256 } from './values.js';

/** The four fields of a receipt that its leaf commits to (cost in base units). */
export interface LeafFields {
  jobId: Hex;
  payer: Address;
  spender: Address;
  cost: bigint;
}

const LEAF_TYPES = [{ type: 'bytes32' }, { type: 'address' }, { type: 'address' }, { type: 'uint256' }] as const;

/** The double-hashed StandardMerkleTree leaf of one receipt. */
export function receiptLeaf(fields: LeafFields): Hex {
  const encoded = encodeAbiParameters(LEAF_TYPES, [
    toBytes32(fields.jobId, 'jobId'),
    toAddress(fields.payer, 'payer'),
    toAddress(fields.spender, 'spender'),
    toUint256(fields.cost, 'cost'),
  ]);
  return keccak256(keccak256(encoded));
}

/** keccak256 of the two nodes in ascending order (OpenZeppelin `Hashes.commutativeKeccak256`). */
export function hashPair(a: Hex, b: Hex): Hex {
  const x = toBytes32(a, 'node');
  const y = toBytes32(b, 'node');
  return keccak256(x <= y ? concat([x, y]) : concat([y, x]));
}

/** The root a proof leads to from a leaf (OpenZeppelin `MerkleProof.processProof`). */
export function processProof(leaf: Hex, proof: readonly Hex[]): Hex {
  return proof.reduce<Hex>((node, sibling) => hashPair(node, sibling), toBytes32(leaf, 'leaf'));
}

/** OpenZeppelin `MerkleProof.verify`: does `proof` lead from `leaf` to `root`? */
export function verifyProof(leaf: Hex, proof: readonly Hex[], root: Hex): boolean {
  return processProof(leaf, proof) === toBytes32(root, 'root');
}

export interface MerkleTree {
  /** The whole tree, root first (StandardMerkleTree's array layout). */
  readonly tree: readonly Hex[];
  readonly root: Hex;
  /** The sibling hashes from `leaf` up to the root. */
  proof(leaf: Hex): Hex[];
}

/** Build the StandardMerkleTree over leaf hashes (sorted here, as StandardMerkleTree sorts them). */
export function buildMerkleTree(leaves: readonly Hex[]): MerkleTree {
  if (leaves.length === 0) throw new SluiceProtocolError('a Merkle tree needs at least one leaf');
  const ordered = leaves.map((leaf, i) => toBytes32(leaf, `leaves[${i}]`)).sort();
  const size = 2 * ordered.length - 1;
  const tree: Hex[] = new Array<Hex>(size);
  const indexOf = new Map<Hex, number>();
  ordered.forEach((leaf, i) => {
    tree[size - 1 - i] = leaf;
    indexOf.set(leaf, size - 1 - i);
  });
  for (let i = size - 1 - ordered.length; i >= 0; i--) {
    tree[i] = hashPair(tree[2 * i + 1] as Hex, tree[2 * i + 2] as Hex);
  }
  return {
    tree,
    root: tree[0] as Hex,
    proof(leaf: Hex): Hex[] {
      let index = indexOf.get(toBytes32(leaf, 'leaf'));
      if (index === undefined) throw new SluiceProtocolError(`${leaf} is not a leaf of this tree`);
      const proof: Hex[] = [];
      while (index > 0) {
        proof.push(tree[index % 2 === 1 ? index + 1 : index - 1] as Hex);
        index = Math.floor((index - 1) / 2);
      }
      return proof;
    },
  };
}

/** The root of the tree over `leaves`. */
export function merkleRoot(leaves: readonly Hex[]): Hex {
  return buildMerkleTree(leaves).root;
}

/** The on-chain batch id of a receipts root: `keccak256(abi.encodePacked(receiptsRoot))`. */
export function batchIdOf(receiptsRoot: Hex): Hex {
  return keccak256(toBytes32(receiptsRoot, 'receiptsRoot'));
}
