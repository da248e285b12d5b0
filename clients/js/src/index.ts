/**
 * @sluice/client — Sluice's wire protocol for Node 20 and browsers (DESIGN.md "The signed call").
 */

export {
  baseUnits,
  COMPUTE_TOKEN_DECIMALS,
  formatAmount,
  formatTokens,
  ONE_TOKEN,
  parseAmount,
  parseTokens,
  UINT256_MAX,
} from './amounts.js';
export {
  type AuditProblem,
  type AuditReceipt,
  type AuditRequestSignature,
  type BatchCheck,
  type BatchCheckOptions,
  checkBatch,
} from './audit.js';
export {
  DEFAULT_DEADLINE_SECONDS,
  HEADER_COST,
  HEADER_DEADLINE,
  HEADER_JOB_ID,
  HEADER_MAX_COST,
  HEADER_NONCE,
  HEADER_PAYER,
  HEADER_SIGNATURE,
  randomNonce,
  type SignCallOptions,
  signCall,
  SIGNED_CALL_HEADERS,
  type SignedCall,
} from './call.js';
export { type Charge, chunkCharge, readEventStream, responseCharge } from './charge.js';
export {
  type AuditTransactionsQuery,
  type Query,
  type QueryValue,
  SluiceClient,
  type SluiceClientOptions,
  type SluiceResult,
} from './client.js';
export {
  type Discovery,
  DISCOVERY_PATH,
  discoveryUrl,
  fetchDiscovery,
  parseDiscovery,
  type TypedDataField,
} from './discovery.js';
export {
  apiError,
  apiErrorFromResponse,
  type ErrorEnvelope,
  errorEnvelope,
  retryAfterSeconds,
  SluiceAmountError,
  SluiceApiError,
  SluiceAuthenticationError,
  SluiceError,
  type SluiceErrorCode,
  SluiceInvalidRequestError,
  SluicePaymentRequiredError,
  SluiceKeyExpiredError,
  SluicePermissionError,
  SluiceProtocolError,
  SluiceRateLimitError,
  SluiceTokenRateLimitError,
  SluiceSignatureError,
  SluiceUnavailableError,
  SluiceUpstreamError,
  SluiceWalletError,
} from './errors.js';
export { type CallInfo, createSigningFetch, type SigningFetch, type SigningFetchOptions } from './fetch.js';
export {
  batchIdOf,
  buildMerkleTree,
  hashPair,
  type LeafFields,
  merkleRoot,
  type MerkleTree,
  processProof,
  receiptLeaf,
  verifyProof,
} from './merkle.js';
export {
  isLowS,
  normalizeSignature,
  recoverReceiptSigner,
  recoverRedemptionSigner,
  recoverSigner,
  SECP256K1_N,
} from './signatures.js';
export { type Eip1193Provider, eip1193Signer, localSigner, type SluiceSigner } from './signer.js';
export {
  bodyHash,
  DOMAIN_VERSION,
  domainSeparator,
  type Eip712Domain,
  eip712Domain,
  EIP712_DOMAIN_FIELDS,
  modelId,
  RECEIPT_DOMAIN_NAME,
  receiptDomain,
  type Redemption,
  REDEMPTION_DOMAIN_NAME,
  REDEMPTION_FIELDS,
  REDEMPTION_TYPE,
  redemptionDigest,
  redemptionTypedData,
  type RedemptionTypedData,
  redemptionTypes,
  type SluiceTypedData,
  typedDataDigest,
  typedDataJson,
  type UsageReceipt,
  USAGE_RECEIPT_FIELDS,
  USAGE_RECEIPT_TYPE,
  usageReceiptDigest,
  usageReceiptTypedData,
  type UsageReceiptTypedData,
  usageReceiptTypes,
} from './typed-data.js';
