/** The section frame (heading and summary), the start page, the not-found page and the deployment facts. */

import type { Discovery } from '@sluice/client';
import type { ComponentChildren, Ref } from 'preact';

import { hrefOf, SECTIONS, type Section } from './routes';

export function SectionPage({ section, headingRef, children }: { section: Section; headingRef: Ref<HTMLHeadingElement>; children: ComponentChildren }) {
  return (
    <>
      <h1 ref={headingRef} tabIndex={-1}>
        {section.title}
      </h1>
      <p class="lead">{section.summary}</p>
      {children}
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
