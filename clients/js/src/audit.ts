/**
 * Checking a settled batch as served by `GET /audit/batches/{batch_id}`, trusting nothing the server says
 * but the bytes it serves: each receipt's leaf, its proof against the on-chain `receiptsRoot`, the root of all
 * leaves, the developer's Redemption signature (recovers to the spender, `cost <= maxCost`, the digest is the
 * digest of the served fields) and the node's UsageReceipt signature over that digest.
 *
 * The root to check against must come from the chain (`BatchSettled(batchId, receiptsRoot, items, total)`,
 * `batchId = batchIdOf(receiptsRoot)`), and the node keys from NodeRegistry; the rate-card price and the sums
 * per (payer, spender) against `Redeemed` need the chain's logs too and are left to the caller.
 */

import type { Address, Hex } from 'viem';

import { buildMerkleTree, receiptLeaf, verifyProof } from './merkle.js';
import { recoverSigner } from './signatures.js';
import { type Eip712Domain, modelId, receiptDomain, redemptionDigest, usageReceiptDigest } from './typed-data.js';
import { toAddress, toBytes32, toHexBytes, toUint256 } from './values.js';

/** The request signature of a served receipt (amounts as decimal strings). */
export interface AuditRequestSignature {
  payer: string;
  body_hash: string;
  max_cost: string;
  nonce: string;
  deadline: number | string;
  signature: string;
  digest: string;
}

/** One leaf of a served batch: a metered job with both signatures, or (kind "debt") a cleared shortfall. */
export interface AuditReceipt {
  kind: 'usage' | 'debt';
  job_id: string;
  payer: string;
  spender: string;
  cost: string;
  merkle_proof: string[] | null;
  model?: string | null;
  prompt_tokens?: number | null;
  completion_tokens?: number | null;
  request?: AuditRequestSignature | null;
  node?: string | null;
  node_signature?: string | null;
  [field: string]: unknown;
}

/** One finding; `code` names the check as `sluice audit verify` does. */
export interface AuditProblem {
  code:
    | 'malformed_receipt'
    | 'receipt_count'
    | 'merkle_root'
    | 'merkle_proof'
    | 'request_payer'
    | 'request_digest'
    | 'request_signature'
    | 'cost_over_max_cost'
    | 'node_signature'
    | 'unregistered_node';
  jobId: string | null;
  message: string;
}

export interface BatchCheckOptions {
  /** The deployment's "Sluice" call domain (discovery's `eip712_domain`); receipts use its "Sluice Node" twin. */
  domain: Eip712Domain;
  /** The batch's `receiptsRoot`, read from its BatchSettled log on chain. */
  receiptsRoot: Hex;
  /** BatchSettled's `items`, to check the count of served receipts. */
  items?: number | bigint;
  /** Registered node keys (from NodeRegistry); when given, a receipt signed by any other key is a problem. */
  nodeKeys?: Iterable<Address>;
}

export interface BatchCheck {
  ok: boolean;
  /** The root the served receipts hash to (null when none could be read). */
  root: Hex | null;
  receipts: number;
  signatures: number;
  problems: AuditProblem[];
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Check every served receipt of one batch; `ok` only when no problem was found. */
export async function checkBatch(receipts: readonly AuditReceipt[], options: BatchCheckOptions): Promise<BatchCheck> {
  const problems: AuditProblem[] = [];
  const root = toBytes32(options.receiptsRoot, 'receiptsRoot');
  const callDomain = options.domain;
  const nodeDomain = receiptDomain(callDomain);
  const nodeKeys = options.nodeKeys === undefined ? undefined : new Set([...options.nodeKeys].map((a) => toAddress(a, 'node key')));
  if (options.items !== undefined && BigInt(receipts.length) !== BigInt(options.items)) {
    problems.push({
      code: 'receipt_count',
      jobId: null,
      message: `the API serves ${receipts.length} receipts, BatchSettled commits to ${options.items}`,
    });
  }
  const leaves: Hex[] = [];
  let signatures = 0;
  for (const receipt of receipts) {
    const label = typeof receipt?.job_id === 'string' ? receipt.job_id : null;
    const problem = (code: AuditProblem['code'], message: string) => problems.push({ code, jobId: label, message });
    const before = leaves.length;
    let leaf: Hex;
    try {
      const jobId = toBytes32(receipt.job_id, 'job_id');
      const payer = toAddress(receipt.payer, 'payer');
      const spender = toAddress(receipt.spender, 'spender');
      const cost = toUint256(receipt.cost, 'cost');
      leaf = receiptLeaf({ jobId, payer, spender, cost });
      leaves.push(leaf);
      const proof = (receipt.merkle_proof ?? []).map((p, i) => toBytes32(p, `merkle_proof[${i}]`));
      if (!verifyProof(leaf, proof, root)) {
        problem('merkle_proof', 'the served proof does not lead from this receipt to the on-chain receiptsRoot');
      }
      if (receipt.kind === 'debt') continue;
      const request = receipt.request;
      if (request === null || request === undefined) throw new Error('a usage receipt carries its request');
      const signedPayer = toAddress(request.payer, 'request.payer');
      if (signedPayer !== payer) problem('request_payer', 'the signed payer is not the receipt\'s payer');
      const maxCost = toUint256(request.max_cost, 'request.max_cost');
      if (cost > maxCost) problem('cost_over_max_cost', `cost ${cost} is above the signed maxCost ${maxCost}`);
      const digest = redemptionDigest(callDomain, {
        payer: signedPayer,
        bodyHash: toBytes32(request.body_hash, 'request.body_hash'),
        maxCost,
        nonce: toUint256(request.nonce, 'request.nonce'),
        deadline: toUint256(request.deadline, 'request.deadline'),
      });
      if (digest !== toBytes32(request.digest, 'request.digest')) {
        problem('request_digest', 'the served request digest is not the EIP-712 digest of the served Redemption fields');
      }
      const signer = await recoverSigner(digest, toHexBytes(request.signature, 'request.signature')).catch(() => null);
      if (signer !== spender) {
        problem('request_signature', `the request signature recovers to ${signer ?? 'nothing'}, not the spender`);
      }
      if (typeof receipt.model !== 'string') throw new Error('a usage receipt names its model');
      const node = toAddress(receipt.node, 'node');
      const nodeDigest = usageReceiptDigest(nodeDomain, {
        jobId,
        payer,
        spender,
        model: modelId(receipt.model),
        promptTokens: toUint256(receipt.prompt_tokens, 'prompt_tokens'),
        completionTokens: toUint256(receipt.completion_tokens, 'completion_tokens'),
        cost,
        requestDigest: digest,
      });
      const nodeSigner = await recoverSigner(nodeDigest, toHexBytes(receipt.node_signature, 'node_signature')).catch(
        () => null,
      );
      if (nodeSigner !== node) {
        problem('node_signature', `the node receipt signature recovers to ${nodeSigner ?? 'nothing'}, not the node ${node}`);
      }
      if (nodeKeys !== undefined && !nodeKeys.has(node)) {
        problem('unregistered_node', `node ${node} is not a registered node key`);
      }
      signatures += 2;
    } catch (error) {
      problem('malformed_receipt', `the served receipt cannot be read: ${describe(error)}`);
      // No leaf hashes to zero: the root check then fails, as it must.
      if (leaves.length === before) leaves.push(`0x${'00'.repeat(32)}`);
    }
  }
  let computed: Hex | null = null;
  try {
    computed = leaves.length > 0 ? buildMerkleTree(leaves).root : null;
  } catch {
    computed = null;
  }
  if (computed !== root) {
    problems.push({
      code: 'merkle_root',
      jobId: null,
      message: `the served receipts hash to root ${computed ?? 'none'}, BatchSettled commits to ${root}`,
    });
  }
  return { ok: problems.length === 0, root: computed, receipts: receipts.length, signatures, problems };
}
