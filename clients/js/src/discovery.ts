/**
 * Discovery: `GET /.well-known/sluice.json` says where the chain and contracts are and which EIP-712 domain
 * (and, from servers that publish them, which `eth_signTypedData_v4` types) calls are signed under.
 */

import type { Address } from 'viem';

import { SluiceProtocolError } from './errors.js';
import { type Eip712Domain, eip712Domain, EIP712_DOMAIN_FIELDS, REDEMPTION_FIELDS } from './typed-data.js';
import { toAddress } from './values.js';

export const DISCOVERY_PATH = '/.well-known/sluice.json';

export interface TypedDataField {
  name: string;
  type: string;
}

/** The discovery document, its addresses checksummed. Field names are the wire's; fields this client does not
 * know yet (a newer server's) are kept as they came. */
export interface Discovery {
  chain_id: number;
  rpc_url: string;
  contracts: {
    token: Address;
    sale: Address;
    rate_card: Address;
    settlement: Address;
    payment_token: Address;
    node_registry?: Address;
    [name: string]: Address | undefined;
  };
  /** The compute token's ERC-20 metadata, from servers that publish it. */
  token?: { name: string; symbol: string; decimals: number };
  eip712_domain: Eip712Domain;
  /** What `eth_signTypedData_v4` takes for a call, from servers that publish it (checked to be Redemption). */
  eip712_types?: Record<string, TypedDataField[]>;
  primary_type?: string;
  unlock_period_seconds?: number;
  max_deadline_seconds: number;
  [field: string]: unknown;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function whole(value: unknown, field: string, min = 0): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new SluiceProtocolError(`discovery: ${field} must be an integer >= ${min}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function sameFields(got: unknown, want: readonly TypedDataField[]): boolean {
  return (
    Array.isArray(got) &&
    got.length === want.length &&
    got.every((f, i) => isRecord(f) && f.name === want[i]?.name && f.type === want[i]?.type)
  );
}

/**
 * Check a parsed discovery document. The client signs the Redemption struct it knows; a server whose
 * published types or primary type differ speaks another protocol version, and is refused here.
 */
export function parseDiscovery(json: unknown): Discovery {
  if (!isRecord(json)) throw new SluiceProtocolError('discovery: the document is not a JSON object');
  const chainId = whole(json.chain_id, 'chain_id', 1);
  if (typeof json.rpc_url !== 'string') throw new SluiceProtocolError('discovery: rpc_url must be a string');
  if (!isRecord(json.contracts)) throw new SluiceProtocolError('discovery: contracts must be an object');
  const contracts: Record<string, Address> = {};
  for (const [name, address] of Object.entries(json.contracts)) {
    if (address !== null && address !== undefined) contracts[name] = toAddress(address, `discovery: contracts.${name}`);
  }
  for (const name of ['token', 'sale', 'rate_card', 'settlement', 'payment_token']) {
    if (contracts[name] === undefined) throw new SluiceProtocolError(`discovery: contracts.${name} is missing`);
  }
  if (!isRecord(json.eip712_domain)) throw new SluiceProtocolError('discovery: eip712_domain must be an object');
  const domain = eip712Domain(json.eip712_domain as unknown as Eip712Domain);
  if (domain.chainId !== chainId) {
    throw new SluiceProtocolError(`discovery: eip712_domain.chainId ${domain.chainId} is not chain_id ${chainId}`);
  }
  const discovery: Discovery = {
    ...json,
    chain_id: chainId,
    rpc_url: json.rpc_url,
    contracts: contracts as Discovery['contracts'],
    eip712_domain: domain,
    max_deadline_seconds: whole(json.max_deadline_seconds, 'max_deadline_seconds', 1),
  };
  if (json.unlock_period_seconds !== undefined) {
    discovery.unlock_period_seconds = whole(json.unlock_period_seconds, 'unlock_period_seconds');
  }
  if (json.token !== undefined) {
    const token = json.token;
    if (!isRecord(token) || typeof token.name !== 'string' || typeof token.symbol !== 'string') {
      throw new SluiceProtocolError('discovery: token must be {"name", "symbol", "decimals"}');
    }
    discovery.token = { name: token.name, symbol: token.symbol, decimals: whole(token.decimals, 'token.decimals') };
  }
  const primary = json.primary_type;
  if (primary !== undefined && primary !== 'Redemption') {
    throw new SluiceProtocolError(`discovery: primary_type is ${JSON.stringify(primary)}, this client signs Redemption`);
  }
  if (json.eip712_types !== undefined) {
    const types = json.eip712_types;
    if (!isRecord(types) || !sameFields(types.Redemption, REDEMPTION_FIELDS)) {
      throw new SluiceProtocolError(
        'discovery: eip712_types.Redemption is not Redemption(address payer,bytes32 bodyHash,uint256 maxCost,' +
          'uint256 nonce,uint256 deadline); this client speaks another protocol version',
      );
    }
    if (types.EIP712Domain !== undefined && !sameFields(types.EIP712Domain, EIP712_DOMAIN_FIELDS)) {
      throw new SluiceProtocolError(
        'discovery: eip712_types.EIP712Domain is not (string name,string version,uint256 chainId,address verifyingContract)',
      );
    }
    discovery.eip712_types = types as Record<string, TypedDataField[]>;
    discovery.primary_type = 'Redemption';
  }
  return discovery;
}

/** The discovery URL of a Sluice base URL (well-known URIs live at the origin's root). */
export function discoveryUrl(baseUrl: string | URL): URL {
  return new URL(DISCOVERY_PATH, baseUrl);
}

/** Fetch and check the discovery document of the service at `baseUrl`. */
export async function fetchDiscovery(
  baseUrl: string | URL,
  options: { fetch?: typeof fetch; signal?: AbortSignal } = {},
): Promise<Discovery> {
  const url = discoveryUrl(baseUrl);
  const doFetch = options.fetch ?? globalThis.fetch;
  const response = await doFetch(url, { headers: { Accept: 'application/json' }, signal: options.signal ?? null });
  if (!response.ok) {
    throw new SluiceProtocolError(`discovery at ${url.href} answered HTTP ${response.status}`);
  }
  let json: unknown;
  try {
    json = await response.json();
  } catch {
    throw new SluiceProtocolError(`discovery at ${url.href} is not JSON`);
  }
  return parseDiscovery(json);
}
