// The typed-data builders, the wallet payload, discovery parsing and nonces.

import { getAddress } from 'viem';
import { describe, expect, it } from 'vitest';

import {
  type Eip712Domain,
  parseDiscovery,
  randomNonce,
  RECEIPT_DOMAIN_NAME,
  receiptDomain,
  type Redemption,
  REDEMPTION_TYPE,
  redemptionTypedData,
  SluiceProtocolError,
  typedDataJson,
  UINT256_MAX,
  USAGE_RECEIPT_TYPE,
  usageReceiptTypedData,
} from '../src/index.js';

const SETTLEMENT = '0xdc64a140aa3e981100a9beca4e685f962f0cf6c9';
const DOMAIN: Eip712Domain = { name: 'Sluice', version: '1', chainId: 31337, verifyingContract: SETTLEMENT as `0x${string}` };
const PAYER = '0x70997970c51812dc3a010c7d01b50e0d17dc79c8';
const MESSAGE: Redemption = {
  payer: PAYER as `0x${string}`,
  bodyHash: `0x${'ab'.repeat(32)}`,
  maxCost: 10n ** 17n,
  nonce: 2n ** 127n,
  deadline: 1_800_000_000n,
};

function discoveryDoc(): Record<string, unknown> {
  return {
    chain_id: 31337,
    rpc_url: 'http://127.0.0.1:8545',
    contracts: {
      token: '0x5fbdb2315678afecb367f032d93f642f64180aa3',
      sale: '0xe7f1725e7734ce288f8367e1bb143e90bb3f0512',
      rate_card: '0x9fe46736679d2d9a65f0992f2272de9f3c7fa6e0',
      settlement: SETTLEMENT,
      payment_token: '0xcf7ed3acca5a467e9e704c703e8d87f634fb0fc9',
    },
    eip712_domain: { name: 'Sluice', version: '1', chainId: 31337, verifyingContract: SETTLEMENT },
    max_deadline_seconds: 300,
  };
}

describe('redemptionTypedData', () => {
  it('checksums addresses, lower-cases words and keeps bigints', () => {
    const typed = redemptionTypedData(DOMAIN, { ...MESSAGE, bodyHash: `0x${'AB'.repeat(32)}` });
    expect(typed.primaryType).toBe('Redemption');
    expect(typed.domain.verifyingContract).toBe('0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9');
    expect(typed.message).toEqual({ ...MESSAGE, payer: '0x70997970C51812dc3A010C7d01b50e0d17dc79C8' });
    expect(typed.types.Redemption.map((f) => `${f.type} ${f.name}`).join(',')).toBe(
      REDEMPTION_TYPE.slice('Redemption('.length, -1),
    );
  });

  it.each([
    ['a short payer', { payer: '0x1234' }, 'payer must be a 0x address'],
    ['a short body hash', { bodyHash: '0xabcd' }, 'bodyHash must be 0x and 64 hex digits'],
    ['a negative maxCost', { maxCost: -1n }, 'maxCost must be an unsigned 256-bit integer'],
    ['a nonce of 2**256', { nonce: UINT256_MAX + 1n }, 'nonce must be an unsigned 256-bit integer'],
    ['a fractional deadline', { deadline: 1.5 }, 'deadline must be an unsigned 256-bit integer'],
  ])('refuses %s', (_name, change, why) => {
    const build = () => redemptionTypedData(DOMAIN, { ...MESSAGE, ...(change as Partial<Redemption>) });
    expect(build).toThrow(SluiceProtocolError);
    expect(build).toThrow(why);
  });

  it('refuses a domain without a contract address', () => {
    expect(() => redemptionTypedData({ ...DOMAIN, verifyingContract: '0x' as `0x${string}` }, MESSAGE)).toThrow(
      'eip712_domain.verifyingContract must be a 0x address',
    );
  });
});

describe('the eth_signTypedData_v4 payload', () => {
  it('carries EIP712Domain and uint256 values as exact decimal strings', () => {
    const payload = JSON.parse(typedDataJson(redemptionTypedData(DOMAIN, { ...MESSAGE, maxCost: UINT256_MAX })));
    expect(Object.keys(payload.types)).toEqual(['EIP712Domain', 'Redemption']);
    expect(payload.types.EIP712Domain.map((f: { name: string }) => f.name)).toEqual([
      'name',
      'version',
      'chainId',
      'verifyingContract',
    ]);
    expect(payload.primaryType).toBe('Redemption');
    expect(payload.domain).toEqual({ ...DOMAIN, verifyingContract: '0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9' });
    expect(payload.message.maxCost).toBe(UINT256_MAX.toString());
    expect(payload.message.nonce).toBe('170141183460469231731687303715884105728');
  });

  it('receipts sign under the "Sluice Node" twin of the call domain', () => {
    const domain = receiptDomain(DOMAIN);
    expect(domain.name).toBe(RECEIPT_DOMAIN_NAME);
    expect(domain.chainId).toBe(31337);
    const typed = usageReceiptTypedData(domain, {
      jobId: `0x${'01'.repeat(32)}`,
      payer: PAYER as `0x${string}`,
      spender: PAYER as `0x${string}`,
      model: `0x${'02'.repeat(32)}`,
      promptTokens: 1n,
      completionTokens: 2n,
      cost: 3n,
      requestDigest: `0x${'03'.repeat(32)}`,
    });
    expect(typed.types.UsageReceipt.map((f) => `${f.type} ${f.name}`).join(',')).toBe(
      USAGE_RECEIPT_TYPE.slice('UsageReceipt('.length, -1),
    );
  });
});

describe('parseDiscovery', () => {
  it('reads the document as the service serves it today', () => {
    const doc = parseDiscovery(discoveryDoc());
    expect(doc.eip712_domain).toEqual({ ...DOMAIN, verifyingContract: '0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9' });
    expect(doc.contracts.settlement).toBe('0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9');
    expect(doc.contracts.node_registry).toBeUndefined();
    expect(doc.eip712_types).toBeUndefined();
  });

  it('reads the published types, token and node registry when present', () => {
    const doc = parseDiscovery({
      ...discoveryDoc(),
      contracts: { ...(discoveryDoc().contracts as object), node_registry: '0x0165878a594ca255338adfa4d48449f69242eb8f' },
      token: { name: 'Sluice Compute Token', symbol: 'SCT', decimals: 18 },
      unlock_period_seconds: 86400,
      primary_type: 'Redemption',
      eip712_types: {
        EIP712Domain: [
          { name: 'name', type: 'string' },
          { name: 'version', type: 'string' },
          { name: 'chainId', type: 'uint256' },
          { name: 'verifyingContract', type: 'address' },
        ],
        Redemption: JSON.parse(JSON.stringify(redemptionTypedData(DOMAIN, MESSAGE).types.Redemption)),
      },
    });
    expect(doc.contracts.node_registry).toBe(getAddress('0x0165878a594ca255338adfa4d48449f69242eb8f'));
    expect(doc.token).toEqual({ name: 'Sluice Compute Token', symbol: 'SCT', decimals: 18 });
    expect(doc.unlock_period_seconds).toBe(86400);
    expect(doc.primary_type).toBe('Redemption');
  });

  it('keeps the fields a newer server adds, as they came', () => {
    const doc = parseDiscovery({ ...discoveryDoc(), chain_name: 'Sluice test net', native_currency: { symbol: 'ETH' } });
    expect(doc.chain_name).toBe('Sluice test net');
    expect(doc.native_currency).toEqual({ symbol: 'ETH' });
  });

  it.each([
    [{ chain_id: '31337' }, 'chain_id must be an integer'],
    [{ contracts: { token: '0x5fbdb2315678afecb367f032d93f642f64180aa3' } }, 'contracts.sale is missing'],
    [{ eip712_domain: { ...DOMAIN, chainId: 1 } }, 'eip712_domain.chainId 1 is not chain_id 31337'],
    [{ primary_type: 'Permit' }, 'this client signs Redemption'],
    [{ eip712_types: { Redemption: [{ name: 'payer', type: 'address' }] } }, 'another protocol version'],
    [{ max_deadline_seconds: 0 }, 'max_deadline_seconds must be an integer >= 1'],
  ])('refuses %j', (change, why) => {
    expect(() => parseDiscovery({ ...discoveryDoc(), ...change })).toThrow(SluiceProtocolError);
    expect(() => parseDiscovery({ ...discoveryDoc(), ...change })).toThrow(why);
  });
});

describe('randomNonce', () => {
  it('is 128-bit and fresh each time', () => {
    const nonces = Array.from({ length: 200 }, randomNonce);
    expect(new Set(nonces).size).toBe(200);
    for (const n of nonces) expect(n >= 0n && n < 2n ** 128n).toBe(true);
    expect(nonces.some((n) => n >= 2n ** 120n)).toBe(true);
  });
});
