/**
 * 65-byte `r || s || v` signatures as the service accepts them: v = 27/28 (0/1 read as 27/28) and low-s,
 * and recovery of the signer of a digest or of either protocol message.
 */

import { type Address, bytesToHex, type Hex, hexToBytes, recoverAddress } from 'viem';

import { SluiceSignatureError } from './errors.js';
import {
  type Eip712Domain,
  type Redemption,
  redemptionDigest,
  type UsageReceipt,
  usageReceiptDigest,
} from './typed-data.js';

export const SECP256K1_N = 0xfffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141n;
const HALF_N = SECP256K1_N / 2n;

interface Parts {
  r: bigint;
  s: bigint;
  yParity: 0 | 1;
}

// Checked in the service's order (length, v, s, r), so both give the same reason for a bad signature.
function parts(signature: Hex | Uint8Array, strict: boolean): Parts {
  if (typeof signature === 'string' && !/^0x([0-9a-fA-F]{2})*$/.test(signature)) {
    throw new SluiceSignatureError('a signature is 0x hex');
  }
  const bytes = typeof signature === 'string' ? hexToBytes(signature) : signature;
  if (bytes.length !== 65) throw new SluiceSignatureError(`a signature is 65 bytes, got ${bytes.length}`);
  const v = bytes[64] as number;
  const yParity = v >= 27 ? v - 27 : v;
  if (yParity !== 0 && yParity !== 1) throw new SluiceSignatureError(`signature v must be 27 or 28 (or 0 or 1), got ${v}`);
  const r = BigInt(bytesToHex(bytes.subarray(0, 32)));
  const s = BigInt(bytesToHex(bytes.subarray(32, 64)));
  if (!(s > 0n && s <= (strict ? HALF_N : SECP256K1_N - 1n))) {
    throw new SluiceSignatureError(
      strict ? 'signature s must be in the lower half of the curve order (low-s)' : 'signature s is out of range',
    );
  }
  if (!(r > 0n && r < SECP256K1_N)) throw new SluiceSignatureError('signature r is out of range (1 .. n-1)');
  return { r, s, yParity };
}

function serialize({ r, s, yParity }: Parts): Hex {
  const word = (n: bigint) => n.toString(16).padStart(64, '0');
  return `0x${word(r)}${word(s)}${(27 + yParity).toString(16)}` as Hex;
}

/** True when `s` is in the lower half of the curve order, as the service requires. */
export function isLowS(signature: Hex | Uint8Array): boolean {
  return parts(signature, false).s <= HALF_N;
}

/**
 * The canonical form of a signature: v = 27/28 and low-s (a high-s signature of some wallets becomes the
 * equivalent (r, n - s) with the other parity: the same signer, the form the service accepts).
 */
export function normalizeSignature(signature: Hex | Uint8Array): Hex {
  const p = parts(signature, false);
  if (p.s > HALF_N) return serialize({ r: p.r, s: SECP256K1_N - p.s, yParity: p.yParity === 0 ? 1 : 0 });
  return serialize(p);
}

/**
 * The address that signed a 32-byte digest, checked as strictly as the service checks it: SluiceSignatureError
 * for anything but 65 bytes, v outside 27/28 (or 0/1), r or s out of range, high-s, or no recovery.
 */
export async function recoverSigner(digest: Hex, signature: Hex | Uint8Array): Promise<Address> {
  const p = parts(signature, true);
  if (!/^0x[0-9a-fA-F]{64}$/.test(digest)) throw new SluiceSignatureError('a digest is 32 bytes of 0x hex');
  try {
    return await recoverAddress({ hash: digest, signature: serialize(p) });
  } catch {
    throw new SluiceSignatureError('signature does not recover to a public key');
  }
}

/** The spender that signed a call (the `Sluice-Signature` of a Redemption). */
export async function recoverRedemptionSigner(
  domain: Eip712Domain,
  message: Redemption,
  signature: Hex | Uint8Array,
): Promise<Address> {
  return recoverSigner(redemptionDigest(domain, message), signature);
}

/** The node key that signed a receipt; `domain` is the "Sluice Node" domain (see `receiptDomain`). */
export async function recoverReceiptSigner(
  domain: Eip712Domain,
  receipt: UsageReceipt,
  signature: Hex | Uint8Array,
): Promise<Address> {
  return recoverSigner(usageReceiptDigest(domain, receipt), signature);
}
