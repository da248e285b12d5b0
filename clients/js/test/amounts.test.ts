// Amounts are exact bigints: every edge of parsing and formatting, beyond the vectors Python exported.

import { describe, expect, it } from 'vitest';

import {
  baseUnits,
  COMPUTE_TOKEN_DECIMALS,
  formatAmount,
  formatTokens,
  ONE_TOKEN,
  parseAmount,
  parseTokens,
  SluiceAmountError,
  UINT256_MAX,
} from '../src/index.js';

// A fixed xorshift generator, so a failure names the same amount on every run.
function amounts(count: number, seed = 0x9e3779b97f4a7c15n): bigint[] {
  const mask = (1n << 64n) - 1n;
  let state = seed;
  const next = () => {
    state ^= (state << 13n) & mask;
    state ^= state >> 7n;
    state ^= (state << 17n) & mask;
    return state;
  };
  return Array.from({ length: count }, (_, i) => {
    let n = 0n;
    for (let w = 0; w < 4; w++) n = (n << 64n) | next();
    return n >> BigInt((i * 37) % 256); // every magnitude from 2**256 down to 1
  });
}

describe('formatTokens / parseTokens', () => {
  it('round-trip exactly across all magnitudes', () => {
    for (const units of [0n, 1n, ONE_TOKEN - 1n, ONE_TOKEN, ONE_TOKEN + 1n, UINT256_MAX, ...amounts(400)]) {
      expect(parseTokens(formatTokens(units))).toBe(units);
    }
  });

  it('render without rounding, trailing zeros or exponents', () => {
    expect(formatTokens(1n)).toBe('0.000000000000000001');
    expect(formatTokens(10n ** 17n)).toBe('0.1');
    expect(formatTokens(1_500_000_000_000_000_000n)).toBe('1.5');
    expect(formatTokens(10n ** 40n)).toBe('10000000000000000000000');
    expect(formatTokens(-1n)).toBe('-0.000000000000000001');
    expect(COMPUTE_TOKEN_DECIMALS).toBe(18);
  });

  it('read what people type', () => {
    expect(parseTokens('12.5')).toBe(12_500_000_000_000_000_000n);
    expect(parseTokens('1_000.000_1')).toBe(1_000_000_100_000_000_000_000n);
    expect(parseTokens('\t3\n')).toBe(3n * ONE_TOKEN);
    expect(parseTokens('0.10')).toBe(10n ** 17n);
    expect(parseTokens('1.5E2')).toBe(150n * ONE_TOKEN);
    expect(parseTokens('0e999999999999999999999')).toBe(0n);
    expect(parseTokens('100000e-5')).toBe(ONE_TOKEN);
    expect(parseTokens('1' + '0'.repeat(40) + 'e-40')).toBe(ONE_TOKEN);
  });

  it.each([
    ['1e-19', 'has more than 18 decimal places'],
    ['0.0000000000000000015', 'has more than 18 decimal places'],
    ['1e-999999', 'has more than 18 decimal places'],
    ['1e-99999999999999999999', 'has more than 18 decimal places'],
    ['1e60', 'larger than any amount a contract can hold'],
    ['1e99999999999999999999', 'larger than any amount a contract can hold'],
    ['115792089237316195423570985008687907853269984665640564039457.584007913129639936', 'larger than any amount'],
    ['-1', 'must be a non-negative number of tokens'],
    ['-1e-30', 'must be a non-negative number of tokens'],
    ['1,5', 'is not a number of tokens'],
    ['٣', 'is not a number of tokens'],
    ['Infinity', 'is not a number of tokens'],
    ['12.5 tokens', 'is not a number of tokens'],
  ])('refuse %s', (text, why) => {
    expect(() => parseTokens(text)).toThrow(SluiceAmountError);
    expect(() => parseTokens(text)).toThrow(why);
  });

  it('refuse what is not a string or a bigint (no floats anywhere)', () => {
    expect(() => parseTokens(12.5 as unknown as string)).toThrow('an amount is a string of digits, got number');
    expect(() => formatTokens(1 as unknown as bigint)).toThrow('base units are a bigint, got number');
  });

  it('is bounded in time for huge inputs', () => {
    const started = performance.now();
    expect(() => parseTokens('9'.repeat(5000))).toThrow('larger than any amount');
    expect(() => parseTokens('1e-1000000000')).toThrow('decimal places');
    expect(performance.now() - started).toBeLessThan(1000);
  });
});

describe('other decimals', () => {
  it('a 6-decimal stablecoin and a 0-decimal unit', () => {
    expect(parseAmount('12.345678', 6)).toBe(12_345_678n);
    expect(() => parseAmount('12.3456789', 6)).toThrow('has more than 6 decimal places');
    expect(formatAmount(12_345_678n, 6)).toBe('12.345678');
    expect(formatAmount(7n, 0)).toBe('7');
    expect(parseAmount('7', 0)).toBe(7n);
    expect(() => parseAmount('7.5', 0)).toThrow('has more than 0 decimal places');
    expect(() => formatAmount(1n, 1.5)).toThrow('decimals must be an integer from 0 to 77');
  });
});

describe('baseUnits (amounts as the wire carries them)', () => {
  it('reads decimal strings and bigints', () => {
    expect(baseUnits('0')).toBe(0n);
    expect(baseUnits('000123')).toBe(123n);
    expect(baseUnits(UINT256_MAX.toString())).toBe(UINT256_MAX);
    expect(baseUnits(5n)).toBe(5n);
  });

  it.each(['', '1.5', '-1', '1e3', ' 1', '0x10', (UINT256_MAX + 1n).toString(), '1'.repeat(79)])('refuses %j', (text) => {
    expect(() => baseUnits(text)).toThrow(SluiceAmountError);
  });

  it('refuses numbers and out-of-range bigints', () => {
    expect(() => baseUnits(5 as unknown as string)).toThrow(SluiceAmountError);
    expect(() => baseUnits(-1n)).toThrow('is not a uint256 amount');
    expect(() => baseUnits(UINT256_MAX + 1n)).toThrow('is not a uint256 amount');
  });
});
