// The portal's own formatting and error wording (the client's amounts, typed data and batch checks are
// tested against the Python vectors in clients/js/test).

import { apiError, ONE_TOKEN, SluiceWalletError } from '@sluice/client';
import { ContractFunctionRevertedError, encodeErrorResult } from 'viem';
import { describe, expect, it } from 'vitest';

import { describeError, SALE_ABI, SETTLEMENT_ABI } from '../../src/chain';
import { describeTime, formatUnits, groupedTokens, toCsv } from '../../src/format';
import { snippets } from '../../src/pages/developer';
import { usageCsv } from '../../src/pages/enterprise';

describe('amounts', () => {
  it('are exact and grouped, from bigint base units', () => {
    expect(groupedTokens(0n)).toBe('0');
    expect(groupedTokens(1n)).toBe('0.000000000000000001');
    expect(groupedTokens(1234567n * ONE_TOKEN + 5n * 10n ** 17n)).toBe('1,234,567.5');
    expect(groupedTokens(-1000n * ONE_TOKEN)).toBe('-1,000');
    expect(groupedTokens((1n << 256n) - 1n)).toBe(
      '115,792,089,237,316,195,423,570,985,008,687,907,853,269,984,665,640,564,039,457.584007913129639935',
    );
    expect(formatUnits(1_500_000n, 6)).toBe('1.5');
    expect(formatUnits(123_456_789_000n, 6)).toBe('123,456.789');
  });

  it('refuse numbers (a float would have rounded them)', () => {
    expect(() => groupedTokens(1.5 as unknown as bigint)).toThrow(/bigint/);
  });
});

describe('times', () => {
  it('are UTC with how far away they are', () => {
    const now = Date.parse('2026-12-03T12:00:00Z');
    expect(describeTime(now / 1000 + 90, now)).toBe('2026-12-03T12:01:30Z (in 90 s)');
    expect(describeTime(BigInt(now / 1000 + 86400), now)).toBe('2026-12-04T12:00:00Z (in 24 h)');
    expect(describeTime(now / 1000 - 600, now)).toBe('2026-12-03T11:50:00Z (10 min ago)');
    expect(describeTime(now / 1000, now)).toBe('2026-12-03T12:00:00Z (now)');
  });
});

describe('CSV', () => {
  it('quotes what needs quoting and ends lines with CRLF', () => {
    expect(toCsv(['a', 'b'], [['x,y', 'say "hi"'], [1n, null]])).toBe('a,b\r\n"x,y","say ""hi"""\r\n1,\r\n');
  });

  it('of usage: one row per key and model, base units', () => {
    const csv = usageCsv({
      spenders: [],
      models: [{ spender: '0xAb', model: 'm', calls: 2, prompt_tokens: 3, completion_tokens: 4, metered: '1000000000000000001' }],
    });
    expect(csv).toBe('spender,model,calls,prompt_tokens,completion_tokens,metered\r\n0xAb,m,2,3,4,1000000000000000001\r\n');
  });
});

describe('errors in words', () => {
  it('a declined wallet request', () => {
    expect(describeError(new SluiceWalletError('no', 4001))).toBe('You declined the request in your wallet. Nothing was signed or sent.');
    expect(describeError({ code: 4001, message: 'User rejected' })).toMatch(/^You declined/);
  });

  it('an API refusal with its code and what to do', () => {
    const error = apiError(403, { error: { message: 'payer is not allowlisted', type: 'permission_error', param: null, code: 'not_allowlisted' } });
    expect(describeError(error)).toBe(
      'The service refused: payer is not allowlisted (not_allowlisted) — ask the operator to allowlist this account (sluice admin allowlist add).',
    );
  });

  it('contract reverts: not allowlisted, insufficient payment token', () => {
    const revert = (abi: typeof SALE_ABI | typeof SETTLEMENT_ABI, errorName: string, args: unknown[]) =>
      new ContractFunctionRevertedError({
        abi,
        functionName: 'x',
        data: encodeErrorResult({ abi, errorName, args } as Parameters<typeof encodeErrorResult>[0]),
      });
    const who = '0x3508237aEb4F747859f5B2A5BCC0810ab66b769f';
    expect(describeError(revert(SETTLEMENT_ABI, 'SettlementNotAllowlisted', [who]))).toBe(
      `The account ${who} is not allowlisted, so it cannot hold compute tokens or escrow. Ask the operator to allowlist it.`,
    );
    expect(describeError(revert(SALE_ABI, 'TokenSalePaymentShort', [who, 2_500_000n, 1_000_000n]))).toBe(
      `Insufficient payment token: the purchase costs 2.5 and ${who} holds or approved only 1 (payment token, 6 decimals). Add payment token to the wallet, or buy less.`,
    );
  });
});

describe('snippets', () => {
  it('carry the base URL, payer and model', () => {
    const { python, js } = snippets('http://127.0.0.1:8000', '0xPayer', 'meta-llama/Llama-3.1-8B-Instruct');
    expect(python).toContain('base_url="http://127.0.0.1:8000/v1"');
    expect(python).toContain('SluiceAuth(os.environ["SLUICE_DEVELOPER_KEY"], payer="0xPayer"');
    expect(js).toContain("baseURL: 'http://127.0.0.1:8000/v1'");
    expect(js).toContain("model: 'meta-llama/Llama-3.1-8B-Instruct'");
  });
});
