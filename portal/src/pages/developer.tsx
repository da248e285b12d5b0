/** Developer: the budgets every payer gave this key, what is left, its limits, and snippets to call the API. */

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
  const action = useAction();
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
                <td><button type="button" class="secondary" onClick={() => readLeft(r.payer)} disabled={action.busy}>What is left</button></td>
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
