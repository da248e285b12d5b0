/** Operator: settlement backlog, lag, debts, node queues and workers (signed /v1/operations), the rate card (set a
 * rate, every change from the chain), the nodes, shortfalls, pause and unpause. */

import { useCallback, useEffect, useState } from 'preact/hooks';
import { type Address, getAddress, type Hex, isAddress } from 'viem';

import { contract, mined, RATE_CARD_ABI, REGISTRY_ABI, SETTLEMENT_ABI, TIERS, TOKEN_ABI } from '../chain';
import { type PageContext, signedRead } from '../context';
import { ActionStatus, Amount, Panel, short, useAction } from '../ui';

interface RateChange {
  block: bigint;
  model: string;
  inputRate: bigint;
  outputRate: bigint;
  tx: Hex;
}

interface NodeRow {
  node: Address;
  status: number;
  endpoint: string;
  tier: string;
  region: string;
  registeredBlock: bigint;
}

const STATUS = ['unknown', 'active', 'retired'];

export function OperatorPage({ ctx }: { ctx: PageContext }) {
  return (
    <>
      <OperationsPanel ctx={ctx} />
      <RatesPanel ctx={ctx} />
      <NodesPanel ctx={ctx} />
      <ShortfallsPanel ctx={ctx} />
      <PausePanel ctx={ctx} />
    </>
  );
}

/** `GET /v1/operations` (amounts are decimal strings of base units). */
interface Operations {
  backlog: { records: number; amount: string; oldest_unsettled_seconds: number | null; waiting_for_cut: number; open_batches: Record<string, number>; unreleased_batches: number };
  settled: { confirmed_batches: Record<string, number>; records: number; failures: number };
  lag: { window_seconds: number; batches: number; p50_seconds: number | null; p99_seconds: number | null };
  debts: { outstanding: number; amount: string; suspended_accounts: number };
  nodes: { node: string; url: string; tier: string; region: string; queue_depth: number; running: number; capacity: number; heartbeat_age_seconds: number | null; health: string; healthy: boolean }[];
  workers: { name: string; pid: number; concurrency: number; beat: boolean; heartbeat_age_seconds: number; up: boolean }[];
}

const secs = (s: number | null) => (s === null ? 'none' : `${s.toFixed(1)} s`);

function OperationsPanel({ ctx }: { ctx: PageContext }) {
  const [doc, setDoc] = useState<Operations>();
  const action = useAction();
  const load = () =>
    void action.run(async (step) => {
      step.wallet(signedRead('/v1/operations', 'settlement backlog, lag, debts, node queues and workers; your key needs the operator\'s admin role or the auditor role'));
      const answer = await ctx.api.get<Operations>('v1/operations');
      setDoc(answer);
      return { message: `Backlog ${answer.backlog.records} records; ${answer.nodes.filter((n) => n.healthy).length} of ${answer.nodes.length} nodes healthy.` };
    });
  const open = doc === undefined ? '' : Object.entries(doc.backlog.open_batches).map(([s, n]) => `${n} ${s}`).join(', ') || 'none';
  return (
    <Panel title="Operations" id="operations">
      <button type="button" onClick={load} disabled={action.busy}>Show operations</button>
      <ActionStatus state={action.state} testid="operations-status" />
      {doc !== undefined ? (
        <>
          <dl class="figures" data-testid="operations-figures">
            <dt>Settlement backlog</dt>
            <dd data-testid="ops-backlog" data-records={doc.backlog.records}>{doc.backlog.records} records, <Amount units={BigInt(doc.backlog.amount)} testid="ops-backlog-amount" /> ({doc.backlog.waiting_for_cut} waiting for a cut; open batches: {open})</dd>
            <dt>Oldest unsettled</dt><dd data-testid="ops-oldest">{secs(doc.backlog.oldest_unsettled_seconds)}</dd>
            <dt>Settled</dt><dd data-testid="ops-settled">{doc.settled.records} records in {Object.values(doc.settled.confirmed_batches).reduce((a, b) => a + b, 0)} batches; {doc.settled.failures} failed attempts</dd>
            <dt>Settlement lag (last {doc.lag.window_seconds / 60} min)</dt>
            <dd data-testid="ops-lag">{doc.lag.batches === 0 ? 'no batch confirmed' : `p50 ${secs(doc.lag.p50_seconds)}, p99 ${secs(doc.lag.p99_seconds)} over ${doc.lag.batches} batches`}</dd>
            <dt>Debts</dt><dd data-testid="ops-debts">{doc.debts.outstanding} outstanding, <Amount units={BigInt(doc.debts.amount)} testid="ops-debt-amount" />; {doc.debts.suspended_accounts} suspended accounts</dd>
          </dl>
          <table class="data" data-testid="ops-nodes">
            <caption>Nodes as the service sees them (heartbeats and queues)</caption>
            <thead><tr><th scope="col">URL</th><th scope="col">Tier</th><th scope="col">Region</th><th scope="col">Queue</th><th scope="col">Running / capacity</th><th scope="col">Heartbeat</th><th scope="col">Health</th></tr></thead>
            <tbody>
              {doc.nodes.map((n) => (
                <tr key={n.node} data-node={n.node} data-queue={n.queue_depth} data-health={n.health}>
                  <td><code title={n.node}>{n.url}</code></td><td>{n.tier}</td><td>{n.region}</td><td>{n.queue_depth}</td>
                  <td>{n.running} / {n.capacity}</td><td>{secs(n.heartbeat_age_seconds)} ago</td><td>{n.health}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {doc.workers.length === 0 ? <p data-testid="ops-no-workers">No settlement worker has announced itself: start one with <code>sluice worker</code>.</p> : (
            <table class="data" data-testid="ops-workers">
              <caption>Settlement workers</caption>
              <thead><tr><th scope="col">Name</th><th scope="col">Pid</th><th scope="col">Pool</th><th scope="col">Beat</th><th scope="col">Heartbeat</th><th scope="col">State</th></tr></thead>
              <tbody>
                {doc.workers.map((w) => (
                  <tr key={w.name}><td>{w.name}</td><td>{w.pid}</td><td>{w.concurrency}</td><td>{w.beat ? 'yes' : 'no'}</td><td>{secs(w.heartbeat_age_seconds)} ago</td><td>{w.up ? 'up' : 'stale'}</td></tr>
                ))}
              </tbody>
            </table>
          )}
        </>
      ) : null}
    </Panel>
  );
}

function RatesPanel({ ctx }: { ctx: PageContext }) {
  const [changes, setChanges] = useState<RateChange[]>([]);
  const [form, setForm] = useState({ model: '', input: '', output: '', tier: 'cloud' });
  const action = useAction();
  const card = contract(ctx.doc, 'rate_card');
  const refresh = useCallback(async () => {
    const { read } = ctx.chain;
    const [sets, listed] = await Promise.all([
      read.getContractEvents({ address: card, abi: RATE_CARD_ABI, eventName: 'RateSet', fromBlock: 0n }),
      read.getContractEvents({ address: card, abi: RATE_CARD_ABI, eventName: 'ModelListed', fromBlock: 0n }),
    ]);
    const names = new Map(listed.map((l) => [l.args.model as Hex, l.args.name as string]));
    setChanges(
      sets
        .map((l) => ({
          block: l.blockNumber, model: names.get(l.args.model as Hex) ?? (l.args.model as string),
          inputRate: l.args.inputRate as bigint, outputRate: l.args.outputRate as bigint, tx: l.transactionHash,
        }))
        .reverse(),
    );
  }, [ctx, card]);
  useEffect(() => void refresh(), [refresh]);
  const submit = () =>
    void action.run(async (step) => {
      const input = BigInt(form.input.trim());
      const output = BigInt(form.output.trim());
      const tier = TIERS.indexOf(form.tier as (typeof TIERS)[number]);
      step.wallet(`Confirm the transaction: set the rate of ${form.model} to ${input} (input) and ${output} (output) base units per million model tokens, tier ${form.tier}. The service prices new calls at it once mined.`);
      const hash = await ctx.chain.write.writeContract({
        address: card, abi: RATE_CARD_ABI, functionName: 'setRate', args: [form.model.trim(), input, output, tier], chain: null, account: ctx.account,
      });
      step.pending('Setting the rate.', hash);
      const block = await mined(ctx.chain, hash);
      await refresh();
      return { message: `Rate of ${form.model} set.`, hash, block };
    });
  const current = new Map<string, RateChange>();
  for (const c of [...changes].reverse()) current.set(c.model, c);
  return (
    <Panel title="Rate card" id="rates">
      <form onSubmit={(e) => { e.preventDefault(); submit(); }}>
        <label for="rate-model">Model</label>
        <input id="rate-model" list="rate-models" value={form.model} onInput={(e) => setForm({ ...form, model: (e.target as HTMLInputElement).value })} />
        <datalist id="rate-models">{[...current.keys()].map((m) => <option key={m} value={m} />)}</datalist>
        <label for="rate-input">Input rate (base units per 1M tokens)</label>
        <input id="rate-input" inputMode="numeric" value={form.input} onInput={(e) => setForm({ ...form, input: (e.target as HTMLInputElement).value })} />
        <label for="rate-output">Output rate (base units per 1M tokens)</label>
        <input id="rate-output" inputMode="numeric" value={form.output} onInput={(e) => setForm({ ...form, output: (e.target as HTMLInputElement).value })} />
        <label for="rate-tier">Tier</label>
        <select id="rate-tier" value={form.tier} onChange={(e) => setForm({ ...form, tier: (e.target as HTMLSelectElement).value })}>
          {TIERS.map((t) => <option key={t} value={t}>{t}</option>)}
        </select>
        <button type="submit" disabled={action.busy || !/^\d+$/.test(form.input.trim()) || !/^\d+$/.test(form.output.trim()) || form.model.trim() === ''}>Set rate</button>
      </form>
      <ActionStatus state={action.state} testid="rate-status" />
      <table class="data" data-testid="rate-history">
        <caption>Every rate change, newest first (RateSet logs)</caption>
        <thead><tr><th scope="col">Block</th><th scope="col">Model</th><th scope="col">Input rate</th><th scope="col">Output rate</th><th scope="col">Transaction</th></tr></thead>
        <tbody>
          {changes.map((c) => (
            <tr key={`${c.tx}-${c.model}`} data-model={c.model}>
              <td>{c.block.toString()}</td><td>{c.model}</td><td>{c.inputRate.toString()}</td><td>{c.outputRate.toString()}</td>
              <td><code title={c.tx}>{short(c.tx)}</code></td>
            </tr>
          ))}
        </tbody>
      </table>
    </Panel>
  );
}

function NodesPanel({ ctx }: { ctx: PageContext }) {
  const [nodes, setNodes] = useState<NodeRow[]>();
  const [health, setHealth] = useState<{ nodes: number; mirror_lag_blocks: number | null; indexer_lag_blocks: number | null }>();
  const [form, setForm] = useState({ node: '', endpoint: '', tier: 'regional', region: '' });
  const action = useAction();
  const registry = contract(ctx.doc, 'node_registry');
  const refresh = useCallback(async () => {
    const { read } = ctx.chain;
    const list = await read.readContract({ address: registry, abi: REGISTRY_ABI, functionName: 'nodes' });
    setNodes(await Promise.all(list.map(async (node) => ({ node, ...(await read.readContract({ address: registry, abi: REGISTRY_ABI, functionName: 'nodeOf', args: [node] })) }))));
    setHealth(await fetch('/health').then((r) => r.json()));
  }, [ctx, registry]);
  useEffect(() => void refresh().catch(() => setNodes([])), [refresh]);
  const send = (what: string, done: string, call: () => Promise<Hex>) =>
    void action.run(async (step) => {
      step.wallet(what);
      const hash = await call();
      step.pending(done, hash);
      const block = await mined(ctx.chain, hash);
      await refresh();
      return { message: done, hash, block };
    });
  const register = () => {
    if (!isAddress(form.node.trim(), { strict: false })) return;
    const node = getAddress(form.node.trim());
    send(
      `Confirm the transaction: register node key ${node} as serving at ${form.endpoint} (${form.tier}, ${form.region}). The service routes to it once it sends heartbeats signed by that key.`,
      `Node ${short(node)} registered.`,
      () => ctx.chain.write.writeContract({ address: registry, abi: REGISTRY_ABI, functionName: 'register', args: [node, form.endpoint.trim(), form.tier, form.region.trim()], chain: null, account: ctx.account }),
    );
  };
  const retire = (node: Address) =>
    send(
      `Confirm the transaction: retire node key ${node} for good. It gets no more work, its receipts already settled stay valid, and the key can never be registered again.`,
      `Node ${short(node)} retired.`,
      () => ctx.chain.write.writeContract({ address: registry, abi: REGISTRY_ABI, functionName: 'retire', args: [node], chain: null, account: ctx.account }),
    );
  return (
    <Panel title="Nodes" id="nodes">
      {health !== undefined ? (
        <p data-testid="service-health">
          The service routes to {health.nodes} live nodes (heartbeats); its chain mirror is {health.mirror_lag_blocks ?? '?'} blocks behind, the indexer {health.indexer_lag_blocks ?? '?'}.
        </p>
      ) : null}
      <table class="data" data-testid="nodes-table">
        <thead><tr><th scope="col">Node key</th><th scope="col">Status</th><th scope="col">Endpoint</th><th scope="col">Tier</th><th scope="col">Region</th><th scope="col">Registered in block</th><th scope="col" /></tr></thead>
        <tbody>
          {nodes?.map((n) => (
            <tr key={n.node} data-node={n.node} data-status={STATUS[n.status] ?? String(n.status)}>
              <td><code title={n.node}>{short(n.node)}</code></td><td>{STATUS[n.status] ?? n.status}</td><td>{n.endpoint}</td>
              <td>{n.tier}</td><td>{n.region}</td><td>{n.registeredBlock.toString()}</td>
              <td>{n.status === 1 ? <button type="button" class="secondary" disabled={action.busy} onClick={() => retire(n.node)}>Retire</button> : null}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <form onSubmit={(e) => { e.preventDefault(); register(); }}>
        <label for="node-key">Node key (address)</label>
        <input id="node-key" spellcheck={false} value={form.node} onInput={(e) => setForm({ ...form, node: (e.target as HTMLInputElement).value })} />
        <label for="node-endpoint">Endpoint (http(s) URL)</label>
        <input id="node-endpoint" value={form.endpoint} onInput={(e) => setForm({ ...form, endpoint: (e.target as HTMLInputElement).value })} />
        <label for="node-tier">Node tier</label>
        <select id="node-tier" value={form.tier} onChange={(e) => setForm({ ...form, tier: (e.target as HTMLSelectElement).value })}>
          {TIERS.map((t) => <option key={t} value={t}>{t}</option>)}
        </select>
        <label for="node-region">Region</label>
        <input id="node-region" value={form.region} onInput={(e) => setForm({ ...form, region: (e.target as HTMLInputElement).value })} />
        <button type="submit" disabled={action.busy || !isAddress(form.node.trim(), { strict: false })}>Register node</button>
      </form>
      <ActionStatus state={action.state} testid="node-status" />
    </Panel>
  );
}

interface ShortfallRow {
  block: bigint;
  batchId: Hex;
  payer: Address;
  spender: Address;
  owed: bigint;
  paid: bigint;
}

function ShortfallsPanel({ ctx }: { ctx: PageContext }) {
  const [rows, setRows] = useState<ShortfallRow[]>();
  useEffect(() => {
    ctx.chain.read
      .getContractEvents({ address: contract(ctx.doc, 'settlement'), abi: SETTLEMENT_ABI, eventName: 'Shortfall', fromBlock: 0n })
      .then((logs) => setRows(logs.map((l) => ({
        block: l.blockNumber, batchId: l.args.batchId as Hex, payer: l.args.payer as Address, spender: l.args.spender as Address,
        owed: l.args.owed as bigint, paid: l.args.paid as bigint,
      })).reverse()), () => setRows([]));
  }, [ctx]);
  return (
    <Panel title="Shortfalls" id="shortfalls">
      {rows === undefined ? <p>Reading the chain…</p> : rows.length === 0 ? (
        <p data-testid="no-shortfalls">No settlement has fallen short: every batch was paid in full.</p>
      ) : (
        <table class="data" data-testid="shortfalls-table">
          <caption>Settlements the payer's escrow or budget could not cover (Shortfall logs), newest first</caption>
          <thead><tr><th scope="col">Block</th><th scope="col">Batch</th><th scope="col">Payer / key</th><th scope="col">Owed</th><th scope="col">Paid</th></tr></thead>
          <tbody>
            {rows.map((r) => (
              <tr key={`${r.batchId}-${r.payer}-${r.spender}`}>
                <td>{r.block.toString()}</td><td><a href={`#/auditor?batch=${r.batchId}`}><code>{short(r.batchId)}</code></a></td>
                <td><code title={r.payer}>{short(r.payer)}</code> / <code title={r.spender}>{short(r.spender)}</code></td>
                <td><Amount units={r.owed} /></td><td><Amount units={r.paid} /></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <p class="muted">Outstanding debts and suspended accounts: the Operations panel above; each payer's debts: <code>sluice admin debts</code>.</p>
    </Panel>
  );
}

function PausePanel({ ctx }: { ctx: PageContext }) {
  const [paused, setPaused] = useState<{ token: boolean; settlement: boolean }>();
  const action = useAction();
  const token = contract(ctx.doc, 'token');
  const settlement = contract(ctx.doc, 'settlement');
  const refresh = useCallback(async () => {
    const [t, s] = await Promise.all([
      ctx.chain.read.readContract({ address: token, abi: TOKEN_ABI, functionName: 'paused' }),
      ctx.chain.read.readContract({ address: settlement, abi: SETTLEMENT_ABI, functionName: 'paused' }),
    ]);
    setPaused({ token: t, settlement: s });
  }, [ctx, token, settlement]);
  useEffect(() => void refresh(), [refresh]);
  const toggle = (which: 'token' | 'settlement', pause: boolean) =>
    void action.run(async (step) => {
      const address = which === 'token' ? token : settlement;
      step.wallet(`Confirm the transaction: ${pause ? 'pause' : 'unpause'} the ${which === 'token' ? 'compute token (all transfers)' : 'Settlement contract (deposits, withdrawals, budgets, settlement)'}. ${pause ? 'The service refuses new calls with 403 paused while it is paused.' : ''}`);
      const hash = await ctx.chain.write.writeContract({ address, abi: TOKEN_ABI, functionName: pause ? 'pause' : 'unpause', chain: null, account: ctx.account });
      step.pending(pause ? 'Pausing.' : 'Unpausing.', hash);
      const block = await mined(ctx.chain, hash);
      await refresh();
      return { message: `${which} ${pause ? 'paused' : 'unpaused'}.`, hash, block };
    });
  return (
    <Panel title="Pause" id="pause">
      {paused === undefined ? <p>Reading the chain…</p> : (
        <ul class="plain">
          {(['token', 'settlement'] as const).map((w) => (
            <li key={w} data-testid={`paused-${w}`}>
              {w === 'token' ? 'Compute token' : 'Settlement'}: {paused[w] ? 'paused' : 'running'}{' '}
              <button type="button" class="secondary" disabled={action.busy} onClick={() => toggle(w, !paused[w])}>{paused[w] ? 'Unpause' : 'Pause'}</button>
            </li>
          ))}
        </ul>
      )}
      <ActionStatus state={action.state} testid="pause-status" />
    </Panel>
  );
}
