/**
 * Who signs: a local key (a viem account) or a browser wallet behind an EIP-1193 provider (MetaMask,
 * Rabby …), which signs with `eth_signTypedData_v4`. Both hand back a canonical 65-byte low-s signature.
 */

import { type Address, type Hex, type LocalAccount } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';

import { SluiceSignatureError, walletError } from './errors.js';
import { normalizeSignature, recoverSigner } from './signatures.js';
import { type SluiceTypedData, typedDataDigest, typedDataJson } from './typed-data.js';
import { toAddress } from './values.js';

/** The EIP-1193 provider surface this package uses (any wallet's `window.ethereum` fits). */
export interface Eip1193Provider {
  request(args: { method: string; params?: readonly unknown[] | object }): Promise<unknown>;
  on?(event: string, listener: (...args: never[]) => void): unknown;
  removeListener?(event: string, listener: (...args: never[]) => void): unknown;
}

/** Signs the protocol's typed data for one address. */
export interface SluiceSigner {
  /** The signing address (for a wallet, the connected account; it asks to connect when none is). */
  getAddress(): Promise<Address>;
  /** A 65-byte low-s `r || s || v` signature (v = 27/28) of the typed data. */
  signTypedData(typedData: SluiceTypedData): Promise<Hex>;
}

/** A signer over a local key: a viem `LocalAccount` or a 0x private key. */
export function localSigner(key: LocalAccount | Hex): SluiceSigner {
  const account = typeof key === 'string' ? privateKeyToAccount(key) : key;
  if (account.signTypedData === undefined) {
    throw new SluiceSignatureError('the account cannot sign typed data');
  }
  const sign = account.signTypedData.bind(account);
  return {
    getAddress: async () => account.address,
    signTypedData: async (typedData) =>
      normalizeSignature(typedData.primaryType === 'Redemption' ? await sign(typedData) : await sign(typedData)),
  };
}

/**
 * A signer over a wallet. `address` pins the account; without it the wallet's first connected account signs
 * (`eth_accounts`, then `eth_requestAccounts` if none is connected). Every signature the wallet returns is
 * normalised to low-s and checked to recover to that account: a wallet that signed with another account or
 * another domain is caught here, not by a 401 later.
 */
export function eip1193Signer(provider: Eip1193Provider, options: { address?: Address } = {}): SluiceSigner {
  const pinned = options.address === undefined ? undefined : toAddress(options.address, 'address');

  async function getAddress(): Promise<Address> {
    if (pinned !== undefined) return pinned;
    for (const method of ['eth_accounts', 'eth_requestAccounts']) {
      let accounts: unknown;
      try {
        accounts = await provider.request({ method });
      } catch (error) {
        throw walletError(method, error);
      }
      if (Array.isArray(accounts) && accounts.length > 0) return toAddress(accounts[0], `${method}[0]`);
    }
    throw walletError('eth_requestAccounts', { message: 'the wallet has no account to sign with' });
  }

  async function signTypedData(typedData: SluiceTypedData): Promise<Hex> {
    const address = await getAddress();
    let raw: unknown;
    try {
      raw = await provider.request({ method: 'eth_signTypedData_v4', params: [address, typedDataJson(typedData)] });
    } catch (error) {
      throw walletError('eth_signTypedData_v4', error);
    }
    if (typeof raw !== 'string') {
      throw new SluiceSignatureError(`the wallet returned ${typeof raw} for a signature, not 0x hex`);
    }
    const signature = normalizeSignature(raw as Hex);
    const signer = await recoverSigner(typedDataDigest(typedData), signature);
    if (signer !== address) {
      throw new SluiceSignatureError(
        `the wallet's signature recovers to ${signer}, not ${address}: it signed with another account or other data`,
      );
    }
    return signature;
  }

  return { getAddress, signTypedData };
}
