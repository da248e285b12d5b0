/**
 * One error tree for the client. `SluiceApiError` mirrors the service's refusals: each carries the HTTP
 * status and the OpenAI envelope `{"error": {"message", "type", "param", "code"}}` with its stable `code`.
 */

/** The root of every error this package throws. */
export class SluiceError extends Error {
  override name = 'SluiceError';
}

/**
 * The codes of the README's error table, by status (tests/redemption/test_error_codes.py keeps them equal),
 * plus `http_error` for an answer without the envelope; any other string can still arrive from a newer server.
 */
export type SluiceErrorCode =
  // 400
  | 'invalid_json'
  | 'invalid_request'
  | 'invalid_header'
  | 'context_length_exceeded'
  | 'invalid_receipt'
  // 401
  | 'missing_signature'
  | 'invalid_signature'
  | 'signature_expired'
  | 'deadline_too_far'
  | 'nonce_replayed'
  // 402
  | 'insufficient_escrow'
  | 'insufficient_budget'
  | 'max_cost_too_low'
  // 403
  | 'no_budget'
  | 'not_allowlisted'
  | 'paused'
  | 'suspended'
  | 'not_auditor'
  | 'not_operator'
  | 'not_account_holder'
  | 'forbidden'
  | 'cors_origin_not_allowed'
  | 'node_retired'
  | 'node_not_registered'
  | 'endpoint_mismatch'
  | 'key_expired'
  // 404
  | 'model_not_found'
  | 'not_found'
  // 405
  | 'method_not_allowed'
  // 408
  | 'request_timeout'
  // 409
  | 'receipt_not_accepted'
  // 413
  | 'body_too_large'
  // 422
  | 'receipt_refused'
  // 429
  | 'rate_limited'
  | 'token_rate_limited'
  // 502
  | 'upstream_error'
  | 'upstream_dropped'
  // 503
  | 'unavailable'
  | 'no_capacity'
  | 'chain_unavailable'
  | 'database_unavailable'
  | 'settlement_overdue'
  | 'too_many_connections'
  // 504
  | 'duration_exceeded'
  // not from the service: an answer without the envelope (a proxy's page)
  | 'http_error'
  | (string & {});

/** The body of the OpenAI error envelope. */
export interface ErrorEnvelope {
  message: string;
  type: string;
  param: string | null;
  code: SluiceErrorCode;
}

/** The service refused a call (or a stream broke): `status`, `code`, `type` and `param` say how. */
export class SluiceApiError extends SluiceError {
  override name = 'SluiceApiError';
  readonly status: number;
  readonly code: SluiceErrorCode;
  readonly type: string;
  readonly param: string | null;

  constructor(status: number, envelope: ErrorEnvelope) {
    super(envelope.message);
    this.status = status;
    this.code = envelope.code;
    this.type = envelope.type;
    this.param = envelope.param;
  }
}

/** 400, 404, 405, 408, 413: malformed input (or sent too slowly). */
export class SluiceInvalidRequestError extends SluiceApiError {
  override name = 'SluiceInvalidRequestError';
}

/** 401: a missing, invalid, expired or replayed signature. */
export class SluiceAuthenticationError extends SluiceApiError {
  override name = 'SluiceAuthenticationError';
}

/** 402: not enough escrow or budget for the call's worst case, or a maxCost below it. */
export class SluicePaymentRequiredError extends SluiceApiError {
  override name = 'SluicePaymentRequiredError';
}

/**
 * 403: no budget from this payer, not allowlisted, paused, suspended, not an auditor or the account's holder,
 * a browser origin not allowed, or (node-facing) a node retired, not registered or off its endpoint.
 */
export class SluicePermissionError extends SluiceApiError {
  override name = 'SluicePermissionError';
}

/** 403 `key_expired`: the payer's policy for the signing key has expired. */
export class SluiceKeyExpiredError extends SluicePermissionError {
  override name = 'SluiceKeyExpiredError';
}

/**
 * 429: over a key's limit from its payer's key policy: `rate_limited` (calls per window) or `token_rate_limited`
 * (model tokens per window). `retryAfter` is the Retry-After header in whole seconds, when the answer had one.
 */
export class SluiceRateLimitError extends SluiceApiError {
  override name = 'SluiceRateLimitError';
  retryAfter: number | undefined;

  constructor(status: number, envelope: ErrorEnvelope, retryAfter?: number) {
    super(status, envelope);
    this.retryAfter = retryAfter;
  }
}

/** 429 `token_rate_limited`: the call's worst case (prompt bound + max_tokens) is over the tokens left. */
export class SluiceTokenRateLimitError extends SluiceRateLimitError {
  override name = 'SluiceTokenRateLimitError';
}

/**
 * 502: the node failed or dropped the call (mid-stream too, as code `upstream_dropped`); 504: the call ran
 * longer than the service allows (`duration_exceeded`, charged for what was generated).
 */
export class SluiceUpstreamError extends SluiceApiError {
  override name = 'SluiceUpstreamError';
}

/** 503: no node can serve, the chain or database is unavailable, settlement is behind; nothing was charged. */
export class SluiceUnavailableError extends SluiceApiError {
  override name = 'SluiceUnavailableError';
}

/** A server or wallet answered outside the protocol (a malformed discovery document, a bad signature). */
export class SluiceProtocolError extends SluiceError {
  override name = 'SluiceProtocolError';
}

/** A signature that is malformed, high-s, or does not recover. */
export class SluiceSignatureError extends SluiceError {
  override name = 'SluiceSignatureError';
}

/** An amount that is not an exact, non-negative number of base units. */
export class SluiceAmountError extends SluiceError {
  override name = 'SluiceAmountError';
}

/** The wallet refused or failed a request; `code` is the EIP-1193 error code (4001: the user rejected it). */
export class SluiceWalletError extends SluiceError {
  override name = 'SluiceWalletError';
  readonly code: number | undefined;

  constructor(message: string, code: number | undefined, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

const BY_STATUS: Record<number, new (status: number, envelope: ErrorEnvelope) => SluiceApiError> = {
  400: SluiceInvalidRequestError,
  404: SluiceInvalidRequestError,
  405: SluiceInvalidRequestError,
  408: SluiceInvalidRequestError,
  413: SluiceInvalidRequestError,
  401: SluiceAuthenticationError,
  402: SluicePaymentRequiredError,
  403: SluicePermissionError,
  429: SluiceRateLimitError,
  502: SluiceUpstreamError,
  503: SluiceUnavailableError,
  504: SluiceUpstreamError,
};

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The envelope inside a parsed body, or undefined when the body is not one. */
export function errorEnvelope(body: unknown): ErrorEnvelope | undefined {
  if (!isRecord(body) || !isRecord(body.error)) return undefined;
  const { message, type, param, code } = body.error;
  if (typeof message !== 'string') return undefined;
  return {
    message,
    type: typeof type === 'string' ? type : 'api_error',
    param: typeof param === 'string' ? param : null,
    code: typeof code === 'string' ? code : 'http_error',
  };
}

/**
 * The typed error for a status and a parsed body (any body: a proxy's HTML page becomes code `http_error`);
 * `retryAfter` is a 429's Retry-After header in seconds.
 */
export function apiError(status: number, body: unknown, fallbackText = '', retryAfter?: number): SluiceApiError {
  const envelope = errorEnvelope(body) ?? {
    message: `HTTP ${status}${fallbackText ? `: ${fallbackText.slice(0, 200)}` : ''}`,
    type: 'api_error',
    param: null,
    code: 'http_error',
  };
  if (status === 403 && envelope.code === 'key_expired') return new SluiceKeyExpiredError(status, envelope);
  if (status === 429) {
    const Limit = envelope.code === 'token_rate_limited' ? SluiceTokenRateLimitError : SluiceRateLimitError;
    return new Limit(status, envelope, retryAfter);
  }
  const Kind = BY_STATUS[status] ?? SluiceApiError;
  return new Kind(status, envelope);
}

/** A Retry-After header's whole seconds (the delta form the service sends), else undefined. */
export function retryAfterSeconds(header: string | null): number | undefined {
  return header !== null && /^[0-9]+$/.test(header.trim()) ? Number(header.trim()) : undefined;
}

/** Read a failed response's body and turn it into the matching `SluiceApiError` subclass. */
export async function apiErrorFromResponse(response: Response): Promise<SluiceApiError> {
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return apiError(response.status, body, text, retryAfterSeconds(response.headers.get('retry-after')));
}

/** The EIP-1193 error of a wallet, as a `SluiceWalletError`. */
export function walletError(action: string, error: unknown): SluiceWalletError {
  const code = isRecord(error) && typeof error.code === 'number' ? error.code : undefined;
  const detail = isRecord(error) && typeof error.message === 'string' ? error.message : String(error);
  const why = code === 4001 ? 'the user rejected the request' : detail;
  return new SluiceWalletError(`${action} failed: ${why}`, code, { cause: error });
}
