// The built portal in headless Chromium, with a test wallet injected into the page over a real Anvil chain.
//
//     npm test        (builds the portal first; screenshots go to portal/test-results/)

import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { bodyHash, recoverRedemptionSigner, redemptionTypedData, typedDataJson } from '@sluice/client';
import { generatePrivateKey } from 'viem/accounts';

import { rpc, startAnvil } from './support/anvil.mjs';
import { launchChromium } from './support/browser.mjs';
import { bundleClient } from './support/client-bundle.mjs';
import { serveStatic } from './support/static-server.mjs';
import { installTestWallet } from './support/injected-wallet.mjs';

const PORTAL = dirname(dirname(fileURLToPath(import.meta.url)));
const RESULTS = join(PORTAL, 'test-results');
const SETTLEMENT = '0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9';
const TOKEN = '0x5FbDB2315678afecb367f032d93F642f64180aa3';

const JOB_ID = `0x${'a1'.repeat(32)}`;

let chain;
let site;
let browser;
let clientBundle;
/** Calls the test routes received: method, path, headers, raw body. */
const served = [];

function record(answer) {
  return async (req, body) => {
    served.push({ method: req.method, url: req.url, headers: req.headers, body });
    return answer(req, body);
  };
}

// Stand-ins for two service routes, answering as the service does; what matters is what the page sent.
const ROUTES = {
  '/v1/budget': record((req) => ({
    body: { payer: new URL(req.url, 'http://x').searchParams.get('payer'), balance_available: '5000' },
  })),
  '/v1/chat/completions': record(() => ({
    headers: { 'Sluice-Job-Id': JOB_ID, 'Sluice-Cost': '1250000000000000' },
    body: { object: 'chat.completion', choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' } }] },
  })),
};

function discoveryFor(rpcUrl, chainId) {
  return {
    chain_id: chainId,
    rpc_url: rpcUrl,
    contracts: {
      token: TOKEN,
      sale: '0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512',
      rate_card: '0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0',
      settlement: SETTLEMENT,
      payment_token: '0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9',
      node_registry: '0x0165878A594ca255338adfa4d48449f69242Eb8F',
    },
    token: { name: 'Sluice Compute Token', symbol: 'SCT', decimals: 18 },
    eip712_domain: { name: 'Sluice', version: '1', chainId, verifyingContract: SETTLEMENT },
    max_deadline_seconds: 300,
    unlock_period_seconds: 86400,
  };
}

/** A page whose errors, failed requests and requests to anything but the portal's own origin fail the test. */
async function openPortal(context, path = '/') {
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  page.on('requestfailed', (request) => problems.push(`request failed: ${request.url()}`));
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(site.url) && !url.startsWith('data:')) problems.push(`request off the portal's origin: ${url}`);
  });
  await page.goto(site.url + path);
  return { page, problems };
}

async function waitFor(check, what, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** WCAG contrast of an element's text against the first opaque background behind it. */
function contrastOf(page, selector) {
  return page.evaluate((sel) => {
    const rgb = (text) => text.match(/[\d.]+/g).map(Number);
    const luminance = ([r, g, b]) => {
      const channel = (c) => {
        const v = c / 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
      };
      return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
    };
    const element = document.querySelector(sel);
    if (element === null) throw new Error(`no element ${sel}`);
    let node = element;
    let background = 'rgb(255, 255, 255)';
    while (node !== null) {
      const bg = getComputedStyle(node).backgroundColor;
      const parts = rgb(bg);
      if (parts.length === 3 || parts[3] === 1) {
        background = bg;
        break;
      }
      node = node.parentElement;
    }
    const [a, b] = [luminance(rgb(getComputedStyle(element).color)), luminance(rgb(background))];
    return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  }, selector);
}

async function noHorizontalScroll(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
}

before(async () => {
  await mkdir(RESULTS, { recursive: true });
  [chain, clientBundle] = await Promise.all([startAnvil(), bundleClient()]);
  site = await serveStatic(join(PORTAL, 'dist'), {
    discovery: discoveryFor(chain.url, chain.chainId),
    routes: ROUTES,
    mounts: { '/__client__/': clientBundle.dir },
  });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await site?.close();
  await chain?.stop();
  await clientBundle?.remove();
});

describe('the portal shell', () => {
  it('connects the wallet, moves it onto the Sluice chain and shows the account', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const wallet = await installTestWallet(context, { privateKey: generatePrivateKey() });
    // The start page: a section page would start reading the chain once connected (the journeys test those).
    const { page, problems } = await openPortal(context, '/');
    await page.getByRole('heading', { level: 1, name: 'Sluice portal' }).waitFor();
    assert.equal(await page.title(), 'Sluice portal');

    await page.getByRole('button', { name: 'Connect wallet' }).click();
    const alert = page.getByTestId('wrong-network');
    await alert.waitFor();
    assert.match(await alert.innerText(), /Your wallet is on chain 1; this Sluice deployment runs on chain 31337/);
    await page.screenshot({ path: join(RESULTS, 'portal-wrong-network.png') });

    await page.getByRole('button', { name: 'Switch to the Sluice network' }).click();
    const account = page.getByTestId('account');
    await account.waitFor();
    assert.equal(await account.innerText(), wallet.address);
    assert.equal(await alert.count(), 0);
    assert.equal(wallet.chainId(), chain.chainId);
    assert.deepEqual(wallet.methods(), [
      'eth_requestAccounts',
      'eth_chainId',
      'wallet_switchEthereumChain',
      'wallet_addEthereumChain',
      'eth_chainId',
    ]);
    assert.deepEqual(wallet.added(), [
      {
        chainId: '0x7a69',
        chainName: 'Sluice (chain 31337)',
        rpcUrls: [chain.url],
        nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
      },
    ]);

    await page.getByRole('button', { name: 'Add SCT to your wallet' }).click();
    await page.getByText("SCT is in your wallet's asset list.").waitFor();
    assert.deepEqual(wallet.watched(), [{ type: 'ERC20', options: { address: TOKEN, symbol: 'SCT', decimals: 18 } }]);

    assert.ok(await noHorizontalScroll(page), 'no horizontal scrolling at 1280 px');
    await page.screenshot({ path: join(RESULTS, 'portal-1280.png'), fullPage: true });
    await page.setViewportSize({ width: 390, height: 844 });
    assert.ok(await noHorizontalScroll(page), 'no horizontal scrolling at 390 px');
    assert.ok(await account.isVisible());
    await page.screenshot({ path: join(RESULTS, 'portal-390.png'), fullPage: true });
    assert.deepEqual(problems, []);
    await context.close();
  });

  it('works from the keyboard: skip link, section links, focus on the new heading', async () => {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
    await installTestWallet(context, { privateKey: generatePrivateKey() });
    const { page, problems } = await openPortal(context, '/');
    await page.getByRole('heading', { level: 1, name: 'Sluice portal' }).waitFor();
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Skip to content');
    await page.keyboard.press('Enter');
    assert.equal(await page.evaluate(() => document.activeElement?.tagName), 'H1');

    await page.getByRole('link', { name: 'Auditor' }).first().focus();
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { level: 1, name: 'Auditor' }).waitFor();
    await waitFor(() => page.evaluate(() => document.activeElement?.textContent === 'Auditor'), 'focus on the heading');
    assert.equal(await page.evaluate(() => location.hash), '#/auditor');
    assert.equal(await page.getByRole('link', { name: 'Auditor' }).getAttribute('aria-current'), 'page');
    assert.equal(await page.title(), 'Auditor · Sluice portal');

    for (const selector of ['main .lead', 'nav a[aria-current="page"]', 'nav a:not([aria-current])', '[data-testid="needs-wallet"]', '.site-footer dd', 'header button']) {
      const ratio = await contrastOf(page, selector);
      assert.ok(ratio >= 4.5, `${selector} has contrast ${ratio.toFixed(2)}, below 4.5`);
    }
    await page.goto(`${site.url}/#/nowhere`);
    await page.getByRole('heading', { level: 1, name: 'Page not found' }).waitFor();
    assert.deepEqual(problems, []);
    await context.close();
  });

  it('says so plainly when there is no wallet, or the user declines', async () => {
    const bare = await browser.newContext();
    const { page, problems } = await openPortal(bare, '/#/enterprise');
    await page.getByText('No browser wallet was found.').waitFor();
    assert.equal(await page.getByRole('button', { name: /Connect/ }).count(), 0);
    assert.deepEqual(problems, []);
    await bare.close();

    const context = await browser.newContext();
    const wallet = await installTestWallet(context, { privateKey: generatePrivateKey(), decline: ['wallet_addEthereumChain'] });
    const second = await openPortal(context, '/#/operator');
    await second.page.getByRole('button', { name: 'Connect wallet' }).click();
    await second.page.getByRole('button', { name: 'Switch to the Sluice network' }).click();
    await second.page.getByText('You declined the request in your wallet.').waitFor();
    assert.equal(await second.page.getByTestId('wrong-network').count(), 1);
    assert.equal(wallet.chainId(), 1);
    assert.deepEqual(second.problems, []);
    await context.close();
  });
});

describe('the injected test wallet', () => {
  it('signs typed data and sends transactions the way a browser wallet does', async () => {
    const context = await browser.newContext();
    const wallet = await installTestWallet(context, {
      privateKey: generatePrivateKey(),
      chains: { [chain.chainId]: chain.url },
      activeChain: chain.chainId,
    });
    const { page, problems } = await openPortal(context, '/');
    await page.getByRole('button', { name: 'Connect wallet' }).click();
    await page.getByTestId('account').waitFor();

    const domain = { name: 'Sluice', version: '1', chainId: chain.chainId, verifyingContract: SETTLEMENT };
    const message = {
      payer: wallet.address,
      bodyHash: `0x${'00'.repeat(32)}`,
      maxCost: 0n,
      nonce: 7n,
      deadline: 1_800_000_000n,
    };
    const typed = redemptionTypedData(domain, message);
    const signature = await page.evaluate(
      ([address, json]) => window.ethereum.request({ method: 'eth_signTypedData_v4', params: [address, json] }),
      [wallet.address, typedDataJson(typed)],
    );
    assert.equal(await recoverRedemptionSigner(domain, message, signature), wallet.address);

    const otherChain = typedDataJson(redemptionTypedData({ ...domain, chainId: 1 }, message));
    const refused = await page.evaluate(
      ([address, json]) =>
        window.ethereum.request({ method: 'eth_signTypedData_v4', params: [address, json] }).catch((e) => e.code),
      [wallet.address, otherChain],
    );
    assert.equal(refused, -32602);

    // A zero-gas chain: the fresh key holds no ether and still sends.
    const hash = await page.evaluate(
      (from) =>
        window.ethereum.request({
          method: 'eth_sendTransaction',
          params: [{ from, to: '0x000000000000000000000000000000000000dEaD', value: '0x0' }],
        }),
      wallet.address,
    );
    const receipt = await waitFor(
      () => page.evaluate((h) => window.ethereum.request({ method: 'eth_getTransactionReceipt', params: [h] }), hash),
      'the transaction receipt',
    );
    assert.equal(receipt.status, '0x1');
    assert.equal(receipt.from, wallet.address.toLowerCase());
    assert.equal(Number(await rpc(chain.url, 'eth_getTransactionCount', [wallet.address, 'latest'])), 1);
    assert.deepEqual(problems, []);
    await context.close();
  });
});

describe('@sluice/client in the browser', () => {
  it('signs account reads and billable calls through the injected wallet', async () => {
    const context = await browser.newContext();
    const wallet = await installTestWallet(context, {
      privateKey: generatePrivateKey(),
      chains: { [chain.chainId]: chain.url },
      activeChain: chain.chainId,
    });
    const { page, problems } = await openPortal(context, '/');
    await page.getByRole('button', { name: 'Connect wallet' }).click();
    await page.getByTestId('account').waitFor();
    served.length = 0;
    const before = Math.floor(Date.now() / 1000);

    const out = await page.evaluate(async (payer) => {
      const sluice = await import('/__client__/client.js');
      const client = new sluice.SluiceClient({
        baseUrl: location.origin,
        signer: sluice.eip1193Signer(window.ethereum),
        maxCost: 10n ** 15n * 2n,
      });
      const budget = await client.budget({ payer });
      const call = await client.post('v1/chat/completions', {
        model: 'tiny-chat',
        messages: [{ role: 'user', content: 'héllo ✓' }],
      });
      return { budget, jobId: call.charge.jobId, cost: sluice.formatTokens(call.charge.cost) };
    }, wallet.address);
    assert.deepEqual(out, { budget: { payer: wallet.address, balance_available: '5000' }, jobId: JOB_ID, cost: '0.00125' });

    const domain = { name: 'Sluice', version: '1', chainId: chain.chainId, verifyingContract: SETTLEMENT };
    assert.deepEqual(served.map((c) => [c.method, c.url.split('?')[0], c.headers['sluice-max-cost']]), [
      ['GET', '/v1/budget', '0'],
      ['POST', '/v1/chat/completions', '2000000000000000'],
    ]);
    for (const call of served) {
      const h = call.headers;
      const message = {
        payer: h['sluice-payer'],
        bodyHash: bodyHash(new Uint8Array(call.body)),
        maxCost: BigInt(h['sluice-max-cost']),
        nonce: BigInt(h['sluice-nonce']),
        deadline: BigInt(h['sluice-deadline']),
      };
      assert.equal(await recoverRedemptionSigner(domain, message, h['sluice-signature']), wallet.address);
      assert.equal(message.payer, wallet.address);
      assert.ok(message.nonce < 2n ** 128n);
      assert.ok(message.deadline >= BigInt(before) && message.deadline <= BigInt(before + 300));
    }
    assert.equal(served[0].body.length, 0);
    assert.equal(served[1].body.toString('utf8'), JSON.stringify({ model: 'tiny-chat', messages: [{ role: 'user', content: 'héllo ✓' }] }));
    assert.deepEqual(problems, []);
    await context.close();
  });
});
