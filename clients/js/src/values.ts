/** Checks of the ABI values the protocol signs: addresses, 32-byte words and uint256 numbers. */

import { type Address, getAddress, type Hex, isAddress } from 'viem';

import { UINT256_MAX } from './amounts.js';
import { SluiceProtocolError } from './errors.js';

const BYTES32 = /^0x[0-9a-fA-F]{64}$/;
const DECIMAL = /^[0-9]{1,78}$/;

/** The checksummed form of a 0x address; SluiceProtocolError names the field otherwise. */
export function toAddress(value: unknown, field: string): Address {
  if (typeof value !== 'string' || !isAddress(value, { strict: false })) {
    throw new SluiceProtocolError(`${field} must be a 0x address of 20 bytes, got ${JSON.stringify(value)}`);
  }
  return getAddress(value);
}

/** A 32-byte word as lower-case 0x hex. */
export function toBytes32(value: unknown, field: string): Hex {
  if (typeof value !== 'string' || !BYTES32.test(value)) {
    throw new SluiceProtocolError(`${field} must be 0x and 64 hex digits (32 bytes), got ${JSON.stringify(value)}`);
  }
  return value.toLowerCase() as Hex;
}

/** A uint256 from a bigint, a safe integer or a decimal string (as JSON carries amounts). */
export function toUint256(value: unknown, field: string): bigint {
  let number: bigint | undefined;
  if (typeof value === 'bigint') number = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) number = BigInt(value);
  else if (typeof value === 'string' && DECIMAL.test(value)) number = BigInt(value);
  if (number === undefined || number < 0n || number > UINT256_MAX) {
    throw new SluiceProtocolError(`${field} must be an unsigned 256-bit integer, got ${JSON.stringify(String(value))}`);
  }
  return number;
}

/** Lower-case 0x hex of any length. */
export function toHexBytes(value: unknown, field: string, length?: number): Hex {
  const ok = typeof value === 'string' && /^0x([0-9a-fA-F]{2})*$/.test(value);
  if (!ok || (length !== undefined && (value as string).length !== 2 + 2 * length)) {
    const size = length === undefined ? '' : ` of ${length} bytes`;
    throw new SluiceProtocolError(`${field} must be 0x hex${size}, got ${JSON.stringify(value)}`);
  }
  return (value as string).toLowerCase() as Hex;
}
