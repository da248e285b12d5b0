/** Small shared pieces: exact amounts, the action status line (signature / transaction progress), charts, CSV. */

import type { ComponentChildren } from 'preact';
import { useCallback, useState } from 'preact/hooks';
import type { Hash } from 'viem';

import { describeError } from './chain';
import { groupedTokens } from './format';

/** Compute tokens, exact; the base units on hover (and for screen readers in the title). */
export function Amount({ units, symbol = 'SCT', testid }: { units: bigint; symbol?: string; testid?: string }) {
  return (
    <span class="amount" title={`${units.toString()} base units`} data-units={units.toString()} data-testid={testid}>
      {groupedTokens(units)} {symbol}
    </span>
  );
}

export type ActionState =
  | { kind: 'idle' }
  | { kind: 'wallet'; what: string }
  | { kind: 'pending'; what: string; hash: Hash }
  | { kind: 'done'; message: string; hash?: Hash; block?: bigint }
  | { kind: 'failed'; message: string };

export interface Step {
  /** Shown while the wallet prompt is open: what is being signed or sent, in words. */
  wallet(what: string): void;
  pending(what: string, hash: Hash): void;
}

/** One action at a time per form: `run` drives the status line from the wallet prompt to the result. */
export function useAction() {
  const [state, setState] = useState<ActionState>({ kind: 'idle' });
  const run = useCallback(
    async (work: (step: Step) => Promise<{ message: string; hash?: Hash; block?: bigint }>) => {
      try {
        const done = await work({
          wallet: (what) => setState({ kind: 'wallet', what }),
          pending: (what, hash) => setState({ kind: 'pending', what, hash }),
        });
        setState({ kind: 'done', ...done });
        return true;
      } catch (error) {
        setState({ kind: 'failed', message: describeError(error) });
        return false;
      }
    },
    [],
  );
  return { state, run, busy: state.kind === 'wallet' || state.kind === 'pending' };
}

export function historyHref(block: bigint): string {
  return `#/auditor?from_block=${block}&to_block=${block}`;
}

export function ActionStatus({ state, testid }: { state: ActionState; testid: string }) {
  if (state.kind === 'idle') return <div role="status" aria-live="polite" data-testid={testid} />;
  return (
    <div role="status" aria-live="polite" data-testid={testid} data-state={state.kind} class={`action ${state.kind}`}>
      {state.kind === 'wallet' ? (
        <p>
          <strong>Check your wallet.</strong> {state.what}
        </p>
      ) : null}
      {state.kind === 'pending' ? (
        <p>
          {state.what} Sent as <code>{state.hash}</code>; waiting for it to be mined…
        </p>
      ) : null}
      {state.kind === 'done' ? (
        <p class="ok">
          {state.message}
          {state.block !== undefined ? (
            <>
              {' '}
              Mined in block {state.block.toString()}: <a href={historyHref(state.block)}>see it in the history</a>.
            </>
          ) : null}
        </p>
      ) : null}
      {state.kind === 'failed' ? (
        <p class="alert" role="alert">
          {state.message}
        </p>
      ) : null}
    </div>
  );
}

export function Panel({ title, id, children }: { title: string; id: string; children: ComponentChildren }) {
  return (
    <section class="panel" aria-labelledby={`${id}-h`} data-testid={id}>
      <h2 id={`${id}-h`}>{title}</h2>
      {children}
    </section>
  );
}

export interface Bar {
  label: string;
  value: bigint;
}

/** A horizontal bar chart in SVG; bar lengths are computed in bigint per mille, labels are exact. */
export function BarChart({ bars, title, testid }: { bars: readonly Bar[]; title: string; testid: string }) {
  const max = bars.reduce((m, b) => (b.value > m ? b.value : m), 0n);
  const rowHeight = 28;
  const height = Math.max(1, bars.length) * rowHeight + 8;
  return (
    <figure class="chart" data-testid={testid}>
      <figcaption>{title}</figcaption>
      <svg viewBox={`0 0 640 ${height}`} width="100%" role="img" aria-label={title}>
        {bars.map((bar, i) => {
          const permille = max === 0n ? 0 : Number((bar.value * 1000n) / max);
          const width = (permille * 300) / 1000;
          const y = 4 + i * rowHeight;
          return (
            <g key={bar.label} data-label={bar.label} data-units={bar.value.toString()}>
              <text x="0" y={y + 18} font-size="13" fill="currentColor">
                {bar.label.length > 24 ? `${bar.label.slice(0, 10)}…${bar.label.slice(-8)}` : bar.label}
              </text>
              <rect x="200" y={y + 4} width={Math.max(width, bar.value > 0n ? 1 : 0)} height="18" fill="#0b57b0">
                <title>{`${bar.label}: ${bar.value} base units`}</title>
              </rect>
              <text x={210 + width} y={y + 18} font-size="13" fill="currentColor">
                {groupedTokens(bar.value)}
              </text>
            </g>
          );
        })}
      </svg>
    </figure>
  );
}

/** A link that downloads `text` as a CSV file. */
export function CsvLink({ name, text, testid }: { name: string; text: string; testid: string }) {
  const href = `data:text/csv;charset=utf-8,${encodeURIComponent(text)}`;
  return (
    <a class="button secondary" href={href} download={name} data-testid={testid}>
      Export CSV
    </a>
  );
}

export function short(value: string): string {
  return value.length > 14 ? `${value.slice(0, 8)}…${value.slice(-6)}` : value;
}
