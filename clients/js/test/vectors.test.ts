// The JavaScript client against the vectors the Python implementation exported
// (scripts/export_protocol_vectors.py): every digest, signature, leaf, root, proof and amount must be equal.

import { readFileSync } from 'node:fs';

import { type Address, type Hex, hashStruct, hexToBytes } from 'viem';
import { describe, expect, it } from 'vitest';

import {
  type AuditReceipt,
  batchIdOf,
  bodyHash,
  buildMerkleTree,
  checkBatch,
  domainSeparator,
  type Eip712Domain,
  formatTokens,
  localSigner,
  modelId,
  normalizeSignature,
  parseTokens,
  processProof,
  receiptDomain,
  receiptLeaf,
  recoverReceiptSigner,
  recoverRedemptionSigner,
  recoverSigner,
  type Redemption,
  redemptionDigest,
  redemptionTypedData,
  redemptionTypes,
  signCall,
  SluiceAmountError,
  SluiceSignatureError,
  typedDataJson,
  type UsageReceipt,
  usageReceiptDigest,
  usageReceiptTypedData,
  usageReceiptTypes,
  verifyProof,
} from '../src/index.js';

/* eslint-disable @typescript-eslint/no-explicit-any */
const vectors: any = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));

// Rows for it.each: [title, vector].
function rows(items: any[], title: (item: any, index: number) => string | number): [string | number, any][] {
  return items.map((item, index) => [title(item, index), item]);
}

function callDomain(index: number): Eip712Domain {
  const d = vectors.domains[index];
  return { name: 'Sluice', version: '1', chainId: d.chainId, verifyingContract: d.verifyingContract };
}

function redemptionOf(v: any): Redemption {
  return {
    payer: v.payer,
    bodyHash: v.body_hash,
    maxCost: BigInt(v.max_cost),
    nonce: BigInt(v.nonce),
    deadline: BigInt(v.deadline),
  };
}

function receiptOf(v: any): UsageReceipt {
  return {
    jobId: v.job_id,
    payer: v.payer,
    spender: v.spender,
    model: v.model_id,
    promptTokens: BigInt(v.prompt_tokens),
    completionTokens: BigInt(v.completion_tokens),
    cost: BigInt(v.cost),
    requestDigest: v.request_digest,
  };
}

describe('EIP-712 domains', () => {
  it.each(rows(vectors.domains, (_d, i) => i))('domain %i separators', (i, d) => {
    expect(domainSeparator(callDomain(i as number))).toBe(d.redemption_separator);
    expect(domainSeparator(receiptDomain(callDomain(i as number)))).toBe(d.receipt_separator);
  });
});

describe('Redemption (a signed call)', () => {
  it.each(rows(vectors.redemptions, (v) => v.name))('%s', async (_name, v) => {
    const domain = callDomain(v.domain);
    const message = redemptionOf(v);
    expect(bodyHash(hexToBytes(v.body))).toBe(v.body_hash);
    expect(hashStruct({ data: message, primaryType: 'Redemption', types: redemptionTypes })).toBe(v.struct_hash);
    expect(redemptionDigest(domain, message)).toBe(v.digest);
    // RFC 6979 signatures are deterministic: viem and libsecp256k1 give the same bytes.
    const signer = localSigner(v.signer_key);
    expect(await signer.getAddress()).toBe(v.signer);
    expect(await signer.signTypedData(redemptionTypedData(domain, message))).toBe(v.signature);
    expect(await recoverRedemptionSigner(domain, message, v.signature)).toBe(v.signer);
    // What a browser wallet is handed is exactly what eth-account hashes to the same digest.
    expect(JSON.parse(typedDataJson(redemptionTypedData(domain, message)))).toEqual(v.typed_data_v4);
    const signed = await signCall(signer, domain, hexToBytes(v.body), {
      payer: v.payer,
      maxCost: BigInt(v.max_cost),
      nonce: BigInt(v.nonce),
      deadline: BigInt(v.deadline),
    });
    expect(signed.headers).toEqual(v.headers);
    expect(signed.digest).toBe(v.digest);
    expect(signed.signer).toBe(v.signer);
  });

  it('a string body is hashed as its UTF-8 bytes', () => {
    const v = vectors.redemptions.find((r: any) => r.name.startsWith('UTF-8'));
    expect(bodyHash(new TextDecoder().decode(hexToBytes(v.body)))).toBe(v.body_hash);
  });
});

describe('UsageReceipt (a node receipt)', () => {
  it.each(rows(vectors.receipts, (v) => v.model))('receipt for model %s', async (_model, v) => {
    const domain = receiptDomain(callDomain(v.domain));
    const receipt = receiptOf(v);
    expect(modelId(v.model)).toBe(v.model_id);
    expect(hashStruct({ data: receipt, primaryType: 'UsageReceipt', types: usageReceiptTypes })).toBe(v.struct_hash);
    expect(usageReceiptDigest(domain, receipt)).toBe(v.digest);
    expect(await localSigner(v.node_key).signTypedData(usageReceiptTypedData(domain, receipt))).toBe(v.signature);
    expect(await recoverReceiptSigner(domain, receipt, v.signature)).toBe(v.node);
    expect(JSON.parse(typedDataJson(usageReceiptTypedData(domain, receipt)))).toEqual(v.typed_data_v4);
  });
});

describe('signatures the service refuses', () => {
  it.each(rows(vectors.rejected_signatures, (v) => v.name))('%s', async (_name, v) => {
    await expect(recoverSigner(v.digest, v.signature)).rejects.toBeInstanceOf(SluiceSignatureError);
  });

  it('the high-s twin normalises to the signature Python made', () => {
    const twin = vectors.rejected_signatures.find((v: any) => v.name.startsWith('high-s'));
    expect(normalizeSignature(twin.signature)).toBe(vectors.redemptions[0].signature);
  });

  it('the reasons match the service', async () => {
    const reason = async (signature: Hex) => {
      try {
        await recoverSigner(vectors.redemptions[0].digest, signature);
        return 'accepted';
      } catch (error) {
        return (error as Error).message;
      }
    };
    for (const v of vectors.rejected_signatures) expect(await reason(v.signature)).toBe(v.reason);
  });
});

describe('StandardMerkleTree', () => {
  it.each(rows(vectors.merkle, (t) => t.receipts.length))('tree of %i receipts', (_n, t) => {
    const leaves = t.receipts.map((r: any) =>
      receiptLeaf({ jobId: r.job_id, payer: r.payer, spender: r.spender, cost: BigInt(r.cost) }),
    );
    expect(leaves).toEqual(t.receipts.map((r: any) => r.leaf));
    const tree = buildMerkleTree(leaves);
    expect(tree.tree).toEqual(t.tree);
    expect(tree.root).toBe(t.root);
    expect(batchIdOf(tree.root)).toBe(t.batch_id);
    for (const r of t.receipts) {
      expect(tree.proof(r.leaf)).toEqual(r.proof);
      expect(processProof(r.leaf, r.proof)).toBe(t.root);
      expect(verifyProof(r.leaf, r.proof, t.root)).toBe(true);
    }
    // A proof for another leaf, or a truncated one, leads elsewhere (a one-leaf tree's root is its leaf).
    if (t.receipts.length > 1) {
      const [a, b] = t.receipts;
      expect(verifyProof(a.leaf, b.proof, t.root)).toBe(false);
      expect(verifyProof(a.leaf, a.proof.slice(1), t.root)).toBe(false);
    } else {
      expect(t.root).toBe(t.receipts[0].leaf);
    }
  });
});

describe('an audit batch, checked without trusting the server', () => {
  const batch = vectors.audit_batch;
  const options = () => ({
    domain: callDomain(batch.domain),
    receiptsRoot: batch.receipts_root as Hex,
    items: batch.items as number,
    nodeKeys: batch.node_keys as Address[],
  });
  const receipts = (): AuditReceipt[] => structuredClone(batch.receipts);

  it('as served, it checks out', async () => {
    const result = await checkBatch(receipts(), options());
    expect(result.problems).toEqual([]);
    expect(result).toEqual({ ok: true, root: batch.receipts_root, receipts: 4, signatures: 6, problems: [] });
    expect(batchIdOf(batch.receipts_root)).toBe(batch.batch_id);
  });

  it('a raised cost breaks the proof, the root, maxCost and the node signature', async () => {
    const served = receipts();
    served[0]!.cost = '10000000000000001';
    const result = await checkBatch(served, options());
    expect(result.ok).toBe(false);
    expect(result.problems.map((p) => [p.code, p.jobId])).toEqual([
      ['merkle_proof', served[0]!.job_id],
      ['cost_over_max_cost', served[0]!.job_id],
      ['node_signature', served[0]!.job_id],
      ['merkle_root', null],
    ]);
  });

  it('a request signature from another key is caught', async () => {
    const served = receipts();
    served[1]!.request!.signature = served[0]!.request!.signature;
    const result = await checkBatch(served, options());
    expect(result.problems.map((p) => p.code)).toEqual(['request_signature']);
  });

  it('a served digest that is not the digest of the served fields is caught', async () => {
    const served = receipts();
    served[2]!.request!.digest = served[1]!.request!.digest;
    expect((await checkBatch(served, options())).problems.map((p) => p.code)).toEqual(['request_digest']);
  });

  it('another root, a missing receipt, an unregistered node and garbage are caught', async () => {
    const other = await checkBatch(receipts(), { ...options(), receiptsRoot: vectors.merkle[3].root });
    expect(other.problems.map((p) => p.code)).toEqual([
      'merkle_proof',
      'merkle_proof',
      'merkle_proof',
      'merkle_proof',
      'merkle_root',
    ]);
    const short = await checkBatch(receipts().slice(1), options());
    expect(short.problems.map((p) => p.code)).toEqual(['receipt_count', 'merkle_root']);
    const unregistered = await checkBatch(receipts(), { ...options(), nodeKeys: [vectors.keys['other-node'].address] });
    expect(unregistered.problems.map((p) => p.code)).toEqual(['unregistered_node', 'unregistered_node', 'unregistered_node']);
    const garbage = receipts();
    garbage[0]!.payer = 'nobody';
    const bad = await checkBatch(garbage, options());
    expect(bad.problems.map((p) => p.code)).toEqual(['malformed_receipt', 'merkle_root']);
    expect(bad.problems[0]!.message).toContain('payer must be a 0x address');
  });
});

describe('compute-token amounts', () => {
  const amounts = vectors.amounts;

  it.each(rows(amounts.format, (f) => f.units))('formatTokens(%s)', (_units, f) => {
    expect(formatTokens(BigInt(f.units))).toBe(f.text);
  });

  it.each(rows(amounts.parse, (p) => JSON.stringify(p.text)))('parseTokens(%s)', (_shown, p) => {
    if (p.error !== undefined) {
      expect(() => parseTokens(p.text)).toThrow(SluiceAmountError);
    } else {
      expect(parseTokens(p.text)).toBe(BigInt(p.units));
    }
  });

  it.each(rows(amounts.parse_rounded_by_python, (p) => p.text))(
    'parseTokens(%s) is exact where Python rounds to 28 digits',
    (_text, p) => {
      expect(parseTokens(p.text)).toBe(BigInt(p.units));
      expect(parseTokens(p.text)).not.toBe(BigInt(p.python_units));
    },
  );
});
