/**
 * The contracts as the portal uses them: human-readable ABIs (with every custom error, so a revert is
 * decoded into words), viem clients over the wallet's own EIP-1193 provider (reads go through the wallet's
 * RPC, writes are `eth_sendTransaction`), EIP-2612 permits, and the sentences for what went wrong.
 */

import { type Discovery, type Eip1193Provider, SluiceApiError, SluiceWalletError } from '@sluice/client';
import {
  type Account,
  type Address,
  BaseError,
  type Chain as ViemChain,
  ContractFunctionRevertedError,
  createClient,
  custom,
  type Hash,
  type Hex,
  parseAbi,
  parseSignature,
  type PublicActions,
  type WalletActions,
} from 'viem';
import { getBlock, getContractEvents, readContract, signTypedData, waitForTransactionReceipt, writeContract } from 'viem/actions';

import { formatUnits } from './format';
import { WalletRequestError } from './wallet';

const COMMON_ERRORS = [
  'error AccessControlUnauthorizedAccount(address account, bytes32 neededRole)',
  'error EnforcedPause()',
  'error ExpectedPause()',
  'error ERC20InsufficientAllowance(address spender, uint256 allowance, uint256 needed)',
  'error ERC20InsufficientBalance(address sender, uint256 balance, uint256 needed)',
  'error ERC2612ExpiredSignature(uint256 deadline)',
  'error ERC2612InvalidSigner(address signer, address owner)',
  'error ComputeTokenNotAllowlisted(address account)',
  'error ComputeTokenDirectEscrowTransfer(address from, uint256 value)',
  'error SafeERC20FailedOperation(address token)',
] as const;

export const TOKEN_ABI = parseAbi([
  ...COMMON_ERRORS,
  'function balanceOf(address) view returns (uint256)',
  'function symbol() view returns (string)',
  'function decimals() view returns (uint8)',
  'function paused() view returns (bool)',
  'function pause()',
  'function unpause()',
  'function isAllowlisted(address) view returns (bool)',
  'function nonces(address) view returns (uint256)',
  'function eip712Domain() view returns (bytes1 fields, string name, string version, uint256 chainId, address verifyingContract, bytes32 salt, uint256[] extensions)',
]);

export const SETTLEMENT_ABI = parseAbi([
  ...COMMON_ERRORS,
  'error SettlementBudgetTooLarge(uint256 amount, uint256 max)',
  'error SettlementInvalidSpender(address spender)',
  'error SettlementNoWithdrawalPending(address account)',
  'error SettlementNotAllowlisted(address account)',
  'error SettlementWithdrawalAboveEscrow(address account, uint256 amount, uint256 escrow)',
  'error SettlementWithdrawalLocked(address account, uint64 unlocksAt, uint64 now)',
  'error SettlementZeroAmount()',
  'event BudgetSet(address indexed payer, address indexed spender, uint256 amount, uint64 effectiveAt)',
  'event BatchSettled(bytes32 indexed batchId, bytes32 receiptsRoot, uint256 items, uint256 total)',
  'event Shortfall(bytes32 indexed batchId, address indexed payer, address indexed spender, uint256 owed, uint256 paid)',
  'function escrowOf(address) view returns (uint256)',
  'function pendingWithdrawalOf(address) view returns (uint256 amount, uint64 unlocksAt)',
  'function budgetOf(address payer, address spender) view returns (uint256 remaining, uint256 scheduled, uint64 effectiveAt)',
  'function unlockPeriod() view returns (uint64)',
  'function paused() view returns (bool)',
  'function pause()',
  'function unpause()',
  'function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)',
  'function requestWithdrawal(uint256 amount)',
  'function withdraw()',
  'function setBudget(address spender, uint256 amount)',
]);

export const SALE_ABI = parseAbi([
  ...COMMON_ERRORS,
  'error TokenSaleZeroAmount()',
  'error TokenSaleCostAboveMax(uint256 cost, uint256 maxCost)',
  'error TokenSalePaymentShort(address buyer, uint256 required, uint256 available)',
  'error SettlementNotAllowlisted(address account)',
  'function quote(uint256 amount) view returns (uint256 cost, uint256 tier)',
  'function tiers() view returns ((uint256 minAmount, uint256 price)[])',
  'function buyToEscrowWithPermit(uint256 amount, uint256 maxCost, uint256 deadline, uint8 v, bytes32 r, bytes32 s) returns (uint256 cost)',
]);

export const RATE_CARD_ABI = parseAbi([
  ...COMMON_ERRORS,
  'error RateCardInvalidName(uint256 length)',
  'event RateSet(bytes32 indexed model, uint256 inputRate, uint256 outputRate)',
  'event ModelListed(bytes32 indexed model, string name, uint8 tier)',
  'function models() view returns (bytes32[])',
  'function nameOf(bytes32) view returns (string)',
  'function rateOf(bytes32 model) view returns ((uint256 inputRate, uint256 outputRate, uint8 tier, bool listed))',
  'function setRate(string name, uint256 inputRate, uint256 outputRate, uint8 tier)',
]);

export const REGISTRY_ABI = parseAbi([
  ...COMMON_ERRORS,
  'error NodeRegistryAlreadyRegistered(address node)',
  'error NodeRegistryInvalidEndpoint(string endpoint)',
  'error NodeRegistryInvalidNode(address node)',
  'error NodeRegistryInvalidTier(string tier)',
  'error NodeRegistryNodeRetired(address node)',
  'error NodeRegistryNotActive(address node)',
  'function register(address node, string endpoint, string tier, string region)',
  'function retire(address node)',
  'function nodes() view returns (address[])',
  'function nodeOf(address node) view returns ((uint8 status, uint64 registeredBlock, uint64 retiredBlock, string endpoint, string tier, string region))',
]);

export const TIERS = ['edge', 'regional', 'cloud'] as const;

/** Only the actions the portal uses (viem's tree-shakable actions: the bundle carries no others). */
type Reads = Pick<PublicActions, 'readContract' | 'getContractEvents' | 'waitForTransactionReceipt' | 'getBlock'>;
type Writes = Pick<WalletActions<ViemChain, Account>, 'writeContract' | 'signTypedData'>;

export interface Chain {
  doc: Discovery;
  account: Address;
  provider: Eip1193Provider;
  read: Reads;
  write: Writes;
}

export function chainOf(doc: Discovery, provider: Eip1193Provider, account: Address): Chain {
  const chain = {
    id: doc.chain_id,
    name: 'Sluice',
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [doc.rpc_url] } },
  };
  const client = createClient({ chain, transport: custom(provider as Parameters<typeof custom>[0]), account });
  const read = {
    readContract: (args: never) => readContract(client, args),
    getContractEvents: (args: never) => getContractEvents(client, args),
    waitForTransactionReceipt: (args: never) => waitForTransactionReceipt(client, args),
    getBlock: (args: never) => getBlock(client, args),
  } as unknown as Reads;
  const write = {
    writeContract: (args: never) => writeContract(client, args),
    signTypedData: (args: never) => signTypedData(client, args),
  } as unknown as Writes;
  return { doc, account, provider, read, write };
}

export function contract(doc: Discovery, name: string): Address {
  const address = (doc.contracts as Record<string, string | undefined>)[name];
  if (address === undefined) throw new Error(`the discovery document names no ${name} contract`);
  return address as Address;
}

/** Sign an EIP-2612 permit letting `spender` take `value` of `token` from the account; returns v, r, s. */
export async function signPermit(c: Chain, token: Address, spender: Address, value: bigint, deadline: bigint) {
  const [domain, nonce] = await Promise.all([
    c.read.readContract({ address: token, abi: TOKEN_ABI, functionName: 'eip712Domain' }),
    c.read.readContract({ address: token, abi: TOKEN_ABI, functionName: 'nonces', args: [c.account] }),
  ]);
  const signature = await c.write.signTypedData({
    account: c.account,
    domain: { name: domain[1], version: domain[2], chainId: Number(domain[3]), verifyingContract: domain[4] },
    types: {
      Permit: [
        { name: 'owner', type: 'address' },
        { name: 'spender', type: 'address' },
        { name: 'value', type: 'uint256' },
        { name: 'nonce', type: 'uint256' },
        { name: 'deadline', type: 'uint256' },
      ],
    },
    primaryType: 'Permit',
    message: { owner: c.account, spender, value, nonce, deadline },
  });
  const { v, r, s, yParity } = parseSignature(signature);
  return { v: Number(v ?? BigInt(27 + (yParity ?? 0))), r, s };
}

/** A permit's deadline: ten minutes after the chain's latest block (the chain's clock decides, not this computer's). */
export async function permitDeadline(c: Chain): Promise<bigint> {
  const block = await c.read.getBlock({ blockTag: 'latest' });
  return block.timestamp + 600n;
}

/** Wait for a sent transaction; a reverted one throws. */
export async function mined(c: Chain, hash: Hash): Promise<bigint> {
  const receipt = await c.read.waitForTransactionReceipt({ hash, pollingInterval: 250 });
  if (receipt.status !== 'success') throw new Error(`transaction ${hash} reverted in block ${receipt.blockNumber}`);
  return receipt.blockNumber;
}

const EIP1193_REJECTED = 4001;

function rejected(error: unknown): boolean {
  if (error instanceof SluiceWalletError || error instanceof WalletRequestError) return error.code === EIP1193_REJECTED;
  if (error instanceof BaseError) {
    return error.walk((e) => (e as { code?: unknown }).code === EIP1193_REJECTED) !== null;
  }
  return (error as { code?: unknown } | null)?.code === EIP1193_REJECTED;
}

const API_HINTS: Record<string, string> = {
  not_allowlisted: 'ask the operator to allowlist this account (sluice admin allowlist add).',
  not_account_holder: 'connect the wallet of the account you are reading, or a key with the auditor role.',
  not_auditor: 'connect a key holding AUDITOR_ROLE (the operator grants it with sluice admin roles grant).',
  insufficient_escrow: 'deposit or buy more compute tokens into escrow.',
  no_budget: 'the payer gives this key a budget on the Enterprise page.',
};

/** What went wrong, in words a person can act on. */
export function describeError(error: unknown): string {
  if (rejected(error)) return 'You declined the request in your wallet. Nothing was signed or sent.';
  if (error instanceof SluiceApiError) {
    const hint = API_HINTS[error.code];
    return `The service refused: ${error.message} (${error.code})${hint ? ` — ${hint}` : '.'}`;
  }
  if (error instanceof BaseError) {
    const revert = error.walk((e) => e instanceof ContractFunctionRevertedError);
    if (revert instanceof ContractFunctionRevertedError && revert.data !== undefined) {
      return describeRevert(revert.data.errorName, (revert.data.args ?? []) as readonly unknown[]);
    }
    return error.shortMessage;
  }
  return error instanceof Error ? error.message : String(error);
}

function describeRevert(name: string, args: readonly unknown[]): string {
  const a = (i: number) => String(args[i]);
  switch (name) {
    case 'SettlementNotAllowlisted':
    case 'ComputeTokenNotAllowlisted':
      return `The account ${a(0)} is not allowlisted, so it cannot hold compute tokens or escrow. Ask the operator to allowlist it.`;
    case 'TokenSalePaymentShort':
      return `Insufficient payment token: the purchase costs ${formatUnits(args[1] as bigint, 6)} and ${a(0)} holds or approved only ${formatUnits(args[2] as bigint, 6)} (payment token, 6 decimals). Add payment token to the wallet, or buy less.`;
    case 'TokenSaleCostAboveMax':
      return `The price moved: the purchase now costs ${a(0)} payment units, above the ${a(1)} you accepted. Quote again.`;
    case 'ERC20InsufficientAllowance':
      return `The contract ${a(0)} may take only ${a(1)} of the ${a(2)} base units it needs: the permit was not accepted (expired, or signed for another account or chain). Try again.`;
    case 'ERC20InsufficientBalance':
      return `Insufficient balance: ${a(0)} holds ${a(1)} base units, ${a(2)} are needed.`;
    case 'SettlementWithdrawalLocked':
      return `The withdrawal is still locked: it unlocks at ${new Date(Number(args[1]) * 1000).toISOString()}.`;
    case 'SettlementNoWithdrawalPending':
      return 'No withdrawal is pending: request one first.';
    case 'SettlementWithdrawalAboveEscrow':
      return `The escrow holds only ${a(2)} base units, less than the ${a(1)} requested.`;
    case 'SettlementInvalidSpender':
      return `${a(0)} cannot be given a budget: it is the payer itself or the zero address.`;
    case 'NodeRegistryAlreadyRegistered':
      return `The node ${a(0)} is registered already.`;
    case 'NodeRegistryNodeRetired':
      return `The node ${a(0)} was retired; a retired key is never registered again: give the node a new key.`;
    case 'NodeRegistryInvalidEndpoint':
      return `The endpoint "${a(0)}" is not an http(s) URL.`;
    case 'NodeRegistryInvalidTier':
      return `The tier "${a(0)}" is not one of edge, regional, cloud.`;
    case 'EnforcedPause':
      return 'The contract is paused by the operator: try again once it is unpaused.';
    case 'AccessControlUnauthorizedAccount':
      return `The account ${a(0)} does not hold the role this needs (${a(1)}).`;
    default:
      return `The contract refused: ${name}(${args.map(String).join(', ')}).`;
  }
}

export type { Hex };
