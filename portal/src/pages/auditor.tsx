/** Auditor: the on-chain history with filters and CSV, a batch's receipts, and the batch verified in this browser. */

import { type AuditReceipt, type BatchCheck, checkBatch } from '@sluice/client';
import { useEffect, useState } from 'preact/hooks';
import type { Address, Hex } from 'viem';

import { contract, REGISTRY_ABI, SETTLEMENT_ABI } from '../chain';
import { type PageContext, signedRead } from '../context';
import { toCsv } from '../format';
import { ActionStatus, Amount, CsvLink, Panel, short, useAction } from '../ui';

interface AuditEvent {
  block: number;
  log_index: number;
  tx_hash: string;
  timestamp: string;
  contract: string;
  event: string;
  kind: string;
  accounts: string[];
  args: Record<string, unknown>;
}

interface Batch {
  batch_id: string;
  receipts_root: string | null;
  settlement: { receipts_root: string; items: number; total: string; block: number } | null;
  receipts: AuditReceipt[];
}

function fromHash(): Record<string, string> {
  const query = window.location.hash.split('?')[1] ?? '';
  return Object.fromEntries(new URLSearchParams(query));
}

export function historyCsv(events: readonly AuditEvent[]): string {
  return toCsv(
    ['block', 'log_index', 'timestamp', 'tx_hash', 'contract', 'event', 'accounts', 'args'],
    events.map((e) => [e.block, e.log_index, e.timestamp, e.tx_hash, e.contract, e.event, e.accounts.join(' '), JSON.stringify(e.args)]),
  );
}

export function AuditorPage({ ctx }: { ctx: PageContext }) {
  const initial = fromHash();
  const [filters, setFilters] = useState({
    account: initial.account ?? '', event: initial.event ?? '', batch_id: initial.batch_id ?? '',
    from_block: initial.from_block ?? '', to_block: initial.to_block ?? '', since: '', until: '',
  });
  const [events, setEvents] = useState<AuditEvent[]>();
  const [batchId, setBatchId] = useState(initial.batch ?? '');
  const history = useAction();
  const load = () =>
    void history.run(async (step) => {
      step.wallet(signedRead('/audit/transactions', 'the on-chain history; your key needs the auditor role'));
      const query = Object.fromEntries(Object.entries(filters).filter(([, v]) => v.trim() !== ''));
      const page = await ctx.api.auditTransactions<{ data: AuditEvent[] }>({ ...query, limit: 200 });
      setEvents(page.data);
      return { message: `${page.data.length} events.` };
    });
  const field = (name: keyof typeof filters, label: string) => (
    <div class="field">
      <label for={`f-${name}`}>{label}</label>
      <input id={`f-${name}`} value={filters[name]} onInput={(e) => setFilters({ ...filters, [name]: (e.target as HTMLInputElement).value })} />
    </div>
  );
  return (
    <>
      <Panel title="On-chain history" id="history">
        <form class="filters" onSubmit={(e) => { e.preventDefault(); load(); }}>
          {field('account', 'Account')}
          {field('event', 'Event (e.g. BatchSettled)')}
          {field('batch_id', 'Batch id')}
          {field('from_block', 'From block')}
          {field('to_block', 'To block')}
          {field('since', 'Since (ISO time)')}
          {field('until', 'Until (ISO time)')}
          <button type="submit" disabled={history.busy}>Show history</button>
        </form>
        <ActionStatus state={history.state} testid="history-status" />
        {events !== undefined ? (
          <>
            <table class="data" data-testid="history-table">
              <thead><tr><th scope="col">Block</th><th scope="col">Time</th><th scope="col">Event</th><th scope="col">Accounts</th><th scope="col">Details</th></tr></thead>
              <tbody>
                {events.map((e) => (
                  <tr key={`${e.block}-${e.log_index}`} data-event={e.event}>
                    <td>{e.block}</td><td>{e.timestamp}</td><td>{e.contract}.{e.event}</td>
                    <td>{e.accounts.map((a) => <code key={a} title={a}>{short(a)} </code>)}</td>
                    <td>
                      {e.event === 'BatchSettled' && typeof e.args.batchId === 'string' ? (
                        <button type="button" class="secondary" onClick={() => setBatchId(e.args.batchId as string)}>Open batch</button>
                      ) : <code class="args">{JSON.stringify(e.args)}</code>}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            <CsvLink name="sluice-history.csv" text={historyCsv(events)} testid="history-csv" />
          </>
        ) : null}
      </Panel>
      <BatchPanel ctx={ctx} batchId={batchId} setBatchId={setBatchId} />
      <ReconciliationPanel ctx={ctx} />
    </>
  );
}

function BatchPanel({ ctx, batchId, setBatchId }: { ctx: PageContext; batchId: string; setBatchId: (id: string) => void }) {
  const [batch, setBatch] = useState<Batch>();
  const [check, setCheck] = useState<BatchCheck & { onChainRoot: Hex; nodes: number }>();
  const action = useAction();
  const open = (id: string) =>
    void action.run(async (step) => {
      setCheck(undefined);
      step.wallet(signedRead(`/audit/batches/${short(id)}`, 'the batch\'s receipts with both signatures and Merkle proofs'));
      const doc = await ctx.api.auditBatch<Batch>(id as Hex);
      setBatch(doc);
      return { message: `${doc.receipts.length} receipts.` };
    });
  useEffect(() => {
    if (/^0x[0-9a-fA-F]{64}$/.test(batchId)) open(batchId);
  }, [batchId]);
  const verify = () =>
    void action.run(async () => {
      if (batch === undefined) throw new Error('Open a batch first.');
      const { read } = ctx.chain;
      const logs = await read.getContractEvents({
        address: contract(ctx.doc, 'settlement'), abi: SETTLEMENT_ABI, eventName: 'BatchSettled',
        args: { batchId: batch.batch_id as Hex }, fromBlock: 0n,
      });
      const log = logs[0];
      if (log === undefined) throw new Error(`The chain has no BatchSettled for ${batch.batch_id}: it is not settled.`);
      const nodeKeys = (await read.readContract({ address: contract(ctx.doc, 'node_registry'), abi: REGISTRY_ABI, functionName: 'nodes' })) as readonly Address[];
      const result = await checkBatch(batch.receipts, {
        domain: ctx.doc.eip712_domain, receiptsRoot: log.args.receiptsRoot as Hex, items: log.args.items as bigint, nodeKeys,
      });
      setCheck({ ...result, onChainRoot: log.args.receiptsRoot as Hex, nodes: nodeKeys.length });
      return { message: result.ok ? 'The batch verifies.' : `The check ran: ${result.problems.length} problems found, listed below.` };
    });
  return (
    <Panel title="Batch" id="batch">
      <form onSubmit={(e) => { e.preventDefault(); open(batchId); }}>
        <label for="batch-id">Batch id</label>
        <input id="batch-id" spellcheck={false} value={batchId} onInput={(e) => setBatchId((e.target as HTMLInputElement).value.trim())} />
        <button type="submit" disabled={action.busy}>Open batch</button>
      </form>
      <ActionStatus state={action.state} testid="batch-status" />
      {batch !== undefined ? (
        <>
          <p>Receipts root served: <code>{batch.receipts_root ?? 'none'}</code></p>
          <table class="data" data-testid="receipts-table">
            <thead><tr><th scope="col">Job</th><th scope="col">Payer / key</th><th scope="col">Model</th><th scope="col">Cost</th><th scope="col">Request signature</th><th scope="col">Node signature</th><th scope="col">Merkle proof</th></tr></thead>
            <tbody>
              {batch.receipts.map((r) => (
                <tr key={r.job_id} data-job={r.job_id}>
                  <td><code title={r.job_id}>{short(r.job_id)}</code></td>
                  <td><code title={r.payer}>{short(r.payer)}</code> / <code title={r.spender}>{short(r.spender)}</code></td>
                  <td>{r.model ?? r.kind}</td>
                  <td><Amount units={BigInt(r.cost)} /></td>
                  <td><code title={r.request?.signature ?? ''}>{short(r.request?.signature ?? '—')}</code></td>
                  <td><code title={r.node_signature ?? ''}>{short(r.node_signature ?? '—')}</code></td>
                  <td>{(r.merkle_proof ?? []).map((p) => <code key={p} title={p}>{short(p)} </code>)}</td>
                </tr>
              ))}
            </tbody>
          </table>
          <button type="button" onClick={verify} disabled={action.busy}>Verify this batch in the browser</button>
          <p class="muted">Recomputes every leaf and the Merkle root here, checks them against the BatchSettled log and each request and node signature against NodeRegistry, read through your wallet's RPC: nothing the portal's server says is trusted.</p>
        </>
      ) : null}
      {check !== undefined ? (
        <div data-testid="verify-result" data-ok={String(check.ok)} class={check.ok ? 'ok' : 'alert'} role={check.ok ? 'status' : 'alert'}>
          <p>
            <strong>{check.ok ? 'Verified.' : 'Verification failed.'}</strong> {check.receipts} receipts, {check.signatures} signatures checked
            against {check.nodes} registered node keys; root recomputed <code>{check.root ?? 'none'}</code>, on chain <code>{check.onChainRoot}</code>.
          </p>
          {check.problems.length > 0 ? (
            <ul data-testid="verify-problems">
              {check.problems.map((p, i) => <li key={i} data-code={p.code}><code>{p.code}</code>{p.jobId ? <> <code title={p.jobId}>{short(p.jobId)}</code></> : null}: {p.message}</li>)}
            </ul>
          ) : null}
        </div>
      ) : null}
    </Panel>
  );
}

interface Reconciliation {
  balanced: boolean;
  rows: { payer: string; spender: string; receipts: number; metered: string; settled: string; redeemed: string; shortfall_unpaid: string; difference: string }[];
}

function ReconciliationPanel({ ctx }: { ctx: PageContext }) {
  const [doc, setDoc] = useState<Reconciliation>();
  const action = useAction();
  const load = () =>
    void action.run(async (step) => {
      step.wallet(signedRead('/audit/reconciliation', 'metered, settled and redeemed amounts per payer and key'));
      const answer = await ctx.api.auditReconciliation<Reconciliation>();
      setDoc(answer);
      return { message: answer.balanced ? 'Every pair balances.' : 'Some pairs do not balance: see the difference column.' };
    });
  return (
    <Panel title="Reconciliation" id="reconciliation">
      <button type="button" onClick={load} disabled={action.busy}>Show reconciliation</button>
      <ActionStatus state={action.state} testid="reconciliation-status" />
      {doc !== undefined ? (
        <table class="data" data-testid="reconciliation-table" data-balanced={String(doc.balanced)}>
          <caption>Per payer and key: metered by the service, settled (the database), redeemed (the chain's Redeemed logs)</caption>
          <thead><tr><th scope="col">Payer / key</th><th scope="col">Receipts</th><th scope="col">Metered</th><th scope="col">Settled</th><th scope="col">Redeemed</th><th scope="col">Short, unpaid</th><th scope="col">Difference</th></tr></thead>
          <tbody>
            {doc.rows.map((r) => (
              <tr key={`${r.payer}-${r.spender}`} data-payer={r.payer} data-spender={r.spender}>
                <td><code title={r.payer}>{short(r.payer)}</code> / <code title={r.spender}>{short(r.spender)}</code></td>
                <td>{r.receipts}</td>
                <td><Amount units={BigInt(r.metered)} /></td><td><Amount units={BigInt(r.settled)} /></td>
                <td><Amount units={BigInt(r.redeemed)} /></td><td><Amount units={BigInt(r.shortfall_unpaid)} /></td>
                <td data-units={r.difference}>{r.difference === '0' ? '0' : <Amount units={BigInt(r.difference)} />}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
    </Panel>
  );
}
