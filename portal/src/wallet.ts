/**
 * The browser wallet: found through EIP-6963 announcements (several wallets side by side) or the legacy
 * `window.ethereum`, connected with `eth_requestAccounts`, moved onto the deployment's chain with
 * `wallet_switchEthereumChain` / `wallet_addEthereumChain`, and given the compute token with
 * `wallet_watchAsset` — all from the discovery document.
 */

import type { Discovery, Eip1193Provider } from '@sluice/client';
import { type Address, getAddress, type Hex, hexToNumber, isAddress, numberToHex } from 'viem';

export interface WalletInfo {
  uuid: string;
  name: string;
  icon: string;
  rdns: string;
}

export interface InjectedWallet {
  info: WalletInfo;
  provider: Eip1193Provider;
}

interface AnnounceEvent extends Event {
  detail: InjectedWallet;
}

declare global {
  interface Window {
    ethereum?: Eip1193Provider;
  }
}

/** EIP-1193 error codes the portal reacts to. */
export const USER_REJECTED = 4001;
export const UNRECOGNIZED_CHAIN = 4902;

export class WalletRequestError extends Error {
  readonly code: number | undefined;

  constructor(message: string, code: number | undefined) {
    super(message);
    this.code = code;
  }
}

function errorCode(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const { code, data } = error as { code?: unknown; data?: { originalError?: { code?: unknown } } };
  // MetaMask Mobile wraps an unknown chain's 4902 in an internal error.
  const inner = data?.originalError?.code;
  if (typeof inner === 'number') return inner;
  return typeof code === 'number' ? code : undefined;
}

/** Ask the wallet; its refusal becomes a WalletRequestError with a sentence a person can act on. */
export async function ask<T>(provider: Eip1193Provider, method: string, params?: unknown): Promise<T> {
  try {
    return (await provider.request(params === undefined ? { method } : { method, params: params as object })) as T;
  } catch (error) {
    const code = errorCode(error);
    const detail = error instanceof Error ? error.message : String((error as { message?: unknown })?.message ?? error);
    const message = code === USER_REJECTED ? 'You declined the request in your wallet.' : `The wallet refused ${method}: ${detail}`;
    throw new WalletRequestError(message, code);
  }
}

/**
 * Watch for injected wallets: EIP-6963 announcements, or `window.ethereum` when no wallet announces itself.
 * Returns the function that stops watching.
 */
export function watchWallets(onChange: (wallets: InjectedWallet[]) => void): () => void {
  const announced = new Map<string, InjectedWallet>();
  const publish = () => {
    if (announced.size > 0) onChange([...announced.values()]);
    else if (window.ethereum !== undefined) {
      onChange([{ info: { uuid: 'injected', name: 'Browser wallet', icon: '', rdns: 'injected' }, provider: window.ethereum }]);
    } else onChange([]);
  };
  const onAnnounce = (event: Event) => {
    const { info, provider } = (event as AnnounceEvent).detail ?? {};
    if (info?.uuid === undefined || typeof provider?.request !== 'function') return;
    announced.set(info.uuid, { info, provider });
    publish();
  };
  window.addEventListener('eip6963:announceProvider', onAnnounce);
  // Wallets that inject `window.ethereum` after the page loaded say so with this event (MetaMask's convention).
  window.addEventListener('ethereum#initialized', publish);
  window.dispatchEvent(new Event('eip6963:requestProvider'));
  publish();
  return () => {
    window.removeEventListener('eip6963:announceProvider', onAnnounce);
    window.removeEventListener('ethereum#initialized', publish);
  };
}

export function parseChainId(value: unknown): number {
  if (typeof value === 'string' && /^0x[0-9a-fA-F]+$/.test(value)) return hexToNumber(value as Hex);
  if (typeof value === 'number' && Number.isSafeInteger(value)) return value;
  throw new WalletRequestError(`The wallet reported an unreadable chain id (${String(value)}).`, undefined);
}

export function firstAccount(accounts: unknown): Address | undefined {
  if (!Array.isArray(accounts) || accounts.length === 0) return undefined;
  const first: unknown = accounts[0];
  return typeof first === 'string' && isAddress(first, { strict: false }) ? getAddress(first) : undefined;
}

export interface Connection {
  account: Address;
  chainId: number;
}

/** `eth_requestAccounts`, then `eth_chainId`. */
export async function connect(provider: Eip1193Provider): Promise<Connection> {
  const account = firstAccount(await ask<unknown>(provider, 'eth_requestAccounts'));
  if (account === undefined) throw new WalletRequestError('The wallet connected no account.', undefined);
  const chainId = parseChainId(await ask<unknown>(provider, 'eth_chainId'));
  return { account, chainId };
}

/** What `wallet_addEthereumChain` is told about the deployment's chain (EIP-3085). */
export function addChainParameters(discovery: Discovery): Record<string, unknown> {
  const currency = discovery.native_currency as { name?: unknown; symbol?: unknown; decimals?: unknown } | undefined;
  const chainName = typeof discovery.chain_name === 'string' ? discovery.chain_name : `Sluice (chain ${discovery.chain_id})`;
  return {
    chainId: numberToHex(discovery.chain_id),
    chainName,
    rpcUrls: [discovery.rpc_url],
    // A zero-gas permissioned chain still names a native currency: wallets require one.
    nativeCurrency: {
      name: typeof currency?.name === 'string' ? currency.name : 'Ether',
      symbol: typeof currency?.symbol === 'string' ? currency.symbol : 'ETH',
      decimals: typeof currency?.decimals === 'number' ? currency.decimals : 18,
    },
    ...(Array.isArray(discovery.block_explorer_urls) ? { blockExplorerUrls: discovery.block_explorer_urls } : {}),
  };
}

/**
 * Move the wallet to the deployment's chain: switch to it, or add it first when the wallet does not know it.
 * Returns the chain id the wallet reports afterwards.
 */
export async function switchToChain(provider: Eip1193Provider, discovery: Discovery): Promise<number> {
  const chainId = numberToHex(discovery.chain_id);
  try {
    await ask(provider, 'wallet_switchEthereumChain', [{ chainId }]);
  } catch (error) {
    if (!(error instanceof WalletRequestError) || error.code !== UNRECOGNIZED_CHAIN) throw error;
    await ask(provider, 'wallet_addEthereumChain', [addChainParameters(discovery)]);
  }
  return parseChainId(await ask<unknown>(provider, 'eth_chainId'));
}

/**
 * Offer the compute token to the wallet's asset list (EIP-747); true when the user accepted it. Needs the
 * token's symbol and decimals from discovery (`token`): a wallet shows what it is told.
 */
export async function watchComputeToken(provider: Eip1193Provider, discovery: Discovery): Promise<boolean> {
  const token = discovery.token;
  if (token === undefined) throw new WalletRequestError('The service does not publish the token\'s symbol.', undefined);
  const added = await ask<unknown>(provider, 'wallet_watchAsset', {
    type: 'ERC20',
    options: { address: discovery.contracts.token, symbol: token.symbol.slice(0, 11), decimals: token.decimals },
  });
  return added === true;
}

/** "0x1234…cdef", for places too narrow for the whole address. */
export function shortAddress(address: Address): string {
  return `${address.slice(0, 6)}…${address.slice(-4)}`;
}
