// A test EIP-1193 wallet injected into the page, backed by a local key (viem) and a real chain.
//
// The page sees what MetaMask or Rabby give it: `window.ethereum` and an EIP-6963 announcement, a provider
// whose `request()` answers JSON-RPC and which emits `accountsChanged` / `chainChanged`. Each request crosses
// into Node through a Playwright binding, where the wallet acts like a real one: it knows a set of chains
// (and refuses to switch to an unknown one with 4902, as MetaMask does), checks a chain before adding it by
// asking its RPC for `eth_chainId`, signs typed data only for the active chain, signs transactions locally
// and sends them raw, and forwards every other read to the active chain's RPC.

import { privateKeyToAccount } from 'viem/accounts';

import { rpc } from './anvil.mjs';

const PAGE_SIDE = `(() => {
  const listeners = new Map();
  const provider = {
    isSluiceTestWallet: true,
    async request(args) {
      if (typeof args !== 'object' || args === null || typeof args.method !== 'string') {
        throw Object.assign(new Error('request() takes { method, params }'), { code: -32600 });
      }
      const answer = JSON.parse(await window.__sluiceTestWallet(JSON.stringify({ method: args.method, params: args.params })));
      if (answer.error) throw Object.assign(new Error(answer.error.message), { code: answer.error.code, data: answer.error.data });
      return answer.result;
    },
    on(event, listener) {
      if (!listeners.has(event)) listeners.set(event, new Set());
      listeners.get(event).add(listener);
      return provider;
    },
    removeListener(event, listener) {
      listeners.get(event)?.delete(listener);
      return provider;
    },
  };
  window.__sluiceTestWalletEmit = (event, payload) => {
    for (const listener of listeners.get(event) ?? []) listener(payload);
  };
  Object.defineProperty(window, 'ethereum', { value: provider, configurable: true });
  const info = Object.freeze({
    uuid: '5c1e7a1e-0000-4000-8000-000000000001',
    name: 'Sluice Test Wallet',
    icon: 'data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22 viewBox=%220 0 1 1%22%3E%3Crect width=%221%22 height=%221%22 fill=%22%230b57b0%22/%3E%3C/svg%3E',
    rdns: 'org.sluice.test-wallet',
  });
  const announce = () =>
    window.dispatchEvent(new CustomEvent('eip6963:announceProvider', { detail: Object.freeze({ info, provider }) }));
  window.addEventListener('eip6963:requestProvider', announce);
  announce();
})();`;

class WalletError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const hex = (n) => `0x${BigInt(n).toString(16)}`;

/**
 * Install the wallet into every page of a Playwright browser context.
 *
 * `chains` maps chain ids to RPC URLs the wallet already knows (null: known, but no RPC here, like a
 * mainnet the test never reads); `activeChain` is where it starts; `decline` names methods the "user" rejects.
 */
export async function installTestWallet(context, { privateKey, chains = { 1: null }, activeChain = 1, decline = [] }) {
  const account = privateKeyToAccount(privateKey);
  const known = new Map(Object.entries(chains).map(([id, url]) => [Number(id), url]));
  const state = { connected: false, chainId: activeChain, log: [], added: [], watched: [], declined: new Set(decline) };

  const activeRpc = () => {
    const url = known.get(state.chainId);
    if (!url) throw new WalletError(4901, `the test wallet has no RPC for chain ${state.chainId}`);
    return url;
  };

  async function emit(page, event, payload) {
    await page.evaluate(([e, p]) => window.__sluiceTestWalletEmit(e, p), [event, payload]);
  }

  function requireAccount(address) {
    if (!state.connected) throw new WalletError(4100, 'the page is not connected to this wallet');
    if (address !== undefined && String(address).toLowerCase() !== account.address.toLowerCase()) {
      throw new WalletError(4100, `the wallet does not hold ${address}`);
    }
  }

  async function switchTo(page, chainId) {
    if (chainId === state.chainId) return;
    state.chainId = chainId;
    await emit(page, 'chainChanged', hex(chainId));
  }

  const methods = {
    async eth_requestAccounts(page) {
      if (state.declined.has('eth_requestAccounts')) throw new WalletError(4001, 'User rejected the request.');
      const first = !state.connected;
      state.connected = true;
      if (first) await emit(page, 'connect', { chainId: hex(state.chainId) });
      return [account.address];
    },
    async eth_accounts() {
      return state.connected ? [account.address] : [];
    },
    async eth_chainId() {
      return hex(state.chainId);
    },
    async net_version() {
      return String(state.chainId);
    },
    async wallet_switchEthereumChain(page, [{ chainId }]) {
      const id = Number(chainId);
      if (!known.has(id)) throw new WalletError(4902, `Unrecognized chain ID "${chainId}". Try adding the chain using wallet_addEthereumChain first.`);
      if (state.declined.has('wallet_switchEthereumChain')) throw new WalletError(4001, 'User rejected the request.');
      await switchTo(page, id);
      return null;
    },
    async wallet_addEthereumChain(page, [params]) {
      const { chainId, chainName, rpcUrls, nativeCurrency } = params ?? {};
      if (typeof chainId !== 'string' || !/^0x[1-9a-f][0-9a-f]*$/.test(chainId)) {
        throw new WalletError(-32602, `Expected 0x-prefixed, unpadded, non-zero hexadecimal string 'chainId'. Received: ${chainId}`);
      }
      if (typeof chainName !== 'string' || chainName.length === 0) throw new WalletError(-32602, 'chainName is required');
      if (!Array.isArray(rpcUrls) || rpcUrls.length === 0) throw new WalletError(-32602, 'rpcUrls is required');
      if (
        typeof nativeCurrency?.name !== 'string' ||
        typeof nativeCurrency?.symbol !== 'string' ||
        nativeCurrency.symbol.length < 2 ||
        nativeCurrency.symbol.length > 6 ||
        nativeCurrency.decimals !== 18
      ) {
        throw new WalletError(-32602, 'nativeCurrency must be { name, symbol of 2-6 characters, decimals: 18 }');
      }
      // Like MetaMask: the RPC must serve the chain it claims.
      let served;
      try {
        served = Number(await rpc(rpcUrls[0], 'eth_chainId'));
      } catch (error) {
        throw new WalletError(-32602, `Could not fetch chain ID. Is your RPC URL correct? (${error.message})`);
      }
      if (served !== Number(chainId)) {
        throw new WalletError(-32602, `Chain ID returned by RPC URL ${rpcUrls[0]} does not match ${chainId}`);
      }
      if (state.declined.has('wallet_addEthereumChain')) throw new WalletError(4001, 'User rejected the request.');
      known.set(served, rpcUrls[0]);
      state.added.push(params);
      await switchTo(page, served);
      return null;
    },
    async wallet_watchAsset(_page, params) {
      const options = params?.options ?? {};
      if (params?.type !== 'ERC20') throw new WalletError(-32602, `asset type ${params?.type} is not supported`);
      if (!/^0x[0-9a-fA-F]{40}$/.test(options.address ?? '')) throw new WalletError(-32602, 'options.address must be an address');
      if (typeof options.symbol !== 'string' || options.symbol.length === 0 || options.symbol.length > 11) {
        throw new WalletError(-32602, 'options.symbol must be 1 to 11 characters');
      }
      if (!Number.isInteger(options.decimals) || options.decimals < 0 || options.decimals > 36) {
        throw new WalletError(-32602, 'options.decimals must be an integer from 0 to 36');
      }
      if (state.declined.has('wallet_watchAsset')) return false;
      state.watched.push(params);
      return true;
    },
    async eth_signTypedData_v4(_page, [address, json]) {
      requireAccount(address);
      const typed = typeof json === 'string' ? JSON.parse(json) : json;
      const domainChain = typed?.domain?.chainId;
      if (domainChain !== undefined && Number(domainChain) !== state.chainId) {
        throw new WalletError(-32602, `Provided chainId "${domainChain}" must match the active chainId "${state.chainId}"`);
      }
      if (state.declined.has('eth_signTypedData_v4')) throw new WalletError(4001, 'User rejected the request.');
      const { EIP712Domain: _domainType, ...types } = typed.types;
      return account.signTypedData({ domain: typed.domain, types, primaryType: typed.primaryType, message: typed.message });
    },
    async personal_sign(_page, [data, address]) {
      requireAccount(address);
      if (state.declined.has('personal_sign')) throw new WalletError(4001, 'User rejected the request.');
      return account.signMessage({ message: { raw: data } });
    },
    async eth_sendTransaction(_page, [tx]) {
      requireAccount(tx?.from);
      if (state.declined.has('eth_sendTransaction')) throw new WalletError(4001, 'User rejected the request.');
      const url = activeRpc();
      const from = account.address;
      const call = { from, to: tx.to, value: tx.value ?? '0x0', data: tx.data ?? tx.input ?? '0x' };
      const [nonce, gas, gasPrice] = await Promise.all([
        rpc(url, 'eth_getTransactionCount', [from, 'pending']),
        tx.gas ?? rpc(url, 'eth_estimateGas', [call]),
        tx.gasPrice ?? rpc(url, 'eth_gasPrice'),
      ]);
      const signed = await account.signTransaction({
        type: 'legacy',
        chainId: state.chainId,
        nonce: Number(nonce),
        to: tx.to ?? null,
        value: BigInt(call.value),
        data: call.data,
        gas: BigInt(gas),
        gasPrice: BigInt(gasPrice),
      });
      return rpc(url, 'eth_sendRawTransaction', [signed]);
    },
    async eth_sign() {
      throw new WalletError(4200, 'eth_sign is disabled in this wallet');
    },
  };

  await context.exposeBinding('__sluiceTestWallet', async ({ page }, text) => {
    const { method, params = [] } = JSON.parse(text);
    state.log.push(method);
    try {
      const handler = methods[method];
      const result = handler !== undefined ? await handler(page, params) : await rpc(activeRpc(), method, params);
      return JSON.stringify({ result: result ?? null });
    } catch (error) {
      const code = typeof error.code === 'number' ? error.code : -32603;
      return JSON.stringify({ error: { code, message: error.message, data: error.data } });
    }
  });
  await context.addInitScript({ content: PAGE_SIDE });

  return {
    address: account.address,
    /** Every method the page asked for, in order. */
    methods: () => [...state.log],
    added: () => [...state.added],
    watched: () => [...state.watched],
    chainId: () => state.chainId,
  };
}
