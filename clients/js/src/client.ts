/**
 * `SluiceClient`: one service, one signer. Its `fetch` signs calls for the OpenAI SDK; `get` and the account
 * and audit reads are signed GETs (empty body, maxCost 0) that throw the typed `SluiceApiError`s.
 */

import type { Address, Hex } from 'viem';

import { type Charge, responseCharge } from './charge.js';
import { type Discovery, fetchDiscovery } from './discovery.js';
import { apiErrorFromResponse, SluiceProtocolError } from './errors.js';
import { type CallInfo, createSigningFetch, type SigningFetch, type SigningFetchOptions } from './fetch.js';
import type { SluiceSigner } from './signer.js';

export type QueryValue = string | number | bigint | boolean | null | undefined;
export type Query = Record<string, QueryValue | readonly QueryValue[]>;

export interface SluiceClientOptions {
  /** The service's base URL, e.g. `http://127.0.0.1:8000` (the OpenAI SDK's baseURL is this + `/v1`). */
  baseUrl: string | URL;
  signer: SluiceSigner;
  payer?: Address;
  /** The most each billable call may cost, in base units. */
  maxCost?: bigint | ((call: CallInfo) => bigint);
  deadlineSeconds?: number;
  discovery?: Discovery;
  fetch?: typeof fetch;
  onCharge?: (charge: Charge, response: Response) => void;
}

/** A parsed JSON answer with the charge the response reported, if any. */
export interface SluiceResult<T> {
  data: T;
  charge: Charge | undefined;
  response: Response;
}

/** Filters of `GET /audit/transactions` (repeatable ones take arrays). */
export interface AuditTransactionsQuery extends Query {
  account?: string | readonly string[];
  kind?: string | readonly string[];
  event?: string | readonly string[];
  batch_id?: string;
  from_block?: number;
  to_block?: number;
  since?: string;
  until?: string;
  order?: 'asc' | 'desc';
  limit?: number;
  cursor?: string;
}

export class SluiceClient {
  readonly baseUrl: URL;
  readonly signer: SluiceSigner;
  /** The signing fetch: pass it to the OpenAI SDK as `fetch`. */
  readonly fetch: SigningFetch;
  private readonly plainFetch: typeof fetch;
  private readonly signing: SigningFetchOptions;
  private document: Promise<Discovery> | undefined;

  constructor(options: SluiceClientOptions) {
    this.baseUrl = new URL(options.baseUrl);
    if (!this.baseUrl.pathname.endsWith('/')) this.baseUrl.pathname += '/';
    this.signer = options.signer;
    this.plainFetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    if (options.discovery !== undefined) this.document = Promise.resolve(options.discovery);
    this.signing = {
      signer: options.signer,
      fetch: this.plainFetch,
      discoveryFor: () => this.discovery(),
      ...pick(options, ['payer', 'maxCost', 'deadlineSeconds', 'onCharge']),
    };
    this.fetch = createSigningFetch(this.signing);
  }

  /** The service's discovery document (fetched once). */
  discovery(): Promise<Discovery> {
    if (this.document === undefined) {
      const found = fetchDiscovery(this.baseUrl, { fetch: this.plainFetch });
      this.document = found;
      found.catch(() => {
        if (this.document === found) this.document = undefined;
      });
    }
    return this.document;
  }

  /** The URL of `path` (relative to the base URL) with `query` appended; arrays repeat the parameter. */
  url(path: string, query: Query = {}): URL {
    const url = new URL(path.replace(/^\//, ''), this.baseUrl);
    for (const [name, value] of Object.entries(query)) {
      const values = Array.isArray(value) ? value : [value];
      for (const v of values as QueryValue[]) {
        if (v !== undefined && v !== null) url.searchParams.append(name, String(v));
      }
    }
    return url;
  }

  /** A signed GET (empty body, maxCost 0), its JSON answer; a refusal throws its SluiceApiError. */
  async get<T = unknown>(path: string, query: Query = {}): Promise<T> {
    return (await this.request<T>('GET', path, { query })).data;
  }

  /** A signed POST of a JSON body; `maxCost` overrides the client's for this call. */
  async post<T = unknown>(path: string, body: unknown, options: { maxCost?: bigint } = {}): Promise<SluiceResult<T>> {
    const init: RequestInit = { body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' } };
    return this.request<T>('POST', path, { init, ...(options.maxCost === undefined ? {} : { maxCost: options.maxCost }) });
  }

  /** An unsigned GET (the public model list, discovery, health). */
  async getPublic<T = unknown>(path: string, query: Query = {}): Promise<T> {
    const response = await this.plainFetch(this.url(path, query), { headers: { Accept: 'application/json' } });
    return (await this.parse<T>(response)).data;
  }

  /** The models on the rate card with their rates (`GET /v1/models`). */
  models<T = unknown>(): Promise<T> {
    return this.getPublic<T>('v1/models');
  }

  /** What a payer (and a spender it approved) can still spend (`GET /v1/budget`). */
  budget<T = unknown>(query: { payer: Address; spender?: Address }): Promise<T> {
    return this.get<T>('v1/budget', query);
  }

  /** Metered and settled spend of each developer key a payer approved (`GET /v1/usage`). */
  usage<T = unknown>(query: { payer: Address }): Promise<T> {
    return this.get<T>('v1/usage', query);
  }

  /** On-chain history (`GET /audit/transactions`); signed by a key holding AUDITOR_ROLE. */
  auditTransactions<T = unknown>(query: AuditTransactionsQuery = {}): Promise<T> {
    return this.get<T>('audit/transactions', query);
  }

  /** A settled batch with every receipt and its proof (`GET /audit/batches/{batch_id}`): check it with `checkBatch`. */
  auditBatch<T = unknown>(batchId: Hex): Promise<T> {
    return this.get<T>(`audit/batches/${encodeURIComponent(batchId)}`);
  }

  /** One receipt with both signatures and its proof (`GET /audit/receipts/{job_id}`). */
  auditReceipt<T = unknown>(jobId: Hex): Promise<T> {
    return this.get<T>(`audit/receipts/${encodeURIComponent(jobId)}`);
  }

  /** Per (payer, spender) metered, settled and redeemed amounts (`GET /audit/reconciliation`). */
  auditReconciliation<T = unknown>(query: { account?: Address } = {}): Promise<T> {
    return this.get<T>('audit/reconciliation', query);
  }

  /** Every registered node's receipt key (`GET /audit/nodes`). */
  auditNodes<T = unknown>(): Promise<T> {
    return this.get<T>('audit/nodes');
  }

  private async request<T>(
    method: string,
    path: string,
    options: { query?: Query; init?: RequestInit; maxCost?: bigint },
  ): Promise<SluiceResult<T>> {
    const init: RequestInit = { method, ...options.init };
    const headers = new Headers(init.headers);
    headers.set('Accept', 'application/json');
    init.headers = headers;
    const doFetch =
      options.maxCost === undefined ? this.fetch : createSigningFetch({ ...this.signing, maxCost: options.maxCost });
    return this.parse<T>(await doFetch(this.url(path, options.query), init));
  }

  private async parse<T>(response: Response): Promise<SluiceResult<T>> {
    if (!response.ok) throw await apiErrorFromResponse(response);
    const text = await response.text();
    let data: T;
    try {
      data = JSON.parse(text) as T;
    } catch {
      throw new SluiceProtocolError(`${response.url || 'the service'} answered HTTP ${response.status} with non-JSON`);
    }
    return { data, charge: responseCharge(response), response };
  }
}

function pick<T extends object, K extends keyof T>(from: T, keys: readonly K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const key of keys) if (from[key] !== undefined) out[key] = from[key];
  return out;
}
