/** The four sections' pages. Each is a placeholder naming what it will hold, until the API behind it settles. */

import type { Discovery } from '@sluice/client';
import type { Ref } from 'preact';

import { hrefOf, SECTIONS, type Section } from './routes';

interface Planned {
  title: string;
  text: string;
}

const PLANNED: Record<Section['id'], Planned[]> = {
  enterprise: [
    { title: 'Buy compute tokens', text: 'Volume tiers from the TokenSale contract, paid in the payment token, to your wallet or your escrow.' },
    { title: 'Escrow', text: 'Deposit, request a withdrawal and withdraw once the unlock period has passed.' },
    { title: 'Developer budgets', text: 'Give each developer key a budget; cuts take effect after the unlock period.' },
  ],
  developer: [
    { title: 'Budgets', text: 'What each payer lets this key spend, less open holds and unsettled usage.' },
    { title: 'Usage', text: 'Metered and settled cost of your calls.' },
    { title: 'Try a call', text: 'A chat completion signed by this wallet, with its job id and cost.' },
  ],
  auditor: [
    { title: 'Settled batches', text: 'Every BatchSettled on chain, with its receipts.' },
    { title: 'Verify in the browser', text: 'Leaves, Merkle proofs, request and node signatures recomputed here.' },
    { title: 'Reconciliation', text: 'Metered, settled and redeemed amounts per payer and key.' },
  ],
  operator: [
    { title: 'Rate card', text: 'Input and output rates per model, published on chain.' },
    { title: 'Nodes', text: 'Register and retire inference nodes in the NodeRegistry.' },
    { title: 'Allowlist and roles', text: 'Allowlisted accounts, auditors and suspended accounts.' },
  ],
};

export function SectionPage({ section, headingRef }: { section: Section; headingRef: Ref<HTMLHeadingElement> }) {
  return (
    <>
      <h1 ref={headingRef} tabIndex={-1}>
        {section.title}
      </h1>
      <p class="lead">{section.summary}</p>
      <ul class="cards" aria-label={`${section.title} tools`}>
        {PLANNED[section.id].map((p) => (
          <li class="card" key={p.title}>
            <h2>{p.title}</h2>
            <p>{p.text}</p>
            <p class="soon">Not available yet.</p>
          </li>
        ))}
      </ul>
    </>
  );
}

export function HomePage({ headingRef }: { headingRef: Ref<HTMLHeadingElement> }) {
  return (
    <>
      <h1 ref={headingRef} tabIndex={-1}>
        Sluice portal
      </h1>
      <p class="lead">Prepaid compute tokens for GPU inference, settled on chain. Choose what you are here to do.</p>
      <ul class="cards" aria-label="Sections">
        {SECTIONS.map((s) => (
          <li class="card" key={s.id}>
            <h2>
              <a href={hrefOf(s.id)}>{s.title}</a>
            </h2>
            <p>{s.summary}</p>
          </li>
        ))}
      </ul>
    </>
  );
}

export function NotFoundPage({ headingRef }: { headingRef: Ref<HTMLHeadingElement> }) {
  return (
    <>
      <h1 ref={headingRef} tabIndex={-1}>
        Page not found
      </h1>
      <p class="lead">
        There is no page at this address. <a href={hrefOf('home')}>Go to the start page</a>.
      </p>
    </>
  );
}

export function DeploymentFacts({ discovery }: { discovery: Discovery }) {
  return (
    <dl class="facts">
      <div>
        <dt>Chain</dt>
        <dd>{discovery.chain_id}</dd>
      </div>
      <div>
        <dt>Settlement contract</dt>
        <dd>
          <code>{discovery.contracts.settlement}</code>
        </dd>
      </div>
      <div>
        <dt>Compute token</dt>
        <dd>
          <code>{discovery.contracts.token}</code>
        </dd>
      </div>
    </dl>
  );
}
