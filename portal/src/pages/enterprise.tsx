/** Enterprise: balances, buying into escrow, deposits and withdrawals, developer keys and their budgets, usage. */

import { parseTokens } from '@sluice/client';
import { useCallback, useEffect, useState } from 'preact/hooks';
import { type Address, getAddress, isAddress } from 'viem';

import { contract, mined, permitDeadline, SALE_ABI, SETTLEMENT_ABI, signPermit, TOKEN_ABI } from '../chain';
import { type PageContext, servicePaths, signedRead } from '../context';
import { describeTime, formatUnits, toCsv } from '../format';
import { ActionStatus, Amount, BarChart, CsvLink, Panel, short, useAction } from '../ui';
import { KeyPolicies } from './keys';

interface Balances {
  wallet: bigint;
  escrow: bigint;
  pending: bigint;
  unlocksAt: bigint;
  payment: bigint;
  paymentSymbol: string;
  paymentDecimals: number;
  /** The latest block's time: unlocks and cuts follow the chain's clock, not this computer's. */
  chainNow: bigint;
}

interface KeyBudget {
  spender: Address;
  remaining: bigint;
  scheduled: bigint;
  effectiveAt: bigint;
}

function useBalances(ctx: PageContext) {
  const [balances, setBalances] = useState<Balances>();
  const [keys, setKeys] = useState<KeyBudget[]>([]);
  const refresh = useCallback(async () => {
    const { read } = ctx.chain;
    const token = contract(ctx.doc, 'token');
    const settlement = contract(ctx.doc, 'settlement');
    const payment = contract(ctx.doc, 'payment_token');
    const [wallet, escrow, [pending, unlocksAt], paymentBalance, paymentSymbol, paymentDecimals, block] = await Promise.all([
      read.readContract({ address: token, abi: TOKEN_ABI, functionName: 'balanceOf', args: [ctx.account] }),
      read.readContract({ address: settlement, abi: SETTLEMENT_ABI, functionName: 'escrowOf', args: [ctx.account] }),
      read.readContract({ address: settlement, abi: SETTLEMENT_ABI, functionName: 'pendingWithdrawalOf', args: [ctx.account] }),
      read.readContract({ address: payment, abi: TOKEN_ABI, functionName: 'balanceOf', args: [ctx.account] }),
      read.readContract({ address: payment, abi: TOKEN_ABI, functionName: 'symbol' }),
      read.readContract({ address: payment, abi: TOKEN_ABI, functionName: 'decimals' }),
      read.getBlock({ blockTag: 'latest' }),
    ]);
    setBalances({ wallet, escrow, pending, unlocksAt, payment: paymentBalance, paymentSymbol, paymentDecimals, chainNow: block.timestamp });
    const logs = await read.getContractEvents({
      address: settlement, abi: SETTLEMENT_ABI, eventName: 'BudgetSet', args: { payer: ctx.account }, fromBlock: 0n,
    });
    const spenders = [...new Set(logs.map((l) => l.args.spender as Address))];
    setKeys(
      await Promise.all(
        spenders.map(async (spender) => {
          const [remaining, scheduled, effectiveAt] = await read.readContract({
            address: settlement, abi: SETTLEMENT_ABI, functionName: 'budgetOf', args: [ctx.account, spender],
          });
          return { spender, remaining, scheduled, effectiveAt };
        }),
      ),
    );
  }, [ctx]);
  return { balances, keys, refresh };
}

export function EnterprisePage({ ctx }: { ctx: PageContext }) {
  const { balances, keys, refresh } = useBalances(ctx);
  const [error, setError] = useState<string>();
  useEffect(() => {
    refresh().catch((e: unknown) => setError(String(e)));
  }, [refresh]);
  return (
    <>
      {error ? <p class="alert" role="alert">Could not read the chain: {error}</p> : null}
      <BalancesPanel balances={balances} />
      <BuyPanel ctx={ctx} balances={balances} onDone={refresh} />
      <EscrowPanel ctx={ctx} balances={balances} onDone={refresh} />
      <KeysPanel ctx={ctx} keys={keys} onDone={refresh} />
      <KeyPolicies ctx={ctx} />
      <UsagePanel ctx={ctx} />
    </>
  );
}

function BalancesPanel({ balances }: { balances: Balances | undefined }) {
  return (
    <Panel title="Balances" id="balances">
      {balances === undefined ? (
        <p>Reading the chain…</p>
      ) : (
        <dl class="facts">
          <div><dt>Wallet</dt><dd><Amount units={balances.wallet} testid="wallet-balance" /></dd></div>
          <div><dt>Escrow</dt><dd><Amount units={balances.escrow} testid="escrow-balance" /></dd></div>
          <div>
            <dt>Pending withdrawal</dt>
            <dd data-testid="pending-withdrawal">
              {balances.pending === 0n ? 'none' : (
                <><Amount units={balances.pending} />, {balances.unlocksAt <= balances.chainNow ? 'unlocked since' : 'unlocks at'} {describeTime(balances.unlocksAt, Number(balances.chainNow) * 1000)}</>
              )}
            </dd>
          </div>
          <div>
            <dt>Payment token</dt>
            <dd data-testid="payment-balance" title={`${balances.payment} base units`}>
              {formatUnits(balances.payment, balances.paymentDecimals)} {balances.paymentSymbol}
            </dd>
          </div>
        </dl>
      )}
    </Panel>
  );
}

function parse(text: string): bigint | undefined {
  try {
    const units = parseTokens(text.trim());
    return units > 0n ? units : undefined;
  } catch {
    return undefined;
  }
}

function BuyPanel({ ctx, balances, onDone }: { ctx: PageContext; balances: Balances | undefined; onDone: () => Promise<void> }) {
  const [text, setText] = useState('');
  const [quote, setQuote] = useState<{ amount: bigint; cost: bigint; tier: bigint }>();
  const [tiers, setTiers] = useState<readonly { minAmount: bigint; price: bigint }[]>([]);
  const action = useAction();
  const sale = contract(ctx.doc, 'sale');
  const decimals = balances?.paymentDecimals ?? 6;
  const symbol = balances?.paymentSymbol ?? '';

  useEffect(() => {
    ctx.chain.read.readContract({ address: sale, abi: SALE_ABI, functionName: 'tiers' }).then(setTiers, () => setTiers([]));
  }, [ctx, sale]);
  useEffect(() => {
    const amount = parse(text);
    setQuote(undefined);
    if (amount === undefined) return;
    ctx.chain.read
      .readContract({ address: sale, abi: SALE_ABI, functionName: 'quote', args: [amount] })
      .then(([cost, tier]) => setQuote({ amount, cost, tier }), () => setQuote(undefined));
  }, [ctx, sale, text]);

  const buy = () =>
    void action.run(async (step) => {
      if (quote === undefined) throw new Error('Enter an amount of compute tokens to buy.');
      const deadline = await permitDeadline(ctx.chain);
      step.wallet(
        `Sign a permit (EIP-2612) letting the TokenSale take ${formatUnits(quote.cost, decimals)} ${symbol} from this wallet, valid for 10 minutes. Signing moves nothing by itself.`,
      );
      const permit = await signPermit(ctx.chain, contract(ctx.doc, 'payment_token'), sale, quote.cost, deadline);
      step.wallet(
        `Confirm the transaction: buy ${formatUnits(quote.amount, 18)} compute tokens for at most ${formatUnits(quote.cost, decimals)} ${symbol}, straight into your escrow.`,
      );
      const hash = await ctx.chain.write.writeContract({
        address: sale, abi: SALE_ABI, functionName: 'buyToEscrowWithPermit', chain: null, account: ctx.account,
        args: [quote.amount, quote.cost, deadline, permit.v, permit.r, permit.s],
      });
      step.pending('Buying into escrow.', hash);
      const block = await mined(ctx.chain, hash);
      await onDone();
      return { message: `Bought ${formatUnits(quote.amount, 18)} compute tokens into escrow.`, hash, block };
    });

  return (
    <Panel title="Buy compute tokens into escrow" id="buy">
      {tiers.length > 0 ? (
        <table class="data" data-testid="tiers">
          <caption>The sale's volume tiers (price per token, in the payment token)</caption>
          <thead><tr><th scope="col">Tier</th><th scope="col">From</th><th scope="col">Price per token</th></tr></thead>
          <tbody>
            {tiers.map((t, i) => (
              <tr key={i}>
                <td>{i}</td><td><Amount units={t.minAmount} /></td>
                <td title={`${t.price} base units`}>{formatUnits(t.price, decimals)} {symbol}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      <form onSubmit={(e) => { e.preventDefault(); buy(); }}>
        <label for="buy-amount">Compute tokens to buy</label>
        <input id="buy-amount" inputMode="decimal" autoComplete="off" value={text}
          onInput={(e) => setText((e.target as HTMLInputElement).value)} />
        <p data-testid="quote" aria-live="polite">
          {quote === undefined
            ? text.trim() === '' ? 'Enter an amount for a quote.' : parse(text) === undefined ? 'Enter a positive number of tokens (up to 18 decimals).' : 'Quoting…'
            : <>Costs <span title={`${quote.cost} base units`}>{formatUnits(quote.cost, decimals)} {symbol}</span> at tier {quote.tier.toString()}.</>}
        </p>
        <button type="submit" disabled={quote === undefined || action.busy}>Buy into escrow</button>
      </form>
      <ActionStatus state={action.state} testid="buy-status" />
    </Panel>
  );
}

function EscrowPanel({ ctx, balances, onDone }: { ctx: PageContext; balances: Balances | undefined; onDone: () => Promise<void> }) {
  const [depositText, setDepositText] = useState('');
  const [withdrawText, setWithdrawText] = useState('');
  const action = useAction();
  const settlement = contract(ctx.doc, 'settlement');
  const send = (what: string, done: string, call: () => Promise<`0x${string}`>) =>
    void action.run(async (step) => {
      step.wallet(what);
      const hash = await call();
      step.pending(done, hash);
      const block = await mined(ctx.chain, hash);
      await onDone();
      return { message: done, hash, block };
    });
  const deposit = () => {
    const amount = parse(depositText);
    if (amount === undefined) return;
    void action.run(async (step) => {
      const deadline = await permitDeadline(ctx.chain);
      step.wallet(`Sign a permit (EIP-2612) letting the Settlement contract take ${formatUnits(amount, 18)} compute tokens from your wallet into your escrow.`);
      const p = await signPermit(ctx.chain, contract(ctx.doc, 'token'), settlement, amount, deadline);
      step.wallet(`Confirm the transaction: deposit ${formatUnits(amount, 18)} compute tokens into escrow.`);
      const hash = await ctx.chain.write.writeContract({
        address: settlement, abi: SETTLEMENT_ABI, functionName: 'depositWithPermit', chain: null, account: ctx.account,
        args: [amount, deadline, p.v, p.r, p.s],
      });
      step.pending('Depositing.', hash);
      const block = await mined(ctx.chain, hash);
      await onDone();
      return { message: `Deposited ${formatUnits(amount, 18)} compute tokens.`, hash, block };
    });
  };
  const request = () => {
    const amount = parse(withdrawText);
    if (amount === undefined) return;
    send(
      `Confirm the transaction: request a withdrawal of ${formatUnits(amount, 18)} compute tokens. It stops counting for new calls at once and unlocks after the unlock period (${ctx.doc.unlock_period_seconds ?? '?'} s).`,
      'Withdrawal requested.',
      () => ctx.chain.write.writeContract({ address: settlement, abi: SETTLEMENT_ABI, functionName: 'requestWithdrawal', args: [amount], chain: null, account: ctx.account }),
    );
  };
  const unlocked = balances !== undefined && balances.pending > 0n && balances.unlocksAt <= balances.chainNow;
  return (
    <Panel title="Escrow" id="escrow">
      <form onSubmit={(e) => { e.preventDefault(); deposit(); }}>
        <label for="deposit-amount">Deposit compute tokens from the wallet</label>
        <input id="deposit-amount" inputMode="decimal" value={depositText} onInput={(e) => setDepositText((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={parse(depositText) === undefined || action.busy}>Deposit</button>
      </form>
      <form onSubmit={(e) => { e.preventDefault(); request(); }}>
        <label for="withdraw-amount">Request a withdrawal</label>
        <input id="withdraw-amount" inputMode="decimal" value={withdrawText} onInput={(e) => setWithdrawText((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={parse(withdrawText) === undefined || action.busy}>Request withdrawal</button>
      </form>
      <button type="button" disabled={!unlocked || action.busy}
        onClick={() => send('Confirm the transaction: withdraw the unlocked amount from escrow to your wallet.', 'Withdrawn to the wallet.',
          () => ctx.chain.write.writeContract({ address: settlement, abi: SETTLEMENT_ABI, functionName: 'withdraw', chain: null, account: ctx.account }))}>
        Complete withdrawal
      </button>
      <ActionStatus state={action.state} testid="escrow-status" />
    </Panel>
  );
}

function KeysPanel({ ctx, keys, onDone }: { ctx: PageContext; keys: KeyBudget[]; onDone: () => Promise<void> }) {
  const [spender, setSpender] = useState('');
  const [text, setText] = useState('');
  const action = useAction();
  const settlement = contract(ctx.doc, 'settlement');
  const valid = isAddress(spender.trim(), { strict: false });
  const submit = () => {
    let amount: bigint;
    try {
      amount = parseTokens(text.trim());
    } catch {
      return;
    }
    if (!valid) return;
    const key = getAddress(spender.trim());
    const current = keys.find((k) => k.spender === key)?.remaining ?? 0n;
    const when = amount >= current ? 'A raise applies at once.' : `This is a cut: it applies after the unlock period (${ctx.doc.unlock_period_seconds ?? '?'} s); until then the current budget stands.`;
    void action.run(async (step) => {
      step.wallet(`Confirm the transaction: set the budget of developer key ${key} to ${formatUnits(amount, 18)} compute tokens from your escrow. ${when}`);
      const hash = await ctx.chain.write.writeContract({ address: settlement, abi: SETTLEMENT_ABI, functionName: 'setBudget', args: [key, amount], chain: null, account: ctx.account });
      step.pending('Setting the budget.', hash);
      const block = await mined(ctx.chain, hash);
      await onDone();
      return { message: `Budget of ${short(key)} set to ${formatUnits(amount, 18)}. ${when}`, hash, block };
    });
  };
  return (
    <Panel title="Developer keys and budgets" id="keys">
      <table class="data" data-testid="budgets">
        <caption>Budgets from your escrow, per developer key (read from the Settlement contract)</caption>
        <thead><tr><th scope="col">Key</th><th scope="col">Budget now</th><th scope="col">Pending cut</th></tr></thead>
        <tbody>
          {keys.length === 0 ? <tr><td colSpan={3}>No developer key has a budget yet.</td></tr> : null}
          {keys.map((k) => (
            <tr key={k.spender} data-spender={k.spender}>
              <td><code title={k.spender}>{k.spender}</code></td>
              <td><Amount units={k.remaining} /></td>
              <td data-testid="pending-cut">
                {k.effectiveAt === 0n ? 'none' : <>to <Amount units={k.scheduled} />, effective at <time dateTime={new Date(Number(k.effectiveAt) * 1000).toISOString()}>{describeTime(k.effectiveAt)}</time></>}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      <form onSubmit={(e) => { e.preventDefault(); submit(); }}>
        <label for="key-address">Developer key (address)</label>
        <input id="key-address" autoComplete="off" spellcheck={false} value={spender} onInput={(e) => setSpender((e.target as HTMLInputElement).value)} />
        <label for="key-budget">Budget (compute tokens)</label>
        <input id="key-budget" inputMode="decimal" value={text} onInput={(e) => setText((e.target as HTMLInputElement).value)} />
        <button type="submit" disabled={!valid || text.trim() === '' || action.busy}>Set budget</button>
      </form>
      <ActionStatus state={action.state} testid="budget-status" />
    </Panel>
  );
}

interface UsageDoc {
  spenders: { spender: string; calls: number; prompt_tokens: number; completion_tokens: number; metered: string; settled: string; unsettled: string; last_call: string }[];
  models?: { spender: string; model: string; calls: number; prompt_tokens: number; completion_tokens: number; metered: string }[];
  days?: { day: string; spender: string; model: string; calls: number; metered: string }[];
}

function sum(rows: readonly { key: string; value: bigint }[]) {
  const out = new Map<string, bigint>();
  for (const r of rows) out.set(r.key, (out.get(r.key) ?? 0n) + r.value);
  return [...out].map(([label, value]) => ({ label, value }));
}

export function usageCsv(usage: UsageDoc): string {
  return toCsv(
    ['spender', 'model', 'calls', 'prompt_tokens', 'completion_tokens', 'metered'],
    (usage.models ?? []).map((m) => [m.spender, m.model, m.calls, m.prompt_tokens, m.completion_tokens, m.metered]),
  );
}

function UsagePanel({ ctx }: { ctx: PageContext }) {
  const [usage, setUsage] = useState<UsageDoc>();
  const action = useAction();
  const load = () =>
    void action.run(async (step) => {
      step.wallet(signedRead('/v1/usage', 'your spend per developer key and model'));
      const doc = await ctx.api.usage<UsageDoc>({ payer: ctx.account });
      setUsage(doc);
      return { message: `Usage read: ${doc.spenders.length} keys.` };
    });
  const models = usage?.models ?? [];
  return (
    <Panel title="Usage" id="usage">
      <button type="button" onClick={load} disabled={action.busy}>{usage ? 'Refresh usage' : 'Show usage'}</button>
      <ActionStatus state={action.state} testid="usage-status" />
      {usage !== undefined ? (
        <>
          <BarChart testid="chart-keys" title="Metered spend per developer key"
            bars={usage.spenders.map((s) => ({ label: s.spender, value: BigInt(s.metered) }))} />
          <BarChart testid="chart-models" title="Metered spend per model"
            bars={sum(models.map((m) => ({ key: m.model, value: BigInt(m.metered) })))} />
          {usage.days !== undefined && usage.days.length > 0 ? (
            <BarChart testid="chart-days" title="Metered spend per day (UTC)"
              bars={sum(usage.days.map((d) => ({ key: d.day, value: BigInt(d.metered) })))} />
          ) : null}
          <table class="data" data-testid="usage-table">
            <caption>Spend per key and model</caption>
            <thead><tr><th scope="col">Key</th><th scope="col">Model</th><th scope="col">Calls</th><th scope="col">Tokens in / out</th><th scope="col">Metered</th></tr></thead>
            <tbody>
              {models.map((m) => (
                <tr key={`${m.spender}-${m.model}`}>
                  <td><code title={m.spender}>{short(m.spender)}</code></td><td>{m.model}</td><td>{m.calls}</td>
                  <td>{m.prompt_tokens} / {m.completion_tokens}</td><td><Amount units={BigInt(m.metered)} /></td>
                </tr>
              ))}
            </tbody>
          </table>
          <CsvLink name="sluice-usage.csv" text={usageCsv(usage)} testid="usage-csv" />
        </>
      ) : null}
    </Panel>
  );
}

export { servicePaths };
