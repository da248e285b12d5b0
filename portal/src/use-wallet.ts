/** The wallet session as the page shows it: which wallets exist, the connected account and its chain. */

import type { Discovery } from '@sluice/client';
import { useCallback, useEffect, useState } from 'preact/hooks';
import type { Address } from 'viem';

import {
  connect as connectWallet,
  firstAccount,
  type InjectedWallet,
  parseChainId,
  switchToChain,
  watchComputeToken,
  watchWallets,
  WalletRequestError,
} from './wallet';

export type WalletStatus =
  | { kind: 'none' }
  | { kind: 'ready' }
  | { kind: 'connecting'; wallet: InjectedWallet }
  | { kind: 'connected'; wallet: InjectedWallet; account: Address; chainId: number };

export interface WalletSession {
  wallets: InjectedWallet[];
  status: WalletStatus;
  /** The last thing that went wrong, in words a person can act on. */
  error: string | undefined;
  /** The last thing that went right (token added …). */
  notice: string | undefined;
  busy: 'switching' | 'watching' | undefined;
  connect(wallet: InjectedWallet): Promise<void>;
  forget(): void;
  switchNetwork(discovery: Discovery): Promise<void>;
  addToken(discovery: Discovery): Promise<void>;
}

function describe(error: unknown): string {
  if (error instanceof WalletRequestError) return error.message;
  return error instanceof Error ? error.message : String(error);
}

export function useWallet(): WalletSession {
  const [wallets, setWallets] = useState<InjectedWallet[]>([]);
  const [status, setStatus] = useState<WalletStatus>({ kind: 'none' });
  const [error, setError] = useState<string>();
  const [notice, setNotice] = useState<string>();
  const [busy, setBusy] = useState<WalletSession['busy']>();

  useEffect(() => watchWallets(setWallets), []);
  useEffect(() => {
    setStatus((s) => (s.kind === 'none' && wallets.length > 0 ? { kind: 'ready' } : s));
  }, [wallets]);

  // Follow the connected wallet: another account, another chain, or no account any more.
  const connected = status.kind === 'connected' ? status.wallet : undefined;
  useEffect(() => {
    const provider = connected?.provider;
    if (provider?.on === undefined) return undefined;
    const onAccounts = (accounts: unknown) => {
      const account = firstAccount(accounts);
      setStatus((s) =>
        s.kind !== 'connected' ? s : account === undefined ? { kind: 'ready' } : { ...s, account },
      );
    };
    const onChain = (chainId: unknown) => {
      try {
        const id = parseChainId(chainId);
        setStatus((s) => (s.kind === 'connected' ? { ...s, chainId: id } : s));
      } catch (e) {
        setError(describe(e));
      }
    };
    const onDisconnect = () => setStatus({ kind: 'ready' });
    provider.on('accountsChanged', onAccounts as (...args: never[]) => void);
    provider.on('chainChanged', onChain as (...args: never[]) => void);
    provider.on('disconnect', onDisconnect);
    return () => {
      provider.removeListener?.('accountsChanged', onAccounts as (...args: never[]) => void);
      provider.removeListener?.('chainChanged', onChain as (...args: never[]) => void);
      provider.removeListener?.('disconnect', onDisconnect);
    };
  }, [connected]);

  const connect = useCallback(async (wallet: InjectedWallet) => {
    setError(undefined);
    setNotice(undefined);
    setStatus({ kind: 'connecting', wallet });
    try {
      const { account, chainId } = await connectWallet(wallet.provider);
      setStatus({ kind: 'connected', wallet, account, chainId });
    } catch (e) {
      setStatus({ kind: 'ready' });
      setError(describe(e));
    }
  }, []);

  const forget = useCallback(() => {
    setStatus({ kind: 'ready' });
    setNotice(undefined);
    setError(undefined);
  }, []);

  const switchNetwork = useCallback(
    async (discovery: Discovery) => {
      if (status.kind !== 'connected') return;
      setError(undefined);
      setBusy('switching');
      try {
        const chainId = await switchToChain(status.wallet.provider, discovery);
        setStatus((s) => (s.kind === 'connected' ? { ...s, chainId } : s));
      } catch (e) {
        setError(describe(e));
      } finally {
        setBusy(undefined);
      }
    },
    [status],
  );

  const addToken = useCallback(
    async (discovery: Discovery) => {
      if (status.kind !== 'connected') return;
      setError(undefined);
      setBusy('watching');
      try {
        const added = await watchComputeToken(status.wallet.provider, discovery);
        setNotice(added ? `${discovery.token?.symbol ?? 'The token'} is in your wallet's asset list.` : undefined);
      } catch (e) {
        setError(describe(e));
      } finally {
        setBusy(undefined);
      }
    },
    [status],
  );

  return { wallets, status, error, notice, busy, connect, forget, switchNetwork, addToken };
}
