/** Developer: the budgets every payer gave this key, what is left, its limits, its recent calls with their cost,
 * and snippets to call the API. */

import { useEffect, useState } from 'preact/hooks';
import { type Address, getAddress, isAddress } from 'viem';

import { contract, SETTLEMENT_ABI } from '../chain';
import { type PageContext, signedRead } from '../context';
import { describeTime } from '../format';
import { ActionStatus, Amount, Panel, useAction } from '../ui';

interface Row {
  payer: Address;
  remaining: bigint;
  scheduled: bigint;
  effectiveAt: bigint;
}

/** One call of `GET /v1/calls` (cost in base units, a decimal string). */
interface Call {
  job_id: string;
  model: string;
  prompt_tokens: number;
  completion_tokens: number;
  cost: string;
  finished_at: number;
  status: string;
  settled: boolean;
  batch_id: string | null;
}

const CALLS_SHOWN = 50;

export function snippets(origin: string, payer: string, model: string): { python: string; js: string } {
  return {
    python: `import os

import httpx
from openai import OpenAI
from redemption.sdk import SluiceAuth

auth = SluiceAuth(os.environ["SLUICE_DEVELOPER_KEY"], payer="${payer}", max_cost=10**17)
client = OpenAI(base_url="${origin}/v1", api_key="unused", http_client=httpx.Client(auth=auth))
reply = client.chat.completions.create(model="${model}", messages=[{"role": "user", "content": "Hello"}])
print(reply.choices[0].message.content, "cost", auth.last_cost)
`,
    js: `import OpenAI from 'openai';
import { SluiceClient, localSigner } from '@sluice/client';

const sluice = new SluiceClient({ baseUrl: '${origin}', signer: localSigner(process.env.SLUICE_DEVELOPER_KEY), payer: '${payer}' });
const openai = new OpenAI({ baseURL: '${origin}/v1', apiKey: 'unused', fetch: sluice.fetch });
const reply = await openai.chat.completions.create({ model: '${model}', messages: [{ role: 'user', content: 'Hello' }] });
console.log(reply.choices[0].message.content);
`,
  };
}

export function DeveloperPage({ ctx }: { ctx: PageContext }) {
  const [keyText, setKeyText] = useState<string>(ctx.account);
  const [rows, setRows] = useState<Row[]>();
  const [models, setModels] = useState<string[]>([]);
  const [limits, setLimits] = useState<Record<string, unknown>>();
  const [calls, setCalls] = useState<{ payer: Address; calls: Call[] }>();
  const action = useAction();
  const callsAction = useAction();
  const key = isAddress(keyText.trim(), { strict: false }) ? getAddress(keyText.trim()) : undefined;

  useEffect(() => {
    ctx.api.models<{ data: { id: string }[] }>().then((m) => setModels(m.data.map((d) => d.id)), () => setModels([]));
  }, [ctx]);
  useEffect(() => {
    if (key === undefined) return;
    const settlement = contract(ctx.doc, 'settlement');
    const { read } = ctx.chain;
    setRows(undefined);
    read
      .getContractEvents({ address: settlement, abi: SETTLEMENT_ABI, eventName: 'BudgetSet', args: { spender: key }, fromBlock: 0n })
      .then((logs) =>
        Promise.all(
          [...new Set(logs.map((l) => l.args.payer as Address))].map(async (payer) => {
            const [remaining, scheduled, effectiveAt] = await read.readContract({
              address: settlement, abi: SETTLEMENT_ABI, functionName: 'budgetOf', args: [payer, key],
            });
            return { payer, remaining, scheduled, effectiveAt };
          }),
        ),
      )
      .then(setRows, () => setRows([]));
  }, [ctx, key]);

  const readLeft = (payer: Address) =>
    void action.run(async (step) => {
      step.wallet(signedRead('/v1/budget', 'what this key can still spend, less open holds and unsettled usage'));
      const budget = await ctx.api.budget<Record<string, unknown>>({ payer, spender: key ?? ctx.account });
      setLimits(budget);
      return { message: 'Budget read from the service.' };
    });

  const readCalls = (payer: Address) =>
    void callsAction.run(async (step) => {
      step.wallet(signedRead('/v1/calls', `this key's last ${CALLS_SHOWN} calls under this payer's budget, with their cost`));
      const answer = await ctx.api.get<{ calls: Call[] }>('v1/calls', { payer, spender: key ?? ctx.account, limit: CALLS_SHOWN });
      setCalls({ payer, calls: answer.calls });
      return { message: `${answer.calls.length} recent call${answer.calls.length === 1 ? '' : 's'} read from the service.` };
    });

  const payer = rows?.[0]?.payer ?? '0xPAYER';
  const model = models[0] ?? 'MODEL';
  const code = snippets(ctx.origin, payer, model);
  return (
    <>
      <Panel title="Budgets of a developer key" id="dev-budgets">
        <label for="dev-key">Developer key (the connected account, or paste another)</label>
        <input id="dev-key" spellcheck={false} value={keyText} onInput={(e) => setKeyText((e.target as HTMLInputElement).value)} />
        <table class="data" data-testid="dev-budgets-table">
          <thead><tr><th scope="col">Payer</th><th scope="col">Budget now</th><th scope="col">Pending cut</th><th scope="col" /></tr></thead>
          <tbody>
            {rows === undefined ? <tr><td colSpan={4}>Reading the chain…</td></tr> : null}
            {rows?.length === 0 ? <tr><td colSpan={4}>No payer has given this key a budget.</td></tr> : null}
            {rows?.map((r) => (
              <tr key={r.payer} data-payer={r.payer}>
                <td><code>{r.payer}</code></td>
                <td><Amount units={r.remaining} /></td>
                <td>{r.effectiveAt === 0n ? 'none' : <>to <Amount units={r.scheduled} /> at {describeTime(r.effectiveAt)}</>}</td>
                <td><button type="button" class="secondary" onClick={() => readLeft(r.payer)} disabled={action.busy}>What is left</button>{' '}
                  <button type="button" class="secondary" onClick={() => readCalls(r.payer)} disabled={callsAction.busy}>Recent calls</button></td>
              </tr>
            ))}
          </tbody>
        </table>
        <ActionStatus state={action.state} testid="dev-status" />
        {limits !== undefined ? (
          <dl class="facts" data-testid="dev-left">
            {Object.entries(limits).map(([name, value]) => (
              <div key={name}><dt>{name}</dt><dd>{/_available$/.test(name) && typeof value === 'string' ? <Amount units={BigInt(value)} /> : value === null ? '—' : String(typeof value === 'object' ? JSON.stringify(value) : value)}</dd></div>
            ))}
          </dl>
        ) : null}
        <ActionStatus state={callsAction.state} testid="dev-calls-status" />
        {calls !== undefined ? (
          <table class="data" data-testid="dev-calls">
            <caption>Recent calls paid from <code>{calls.payer}</code>, newest first</caption>
            <thead><tr><th scope="col">Finished</th><th scope="col">Model</th><th scope="col">Prompt tokens</th><th scope="col">Completion tokens</th><th scope="col">Cost</th><th scope="col">Base units</th><th scope="col">Settled</th></tr></thead>
            <tbody>
              {calls.calls.length === 0 ? <tr><td colSpan={7}>No calls yet.</td></tr> : null}
              {calls.calls.map((c) => (
                <tr key={c.job_id} data-job={c.job_id}>
                  <td><time dateTime={new Date(c.finished_at * 1000).toISOString()}>{describeTime(c.finished_at)}</time></td>
                  <td>{c.model}</td>
                  <td>{c.prompt_tokens}</td>
                  <td>{c.completion_tokens}</td>
                  <td><Amount units={BigInt(c.cost)} /></td>
                  <td data-testid="call-units">{c.cost}</td>
                  <td data-testid="call-settled">{c.settled ? `yes, batch ${c.batch_id ?? ''}` : c.status === 'batched' ? 'in a batch being settled' : 'not yet'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        ) : null}
      </Panel>
      <Panel title="Call the API" id="snippets">
        <p>Models on the rate card: {models.length === 0 ? 'none listed' : models.join(', ')}.</p>
        <h3>Python (openai + SluiceAuth)</h3>
        <pre data-testid="snippet-python"><code>{code.python}</code></pre>
        <h3>JavaScript (openai + @sluice/client)</h3>
        <pre data-testid="snippet-js"><code>{code.js}</code></pre>
      </Panel>
    </>
  );
}
