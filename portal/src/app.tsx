/** The portal shell: header with the sections and the wallet, the wallet's state, the current section. */

import { type Discovery, fetchDiscovery } from '@sluice/client';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';

import { pageContext, type PageContext } from './context';
import { AuditorPage } from './pages/auditor';
import { DeveloperPage } from './pages/developer';
import { EnterprisePage } from './pages/enterprise';
import { OperatorPage } from './pages/operator';
import { hrefOf, type RouteId, type Section, SECTIONS, useRoute } from './routes';
import { DeploymentFacts, HomePage, NotFoundPage, SectionPage } from './sections';
import { useWallet, type WalletSession } from './use-wallet';
import { shortAddress } from './wallet';

type DiscoveryState =
  | { kind: 'loading' }
  | { kind: 'ready'; discovery: Discovery }
  | { kind: 'failed'; message: string };

function useDiscovery(): DiscoveryState {
  const [state, setState] = useState<DiscoveryState>({ kind: 'loading' });
  useEffect(() => {
    fetchDiscovery(window.location.origin)
      .then((discovery) => setState({ kind: 'ready', discovery }))
      .catch((e: unknown) => setState({ kind: 'failed', message: e instanceof Error ? e.message : String(e) }));
  }, []);
  return state;
}

function titleOf(route: RouteId): string {
  if (route === 'home') return 'Sluice portal';
  if (route === 'not-found') return 'Page not found · Sluice portal';
  return `${SECTIONS.find((s) => s.id === route)?.title} · Sluice portal`;
}

function Nav({ route }: { route: RouteId }) {
  return (
    <nav aria-label="Sections">
      <ul>
        {SECTIONS.map((s) => (
          <li key={s.id}>
            <a href={hrefOf(s.id)} aria-current={route === s.id ? 'page' : undefined}>
              {s.title}
            </a>
          </li>
        ))}
      </ul>
    </nav>
  );
}

function WalletControl({ wallet }: { wallet: WalletSession }) {
  const { status, wallets } = wallet;
  if (status.kind === 'connected') {
    return (
      <div class="wallet-control">
        <span class="account" title={status.account}>
          <span class="visually-hidden">Connected account </span>
          {shortAddress(status.account)}
        </span>
        <button type="button" class="secondary" onClick={wallet.forget}>
          Disconnect
        </button>
      </div>
    );
  }
  if (status.kind === 'none') {
    return <p class="wallet-control muted">No wallet found</p>;
  }
  const connecting = status.kind === 'connecting';
  return (
    <div class="wallet-control">
      {wallets.map((w) => (
        <button
          type="button"
          key={w.info.uuid}
          onClick={() => void wallet.connect(w)}
          disabled={connecting}
          aria-busy={connecting && status.wallet === w ? 'true' : undefined}
        >
          {w.info.icon ? <img src={w.info.icon} alt="" width={20} height={20} /> : null}
          {connecting && status.wallet === w ? 'Connecting…' : wallets.length > 1 ? `Connect ${w.info.name}` : 'Connect wallet'}
        </button>
      ))}
    </div>
  );
}

function WalletPanel({ wallet, discovery }: { wallet: WalletSession; discovery: DiscoveryState }) {
  const { status } = wallet;
  const doc = discovery.kind === 'ready' ? discovery.discovery : undefined;
  const wrongNetwork = status.kind === 'connected' && doc !== undefined && status.chainId !== doc.chain_id;
  return (
    <section class="wallet-panel" aria-labelledby="wallet-heading">
      <h2 id="wallet-heading" class="visually-hidden">
        Wallet
      </h2>
      {discovery.kind === 'failed' ? (
        <p class="alert" role="alert">
          The Sluice service could not be reached: {discovery.message}. Wallet actions that need the deployment are
          unavailable.
        </p>
      ) : null}
      {status.kind === 'none' ? (
        <p class="alert" role="alert">
          No browser wallet was found. Install a wallet such as MetaMask or Rabby, or open this page in your wallet's
          browser, then reload.
        </p>
      ) : null}
      {wrongNetwork && doc !== undefined ? (
        <div class="alert" role="alert" data-testid="wrong-network">
          <p>
            <strong>Wrong network.</strong> Your wallet is on chain {status.chainId}; this Sluice deployment runs on
            chain {doc.chain_id}. Switch your wallet to it to continue.
          </p>
          <button type="button" onClick={() => void wallet.switchNetwork(doc)} disabled={wallet.busy === 'switching'}>
            {wallet.busy === 'switching' ? 'Switching…' : 'Switch to the Sluice network'}
          </button>
        </div>
      ) : null}
      <div role="status" aria-live="polite" class="status-line">
        {status.kind === 'connected' && !wrongNetwork ? (
          <p class="ok" data-testid="connected">
            Connected as <code data-testid="account">{status.account}</code>
            {doc !== undefined ? <> on chain {status.chainId}.</> : '.'}
          </p>
        ) : null}
        {status.kind === 'ready' && wallet.error === undefined ? <p>Connect a wallet to use the portal.</p> : null}
        {wallet.notice !== undefined ? <p class="ok">{wallet.notice}</p> : null}
      </div>
      {wallet.error !== undefined ? (
        <p class="alert" role="alert">
          {wallet.error}
        </p>
      ) : null}
      {status.kind === 'connected' && !wrongNetwork && doc?.token !== undefined ? (
        <button type="button" class="secondary" onClick={() => void wallet.addToken(doc)} disabled={wallet.busy === 'watching'}>
          Add {doc.token.symbol} to your wallet
        </button>
      ) : null}
    </section>
  );
}

function Page({ id, ctx }: { id: Section['id']; ctx: PageContext }) {
  if (id === 'enterprise') return <EnterprisePage ctx={ctx} />;
  if (id === 'developer') return <DeveloperPage ctx={ctx} />;
  if (id === 'auditor') return <AuditorPage ctx={ctx} />;
  return <OperatorPage ctx={ctx} />;
}

export function App() {
  const route = useRoute();
  const discovery = useDiscovery();
  const wallet = useWallet();
  const heading = useRef<HTMLHeadingElement>(null);
  const firstRender = useRef(true);

  // On navigation, move focus to the new page's heading so keyboard and screen-reader users land on it.
  useEffect(() => {
    document.title = titleOf(route);
    if (firstRender.current) {
      firstRender.current = false;
      return;
    }
    heading.current?.focus();
  }, [route]);

  const section = SECTIONS.find((s) => s.id === route);
  const doc = discovery.kind === 'ready' ? discovery.discovery : undefined;
  const status = wallet.status;
  const onChain = status.kind === 'connected' && doc !== undefined && status.chainId === doc.chain_id;
  const ctx = useMemo(
    () => (onChain && status.kind === 'connected' && doc !== undefined ? pageContext(doc, status.wallet, status.account) : undefined),
    [onChain, doc, status.kind === 'connected' ? status.account : undefined, status.kind === 'connected' ? status.wallet : undefined],
  );
  return (
    <>
      <a class="skip-link" href="#main" onClick={(e) => {
        e.preventDefault();
        heading.current?.focus();
      }}>
        Skip to content
      </a>
      <header class="site-header">
        <a class="brand" href={hrefOf('home')}>
          Sluice
        </a>
        <Nav route={route} />
        <WalletControl wallet={wallet} />
      </header>
      <main id="main">
        <WalletPanel wallet={wallet} discovery={discovery} />
        {section !== undefined ? (
          <SectionPage section={section} headingRef={heading}>
            {ctx === undefined ? (
              <p class="muted" data-testid="needs-wallet">
                Connect a wallet on the Sluice network (above) to use this page: it reads the chain through your wallet
                and signs with it.
              </p>
            ) : (
              <Page id={section.id} ctx={ctx} key={`${section.id}-${ctx.account}`} />
            )}
          </SectionPage>
        ) : route === 'home' ? (
          <HomePage headingRef={heading} />
        ) : (
          <NotFoundPage headingRef={heading} />
        )}
      </main>
      <footer class="site-footer">
        {discovery.kind === 'ready' ? <DeploymentFacts discovery={discovery.discovery} /> : null}
        {discovery.kind === 'loading' ? <p>Reading the deployment…</p> : null}
      </footer>
    </>
  );
}
