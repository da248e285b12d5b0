/**
 * The EIP-712 messages of the protocol (DESIGN.md "The signed call"), as typed data and digests.
 *
 * - `Redemption` under the domain "Sluice": a developer's signed API call;
 * - `UsageReceipt` under the domain "Sluice Node": a node's signed statement of what a job used.
 *
 * Both domains are `EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)`
 * with version "1", the chain id and the Settlement contract as the verifying contract.
 */

import { type Address, type Hex, hashDomain, hashTypedData, keccak256, stringToBytes } from 'viem';

import { toAddress, toBytes32, toUint256 } from './values.js';

export const REDEMPTION_DOMAIN_NAME = 'Sluice';
export const RECEIPT_DOMAIN_NAME = 'Sluice Node';
export const DOMAIN_VERSION = '1';

/** The encodeType strings, exactly as the contracts and the Python side hash them. */
export const REDEMPTION_TYPE =
  'Redemption(address payer,bytes32 bodyHash,uint256 maxCost,uint256 nonce,uint256 deadline)';
export const USAGE_RECEIPT_TYPE =
  'UsageReceipt(bytes32 jobId,address payer,address spender,bytes32 model,uint256 promptTokens,' +
  'uint256 completionTokens,uint256 cost,bytes32 requestDigest)';

export const EIP712_DOMAIN_FIELDS = [
  { name: 'name', type: 'string' },
  { name: 'version', type: 'string' },
  { name: 'chainId', type: 'uint256' },
  { name: 'verifyingContract', type: 'address' },
] as const;

export const REDEMPTION_FIELDS = [
  { name: 'payer', type: 'address' },
  { name: 'bodyHash', type: 'bytes32' },
  { name: 'maxCost', type: 'uint256' },
  { name: 'nonce', type: 'uint256' },
  { name: 'deadline', type: 'uint256' },
] as const;

export const USAGE_RECEIPT_FIELDS = [
  { name: 'jobId', type: 'bytes32' },
  { name: 'payer', type: 'address' },
  { name: 'spender', type: 'address' },
  { name: 'model', type: 'bytes32' },
  { name: 'promptTokens', type: 'uint256' },
  { name: 'completionTokens', type: 'uint256' },
  { name: 'cost', type: 'uint256' },
  { name: 'requestDigest', type: 'bytes32' },
] as const;

export const redemptionTypes = { Redemption: REDEMPTION_FIELDS } as const;
export const usageReceiptTypes = { UsageReceipt: USAGE_RECEIPT_FIELDS } as const;

/** An EIP-712 domain of the protocol (all four fields are always present). */
export interface Eip712Domain {
  name: string;
  version: string;
  chainId: number;
  verifyingContract: Address;
}

/** The signed struct of a call: `bodyHash = keccak256(raw body bytes)`, amounts in base units. */
export interface Redemption {
  payer: Address;
  bodyHash: Hex;
  maxCost: bigint;
  nonce: bigint;
  deadline: bigint;
}

/** A node's receipt: `model = keccak256(utf8(model name))`, `requestDigest` = the call's Redemption digest. */
export interface UsageReceipt {
  jobId: Hex;
  payer: Address;
  spender: Address;
  model: Hex;
  promptTokens: bigint;
  completionTokens: bigint;
  cost: bigint;
  requestDigest: Hex;
}

export interface RedemptionTypedData {
  domain: Eip712Domain;
  types: typeof redemptionTypes;
  primaryType: 'Redemption';
  message: Redemption;
}

export interface UsageReceiptTypedData {
  domain: Eip712Domain;
  types: typeof usageReceiptTypes;
  primaryType: 'UsageReceipt';
  message: UsageReceipt;
}

/** Either message of the protocol, as viem's `signTypedData` and `hashTypedData` take it. */
export type SluiceTypedData = RedemptionTypedData | UsageReceiptTypedData;

/** The domain with its fields checked and the contract checksummed. */
export function eip712Domain(domain: Eip712Domain): Eip712Domain {
  const chainId = Number(toUint256(domain.chainId, 'eip712_domain.chainId'));
  return {
    name: String(domain.name),
    version: String(domain.version),
    chainId,
    verifyingContract: toAddress(domain.verifyingContract, 'eip712_domain.verifyingContract'),
  };
}

/** The "Sluice Node" domain receipts are signed under, beside a deployment's "Sluice" call domain. */
export function receiptDomain(callDomain: Eip712Domain): Eip712Domain {
  return { ...eip712Domain(callDomain), name: RECEIPT_DOMAIN_NAME, version: DOMAIN_VERSION };
}

/** keccak256 of the exact body bytes (a string is hashed as its UTF-8 bytes). */
export function bodyHash(body: Uint8Array | string): Hex {
  return keccak256(typeof body === 'string' ? stringToBytes(body) : body);
}

/** A model's on-chain id: keccak256(utf8(name)). */
export function modelId(name: string): Hex {
  return keccak256(stringToBytes(name));
}

function redemption(message: Redemption): Redemption {
  return {
    payer: toAddress(message.payer, 'payer'),
    bodyHash: toBytes32(message.bodyHash, 'bodyHash'),
    maxCost: toUint256(message.maxCost, 'maxCost'),
    nonce: toUint256(message.nonce, 'nonce'),
    deadline: toUint256(message.deadline, 'deadline'),
  };
}

function usageReceipt(message: UsageReceipt): UsageReceipt {
  return {
    jobId: toBytes32(message.jobId, 'jobId'),
    payer: toAddress(message.payer, 'payer'),
    spender: toAddress(message.spender, 'spender'),
    model: toBytes32(message.model, 'model'),
    promptTokens: toUint256(message.promptTokens, 'promptTokens'),
    completionTokens: toUint256(message.completionTokens, 'completionTokens'),
    cost: toUint256(message.cost, 'cost'),
    requestDigest: toBytes32(message.requestDigest, 'requestDigest'),
  };
}

/** The typed data of a call, its fields checked (SluiceProtocolError names a bad one). */
export function redemptionTypedData(domain: Eip712Domain, message: Redemption): RedemptionTypedData {
  return { domain: eip712Domain(domain), types: redemptionTypes, primaryType: 'Redemption', message: redemption(message) };
}

/** The typed data of a node receipt; `domain` is the "Sluice Node" domain (see `receiptDomain`). */
export function usageReceiptTypedData(domain: Eip712Domain, message: UsageReceipt): UsageReceiptTypedData {
  return {
    domain: eip712Domain(domain),
    types: usageReceiptTypes,
    primaryType: 'UsageReceipt',
    message: usageReceipt(message),
  };
}

/** The EIP-712 digest (`keccak256(0x1901 || domainSeparator || structHash)`) of either message. */
export function typedDataDigest(typedData: SluiceTypedData): Hex {
  // Narrowed for viem's generics, which take one message type at a time.
  return typedData.primaryType === 'Redemption' ? hashTypedData(typedData) : hashTypedData(typedData);
}

export function redemptionDigest(domain: Eip712Domain, message: Redemption): Hex {
  return hashTypedData(redemptionTypedData(domain, message));
}

export function usageReceiptDigest(domain: Eip712Domain, message: UsageReceipt): Hex {
  return hashTypedData(usageReceiptTypedData(domain, message));
}

/** The domain separator (hashStruct of the domain). */
export function domainSeparator(domain: Eip712Domain): Hex {
  const checked = eip712Domain(domain);
  return hashDomain({
    domain: { ...checked, chainId: BigInt(checked.chainId) },
    types: { EIP712Domain: EIP712_DOMAIN_FIELDS },
  });
}

/**
 * The JSON string `eth_signTypedData_v4` takes: the types with `EIP712Domain`, uint256 values as decimal
 * strings (exact, where a JSON number would lose precision past 2**53).
 */
export function typedDataJson(typedData: SluiceTypedData): string {
  const payload = {
    types: { EIP712Domain: EIP712_DOMAIN_FIELDS, ...typedData.types },
    primaryType: typedData.primaryType,
    domain: typedData.domain,
    message: typedData.message,
  };
  return JSON.stringify(payload, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value));
}
