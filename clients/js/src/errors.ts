/**
 * One error tree for the client. `SluiceApiError` mirrors the service's refusals: each carries the HTTP
 * status and the OpenAI envelope `{"error": {"message", "type", "param", "code"}}` with its stable `code`.
 */

/** The root of every error this package throws. */
export class SluiceError extends Error {
  override name = 'SluiceError';
}

/** Codes the service documents; any other string can still arrive from a newer server. */
export type SluiceErrorCode =
  | 'invalid_json'
  | 'invalid_request'
  | 'invalid_header'
  | 'body_too_large'
  | 'model_not_found'
  | 'not_found'
  | 'method_not_allowed'
  | 'missing_signature'
  | 'invalid_signature'
  | 'signature_expired'
  | 'deadline_too_far'
  | 'nonce_replayed'
  | 'insufficient_balance'
  | 'insufficient_allowance'
  | 'max_cost_too_low'
  | 'forbidden'
  | 'not_allowlisted'
  | 'paused'
  | 'suspended'
  | 'not_auditor'
  | 'rate_limited'
  | 'unavailable'
  | 'no_capacity'
  | 'chain_unavailable'
  | 'database_unavailable'
  | 'upstream_error'
  | 'upstream_dropped'
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

/** 400, 404, 405, 413: malformed input. */
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

/** 403: not allowlisted, paused, suspended, no budget from this payer, or not an auditor. */
export class SluicePermissionError extends SluiceApiError {
  override name = 'SluicePermissionError';
}

/** 429: over a rate limit. */
export class SluiceRateLimitError extends SluiceApiError {
  override name = 'SluiceRateLimitError';
}

/** 502: the node failed or dropped the call (mid-stream too, as code `upstream_dropped`). */
export class SluiceUpstreamError extends SluiceApiError {
  override name = 'SluiceUpstreamError';
}

/** 503: no node can serve, or the chain or database is unavailable; nothing was charged. */
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
  413: SluiceInvalidRequestError,
  401: SluiceAuthenticationError,
  402: SluicePaymentRequiredError,
  403: SluicePermissionError,
  429: SluiceRateLimitError,
  502: SluiceUpstreamError,
  503: SluiceUnavailableError,
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

/** The typed error for a status and a parsed body (any body: a proxy's HTML page becomes code `http_error`). */
export function apiError(status: number, body: unknown, fallbackText = ''): SluiceApiError {
  const envelope = errorEnvelope(body) ?? {
    message: `HTTP ${status}${fallbackText ? `: ${fallbackText.slice(0, 200)}` : ''}`,
    type: 'api_error',
    param: null,
    code: 'http_error',
  };
  const Kind = BY_STATUS[status] ?? SluiceApiError;
  return new Kind(status, envelope);
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
  return apiError(response.status, body, text);
}

/** The EIP-1193 error of a wallet, as a `SluiceWalletError`. */
export function walletError(action: string, error: unknown): SluiceWalletError {
  const code = isRecord(error) && typeof error.code === 'number' ? error.code : undefined;
  const detail = isRecord(error) && typeof error.message === 'string' ? error.message : String(error);
  const why = code === 4001 ? 'the user rejected the request' : detail;
  return new SluiceWalletError(`${action} failed: ${why}`, code, { cause: error });
}
