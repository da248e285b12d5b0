import { describe, expect, it } from 'vitest';

import {
  apiError,
  apiErrorFromResponse,
  retryAfterSeconds,
  SluiceKeyExpiredError,
  SluicePermissionError,
  SluiceRateLimitError,
  SluiceTokenRateLimitError,
} from '../src/index.js';

const envelope = (code: string, type: string) => ({ error: { message: 'refused', type, param: null, code } });

describe('key policy refusals', () => {
  it('types 403 key_expired', () => {
    const error = apiError(403, envelope('key_expired', 'permission_error'));
    expect(error).toBeInstanceOf(SluiceKeyExpiredError);
    expect(error).toBeInstanceOf(SluicePermissionError);
    expect(error).toMatchObject({ status: 403, code: 'key_expired', type: 'permission_error' });
  });

  it('types both 429s and reads Retry-After from the response', async () => {
    const headers = { 'content-type': 'application/json', 'retry-after': '17' };
    const calls = await apiErrorFromResponse(
      new Response(JSON.stringify(envelope('rate_limited', 'rate_limit_error')), { status: 429, headers }),
    );
    expect(calls).toBeInstanceOf(SluiceRateLimitError);
    expect(calls).not.toBeInstanceOf(SluiceTokenRateLimitError);
    expect(calls).toMatchObject({ status: 429, code: 'rate_limited', retryAfter: 17 });
    const tokens = await apiErrorFromResponse(
      new Response(JSON.stringify(envelope('token_rate_limited', 'rate_limit_error')), { status: 429, headers }),
    );
    expect(tokens).toBeInstanceOf(SluiceTokenRateLimitError);
    expect(tokens).toMatchObject({ code: 'token_rate_limited', retryAfter: 17 });
  });

  it('reads only whole seconds from Retry-After', () => {
    expect(retryAfterSeconds('5')).toBe(5);
    expect(retryAfterSeconds(' 60 ')).toBe(60);
    expect(retryAfterSeconds('Wed, 21 Oct 2015 07:28:00 GMT')).toBeUndefined();
    expect(retryAfterSeconds('1.5')).toBeUndefined();
    expect(retryAfterSeconds(null)).toBeUndefined();
  });
});
