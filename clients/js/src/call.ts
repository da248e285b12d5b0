/**
 * Signing one call: the Redemption over the exact body bytes, and the five `Sluice-*` headers that carry it.
 */

import type { Address, Hex } from 'viem';

import { SluiceProtocolError } from './errors.js';
import type { SluiceSigner } from './signer.js';
import { bodyHash, type Eip712Domain, type Redemption, redemptionDigest, redemptionTypedData } from './typed-data.js';
import { toAddress, toUint256 } from './values.js';

export const HEADER_PAYER = 'Sluice-Payer';
export const HEADER_MAX_COST = 'Sluice-Max-Cost';
export const HEADER_NONCE = 'Sluice-Nonce';
export const HEADER_DEADLINE = 'Sluice-Deadline';
export const HEADER_SIGNATURE = 'Sluice-Signature';
export const HEADER_JOB_ID = 'Sluice-Job-Id';
export const HEADER_COST = 'Sluice-Cost';

/** The five headers every signed call carries, in the order DESIGN.md lists them. */
export const SIGNED_CALL_HEADERS = [HEADER_PAYER, HEADER_MAX_COST, HEADER_NONCE, HEADER_DEADLINE, HEADER_SIGNATURE] as const;

/** Deadline of a signed call unless told otherwise: two minutes, well inside the service's window. */
export const DEFAULT_DEADLINE_SECONDS = 120;

export interface SignCallOptions {
  /** Whose escrow pays: the signer itself (default) or an account that gave the signer a budget. */
  payer?: Address;
  /** The most this call may cost, in base units (0 for account and audit reads). */
  maxCost: bigint;
  /** A nonce never used by this signer; a random 128-bit one by default. */
  nonce?: bigint;
  /** Unix seconds; `now + deadlineSeconds` by default. */
  deadline?: bigint;
  deadlineSeconds?: number;
  /** The clock, in milliseconds (tests pin it). */
  now?: () => number;
}

/** A signed call: the message, its digest and signature, and the headers to send. */
export interface SignedCall {
  signer: Address;
  message: Redemption;
  digest: Hex;
  signature: Hex;
  headers: Record<(typeof SIGNED_CALL_HEADERS)[number], string>;
}

/** A fresh random 128-bit nonce (Web Crypto, in Node 20 and every browser). */
export function randomNonce(): bigint {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return bytes.reduce((n, b) => (n << 8n) | BigInt(b), 0n);
}

/** Sign `body` (its exact bytes; "" for a GET) as a call under `domain`. */
export async function signCall(
  signer: SluiceSigner,
  domain: Eip712Domain,
  body: Uint8Array | string,
  options: SignCallOptions,
): Promise<SignedCall> {
  const address = await signer.getAddress();
  const seconds = options.deadlineSeconds ?? DEFAULT_DEADLINE_SECONDS;
  if (!Number.isSafeInteger(seconds) || seconds <= 0) {
    throw new SluiceProtocolError(`deadlineSeconds must be a positive integer, got ${seconds}`);
  }
  const now = options.now ?? Date.now;
  const deadline = options.deadline ?? BigInt(Math.floor(now() / 1000) + seconds);
  const typedData = redemptionTypedData(domain, {
    payer: options.payer === undefined ? address : toAddress(options.payer, 'payer'),
    bodyHash: bodyHash(body),
    maxCost: toUint256(options.maxCost, 'maxCost'),
    nonce: options.nonce ?? randomNonce(),
    deadline,
  });
  const signature = await signer.signTypedData(typedData);
  const message = typedData.message;
  return {
    signer: address,
    message,
    digest: redemptionDigest(typedData.domain, message),
    signature,
    headers: {
      [HEADER_PAYER]: message.payer,
      [HEADER_MAX_COST]: message.maxCost.toString(),
      [HEADER_NONCE]: message.nonce.toString(),
      [HEADER_DEADLINE]: message.deadline.toString(),
      [HEADER_SIGNATURE]: signature,
    },
  };
}
