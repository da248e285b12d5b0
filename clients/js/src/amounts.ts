/**
 * Compute-token amounts: exact bigints in base units (the ERC-20's wei, 18 decimals), never floats.
 *
 * `parseTokens` reads what a person types ("12.5", "1_000", "2e3") into base units and refuses anything
 * it cannot represent exactly; `formatTokens` writes base units back as whole tokens without rounding.
 * They accept and produce the same strings as the Python side (`ledger.units`).
 */

import { SluiceAmountError } from './errors.js';

/** Decimals of the compute token (and of the amounts in every Sluice API). */
export const COMPUTE_TOKEN_DECIMALS = 18;

/** One whole compute token in base units. */
export const ONE_TOKEN = 10n ** 18n;

/** The largest amount a contract can hold: 2**256 - 1. */
export const UINT256_MAX = (1n << 256n) - 1n;

// A decimal number as Python's Decimal reads one (without NaN and Infinity, which no amount can be).
const DECIMAL = /^([+-]?)(?:(\d+)(?:\.(\d*))?|\.(\d+))(?:[eE]([+-]?\d+))?$/;

function checkDecimals(decimals: number): bigint {
  if (!Number.isSafeInteger(decimals) || decimals < 0 || decimals > 77) {
    throw new SluiceAmountError(`decimals must be an integer from 0 to 77, got ${decimals}`);
  }
  return BigInt(decimals);
}

/**
 * Parse a decimal amount of whole tokens ("12.5") into base units, exactly.
 *
 * Surrounding whitespace and `_` separators are ignored and an exponent is allowed ("1.5e3"). Throws
 * SluiceAmountError for non-numbers, negative amounts, more fractional digits than the token has, and
 * amounts above 2**256 - 1.
 */
export function parseAmount(text: string, decimals: number = COMPUTE_TOKEN_DECIMALS): bigint {
  const places = checkDecimals(decimals);
  if (typeof text !== 'string') {
    throw new SluiceAmountError(`an amount is a string of digits, got ${typeof text}`);
  }
  const shown = JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text);
  const match = DECIMAL.exec(text.trim().replaceAll('_', '').trim());
  if (match === null) {
    throw new SluiceAmountError(`${shown} is not a number of tokens (examples: 100, 12.5)`);
  }
  const [, sign, whole = '', fraction = '', onlyFraction, exponentText] = match;
  const fracDigits = onlyFraction ?? fraction;
  const mantissa = BigInt(`${whole}${fracDigits}` || '0');
  if (sign === '-' && mantissa !== 0n) {
    throw new SluiceAmountError(`${shown} must be a non-negative number of tokens`);
  }
  if (mantissa === 0n) return 0n;
  const tooLarge = () =>
    new SluiceAmountError(`${shown} is larger than any amount a contract can hold (2**256 - 1 base units)`);
  const tooPrecise = () => new SluiceAmountError(`${shown} has more than ${decimals} decimal places`);
  const exponent = exponentText === undefined ? 0 : Number(exponentText);
  if (!Number.isSafeInteger(exponent)) throw exponent > 0 ? tooLarge() : tooPrecise();
  // value = mantissa * 10**(exponent - fracDigits.length); base units = value * 10**decimals.
  const shift = BigInt(exponent - fracDigits.length) + places;
  let units: bigint;
  if (shift >= 0n) {
    if (shift > 78n) throw tooLarge(); // mantissa >= 1, and 10**79 > 2**256
    units = mantissa * 10n ** shift;
  } else {
    // A divisor longer than the mantissa cannot divide it (bounding the work for "1e-999999").
    if (-shift > BigInt(mantissa.toString().length)) throw tooPrecise();
    const divisor = 10n ** -shift;
    if (mantissa % divisor !== 0n) throw tooPrecise();
    units = mantissa / divisor;
  }
  if (units > UINT256_MAX) throw tooLarge();
  return units;
}

/** Render base units as a decimal string of whole tokens, without rounding ("12.5", "0.000000000000000001"). */
export function formatAmount(units: bigint, decimals: number = COMPUTE_TOKEN_DECIMALS): string {
  const places = checkDecimals(decimals);
  if (typeof units !== 'bigint') {
    throw new SluiceAmountError(`base units are a bigint, got ${typeof units}`);
  }
  const sign = units < 0n ? '-' : '';
  const magnitude = units < 0n ? -units : units;
  const scale = 10n ** places;
  const whole = magnitude / scale;
  const frac = magnitude % scale;
  if (frac === 0n) return `${sign}${whole}`;
  return `${sign}${whole}.${frac.toString().padStart(decimals, '0').replace(/0+$/, '')}`;
}

/** Parse an amount of compute tokens ("12.5") into base units. */
export function parseTokens(text: string): bigint {
  return parseAmount(text, COMPUTE_TOKEN_DECIMALS);
}

/** Render compute-token base units as whole tokens ("12.5"). */
export function formatTokens(units: bigint): string {
  return formatAmount(units, COMPUTE_TOKEN_DECIMALS);
}

/**
 * Read an amount of base units as the wire carries it (a decimal string such as a `Sluice-Cost` header or a
 * JSON field) into a bigint; refuses signs, fractions, exponents, numbers and anything above 2**256 - 1.
 */
export function baseUnits(value: string | bigint): bigint {
  if (typeof value === 'bigint') {
    if (value < 0n || value > UINT256_MAX) throw new SluiceAmountError(`${value} is not a uint256 amount`);
    return value;
  }
  if (typeof value !== 'string' || !/^[0-9]{1,78}$/.test(value)) {
    throw new SluiceAmountError(`base units are a decimal string of digits, got ${JSON.stringify(value)}`);
  }
  const units = BigInt(value);
  if (units > UINT256_MAX) throw new SluiceAmountError(`${value} does not fit in uint256`);
  return units;
}
