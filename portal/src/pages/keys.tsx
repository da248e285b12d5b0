/** Key names, limits and expiry (`/v1/keys`), offered only when the service's OpenAPI document has it. */

import { apiErrorFromResponse } from '@sluice/client';
import { useEffect, useState } from 'preact/hooks';
import { getAddress, isAddress } from 'viem';

import { type PageContext, servicePaths, signedRead } from '../context';
import { describeTime } from '../format';
import { ActionStatus, Panel, useAction } from '../ui';

interface Policy {
  spender: string;
  label: string | null;
  requests_per_minute: number | null;
  tokens_per_minute: number | null;
  expires_at: number | null;
}

export function KeyPolicies({ ctx }: { ctx: PageContext }) {
  const [offered, setOffered] = useState<boolean>();
  const [policies, setPolicies] = useState<Policy[]>();
  const [form, setForm] = useState({ spender: '', label: '', rpm: '', tpm: '', expires: '' });
  const action = useAction();
  useEffect(() => {
    servicePaths().then((paths) => setOffered(paths.has('/v1/keys')), () => setOffered(false));
  }, []);
  if (offered === undefined) return null;
  if (!offered) {
    return (
      <Panel title="Key names, limits and expiry" id="key-policies">
        <p data-testid="keys-not-offered">Not offered by this service: its API has no <code>/v1/keys</code>. Budgets above still apply.</p>
      </Panel>
    );
  }
  const load = () =>
    void action.run(async (step) => {
      step.wallet(signedRead('/v1/keys', 'the names and limits of your developer keys'));
      const doc = await ctx.api.get<{ keys: Policy[] }>('v1/keys');
      setPolicies(doc.keys);
      return { message: `${doc.keys.length} key policies read.` };
    });
  const save = () =>
    void action.run(async (step) => {
      if (!isAddress(form.spender.trim(), { strict: false })) throw new Error('Enter the developer key\'s address.');
      const spender = getAddress(form.spender.trim());
      const num = (t: string) => (t.trim() === '' ? null : Number.parseInt(t, 10));
      const body = {
        spender, // the signature covers the body, not the path: the body names the key it changes
        label: form.label.trim() === '' ? null : form.label.trim(),
        requests_per_minute: num(form.rpm),
        tokens_per_minute: num(form.tpm),
        expires_at: form.expires.trim() === '' ? null : Math.floor(Date.parse(form.expires) / 1000),
      };
      step.wallet(`Sign a request to set the policy of key ${spender}: ${JSON.stringify(body)}. It spends nothing (max cost 0).`);
      const response = await ctx.api.fetch(ctx.api.url(`v1/keys/${spender}`), {
        method: 'PUT', body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' },
      });
      if (!response.ok) throw await apiErrorFromResponse(response);
      return { message: `Policy of ${spender} saved.` };
    });
  const remove = (spender: string) =>
    void action.run(async (step) => {
      step.wallet(`Sign a request to delete the policy of key ${spender} (its name, limits and expiry). Its budget stays on chain; it spends nothing (max cost 0).`);
      // the signature covers the body, not the path: the body names the key whose policy goes
      const response = await ctx.api.fetch(ctx.api.url(`v1/keys/${spender}`), {
        method: 'DELETE', body: JSON.stringify({ spender }), headers: { 'Content-Type': 'application/json' },
      });
      if (!response.ok) throw await apiErrorFromResponse(response);
      const { deleted } = (await response.json()) as { deleted: boolean };
      const doc = await ctx.api.get<{ keys: Policy[] }>('v1/keys');
      setPolicies(doc.keys);
      return { message: deleted ? `Policy of ${spender} deleted; its budget stays on chain.` : `Key ${spender} had no policy to delete.` };
    });
  const field = (name: keyof typeof form, label: string) => (
    <>
      <label for={`policy-${name}`}>{label}</label>
      <input id={`policy-${name}`} value={form[name]} onInput={(e) => setForm({ ...form, [name]: (e.target as HTMLInputElement).value })} />
    </>
  );
  return (
    <Panel title="Key names, limits and expiry" id="key-policies">
      <button type="button" onClick={load} disabled={action.busy}>Show key policies</button>
      {policies !== undefined ? (
        <table class="data" data-testid="policies-table">
          <thead><tr><th scope="col">Key</th><th scope="col">Name</th><th scope="col">Requests/min</th><th scope="col">Tokens/min</th><th scope="col">Expires</th><th scope="col" /></tr></thead>
          <tbody>
            {policies.map((p) => (
              <tr key={p.spender} data-spender={p.spender}>
                <td><code>{p.spender}</code></td><td>{p.label ?? '—'}</td><td>{p.requests_per_minute ?? 'no limit'}</td>
                <td>{p.tokens_per_minute ?? 'no limit'}</td><td>{p.expires_at === null ? 'never' : describeTime(p.expires_at)}</td>
                <td><button type="button" class="secondary" onClick={() => remove(p.spender)} disabled={action.busy}>Delete policy</button></td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      <form onSubmit={(e) => { e.preventDefault(); save(); }}>
        {field('spender', 'Developer key to name and limit (address)')}
        {field('label', 'Name')}
        {field('rpm', 'Requests per minute (empty: no limit)')}
        {field('tpm', 'Model tokens per minute (empty: no limit)')}
        {field('expires', 'Expires at (ISO date-time, empty: never)')}
        <button type="submit" disabled={action.busy}>Save policy</button>
      </form>
      <ActionStatus state={action.state} testid="policy-status" />
    </Panel>
  );
}
