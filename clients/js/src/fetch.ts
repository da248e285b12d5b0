/**
 * A `fetch` that signs every request as a Sluice call, so any HTTP client that takes a `fetch` (the OpenAI
 * Node SDK among them) speaks the protocol unchanged:
 *
 *     const openai = new OpenAI({ baseURL: 'http://127.0.0.1:8000/v1', apiKey: 'unused',
 *                                 fetch: createSigningFetch({ signer, maxCost: 10n ** 17n }) });
 *
 * The EIP-712 domain comes from the discovery document of each request's origin, fetched once.
 */

import type { Address } from 'viem';

import { signCall, DEFAULT_DEADLINE_SECONDS } from './call.js';
import { type Charge, responseCharge } from './charge.js';
import { type Discovery, fetchDiscovery } from './discovery.js';
import { SluiceError } from './errors.js';
import type { SluiceSigner } from './signer.js';

/** What `maxCost` is decided from, when it is a function. */
export interface CallInfo {
  method: string;
  url: string;
  body: Uint8Array;
}

export interface SigningFetchOptions {
  signer: SluiceSigner;
  /** Whose escrow pays; the signer's own by default. */
  payer?: Address;
  /** The most each billable call may cost, in base units; GET and HEAD calls sign 0. */
  maxCost?: bigint | ((call: CallInfo) => bigint);
  /** Seconds each signature stays valid (capped at the server's `max_deadline_seconds`). */
  deadlineSeconds?: number;
  /** A discovery document already at hand (skips fetching one). */
  discovery?: Discovery;
  /** Where the document for a request URL comes from, instead of its origin's `/.well-known/sluice.json`. */
  discoveryFor?: (url: string) => Promise<Discovery>;
  /** The fetch that sends the signed requests (and the discovery request); `globalThis.fetch` by default. */
  fetch?: typeof fetch;
  /** Called with every response's charge (`Sluice-Job-Id` / `Sluice-Cost`). */
  onCharge?: (charge: Charge, response: Response) => void;
}

/** A signing fetch; `discovery(url)` gives the document it signs under for that URL's origin. */
export interface SigningFetch {
  (input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  discovery(url: string | URL): Promise<Discovery>;
}

const UNSIGNED_BODY = new Set(['GET', 'HEAD']);

export function createSigningFetch(options: SigningFetchOptions): SigningFetch {
  const send = options.fetch ?? ((input: RequestInfo | URL, init?: RequestInit) => globalThis.fetch(input, init));
  const documents = new Map<string, Promise<Discovery>>();

  function discovery(url: string | URL): Promise<Discovery> {
    if (options.discovery !== undefined) return Promise.resolve(options.discovery);
    if (options.discoveryFor !== undefined) return options.discoveryFor(String(url));
    const origin = new URL(url).origin;
    let found = documents.get(origin);
    if (found === undefined) {
      found = fetchDiscovery(origin, { fetch: send });
      documents.set(origin, found);
      found.catch(() => documents.delete(origin)); // a failed discovery is asked again next call
    }
    return found;
  }

  async function signingFetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response> {
    const request = new Request(input, init);
    const method = request.method.toUpperCase();
    const body = UNSIGNED_BODY.has(method) ? new Uint8Array() : new Uint8Array(await request.clone().arrayBuffer());
    let maxCost: bigint;
    if (UNSIGNED_BODY.has(method)) maxCost = 0n;
    else if (typeof options.maxCost === 'function') maxCost = options.maxCost({ method, url: request.url, body });
    else if (options.maxCost !== undefined) maxCost = options.maxCost;
    else throw new SluiceError(`${method} ${request.url} is a billable call: give the signing fetch a maxCost`);
    const doc = await discovery(request.url);
    const signed = await signCall(options.signer, doc.eip712_domain, body, {
      maxCost,
      ...(options.payer === undefined ? {} : { payer: options.payer }),
      deadlineSeconds: Math.min(options.deadlineSeconds ?? DEFAULT_DEADLINE_SECONDS, doc.max_deadline_seconds),
    });
    const headers = new Headers(request.headers);
    for (const [name, value] of Object.entries(signed.headers)) headers.set(name, value);
    const response = await send(new Request(request, { headers }));
    const charge = responseCharge(response);
    if (charge !== undefined) options.onCharge?.(charge, response);
    return response;
  }

  return Object.assign(signingFetch, { discovery });
}
