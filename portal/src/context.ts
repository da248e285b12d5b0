/** What every page gets: the deployment, the connected wallet on its chain, and the signed API client. */

import { type Discovery, eip1193Signer, SluiceClient } from '@sluice/client';
import type { Address } from 'viem';

import { type Chain, chainOf } from './chain';
import type { InjectedWallet } from './wallet';

export interface PageContext {
  doc: Discovery;
  chain: Chain;
  api: SluiceClient;
  account: Address;
  /** The service's own base URL (the portal is served by it). */
  origin: string;
}

export function pageContext(doc: Discovery, wallet: InjectedWallet, account: Address): PageContext {
  const origin = window.location.origin;
  return {
    doc,
    account,
    origin,
    chain: chainOf(doc, wallet.provider, account),
    api: new SluiceClient({
      baseUrl: origin,
      signer: eip1193Signer(wallet.provider, { address: account }),
      payer: account,
      discovery: doc,
      maxCost: 0n,
    }),
  };
}

/** Words for the wallet prompt of a signed read: what is signed and that it spends nothing. */
export function signedRead(path: string, why: string): string {
  return `Sign a read request for ${path} (${why}). The wallet shows a Sluice "Redemption" with max cost 0 and an empty body: it proves you hold the account and spends nothing.`;
}

let offered: Promise<Set<string>> | undefined;

/** The service's documented paths (from its OpenAPI document), to offer only what it serves. */
export function servicePaths(): Promise<Set<string>> {
  offered ??= fetch('/openapi.json', { headers: { Accept: 'application/json' } })
    .then((r) => (r.ok ? (r.json() as Promise<{ paths?: Record<string, unknown> }>) : { paths: {} }))
    .then((doc) => new Set(Object.keys(doc.paths ?? {})))
    .catch(() => new Set<string>());
  return offered;
}
