// One step of a user's journey through the portal served by a real Sluice service, in headless Chromium
// with the injected test wallet. Run by tests/portal/test_portal_journeys.py, which prepares the stack,
// makes the developer's call between steps and checks the figures against the chain and the database:
//
//     node tests/journeys.mjs STEP      (SLUICE_JOURNEY: JSON {portal, privateKey, out, ...the step's inputs})
//
// Prints one JSON line of what the page showed. Any page error, console error, failed request or
// request off the service's origin fails the step (exit 1), as does a wait that times out.

import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { launchChromium } from './support/browser.mjs';
import { installTestWallet } from './support/injected-wallet.mjs';

const config = JSON.parse(process.env.SLUICE_JOURNEY ?? '{}');
const step = process.argv[2];
const origin = new URL(config.portal).origin;
const TIMEOUT = 30_000;

async function open(browser, hash, { viewport = { width: 1280, height: 900 }, decline = [] } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(TIMEOUT);
  const wallet = await installTestWallet(context, { privateKey: config.privateKey, decline });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  page.on('requestfailed', (request) => problems.push(`request failed: ${request.url()} ${request.failure()?.errorText}`));
  page.on('request', (request) => {
    const url = request.url();
    if (!url.startsWith(origin) && !url.startsWith('data:')) problems.push(`request off the service's origin: ${url}`);
  });
  const started = Date.now();
  await page.goto(config.portal + hash);
  await page.getByRole('button', { name: 'Connect wallet' }).click();
  await page.getByRole('button', { name: 'Switch to the Sluice network' }).click();
  await page.getByTestId('account').waitFor();
  return { context, page, wallet, problems, started };
}

const shot = async (page, name) => {
  const path = join(config.out, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
};

async function done(page, testid, previous = undefined) {
  const status = page.getByTestId(testid);
  await page.waitForFunction(
    ([id, before]) => {
      const el = document.querySelector(`[data-testid="${id}"]`);
      const state = el?.getAttribute('data-state');
      return (state === 'done' || state === 'failed') && el.textContent !== before;
    },
    [testid, previous],
    { timeout: TIMEOUT },
  );
  const state = await status.getAttribute('data-state');
  const text = await status.innerText();
  if (state !== 'done') throw new Error(`${testid}: ${text}`);
  return text;
}

/** The alert of an action that failed (a success fails the step). */
async function refused(page, testid) {
  await page.locator(`[data-testid="${testid}"][data-state="done"], [data-testid="${testid}"][data-state="failed"]`).waitFor();
  const status = page.getByTestId(testid);
  if ((await status.getAttribute('data-state')) !== 'failed') throw new Error(`${testid} succeeded: ${await status.innerText()}`);
  return status.getByRole('alert').innerText();
}

const units = (locator) => locator.getAttribute('data-units');

const steps = {
  async 'enterprise-buy'(browser) {
    const { page, problems, started, wallet } = await open(browser, '#/enterprise');
    await page.getByTestId('escrow-balance').waitFor();
    const loaded = Date.now() - started;
    const navigation = await page.evaluate(() => {
      const n = performance.getEntriesByType('navigation')[0];
      return { domContentLoaded: Math.round(n.domContentLoadedEventEnd), load: Math.round(n.loadEventEnd), transferred: n.transferSize };
    });
    const resources = await page.evaluate(() =>
      performance.getEntriesByType('resource').filter((r) => r.name.includes('/portal/')).map((r) => ({ name: r.name, transferred: r.transferSize, decoded: r.decodedBodySize })),
    );
    const before = await units(page.getByTestId('escrow-balance'));
    await page.getByLabel('Compute tokens to buy').fill(config.buy);
    await page.getByTestId('quote').getByText('Costs').waitFor();
    const quote = await page.getByTestId('quote').innerText();
    await page.getByRole('button', { name: 'Buy into escrow' }).click();
    const bought = await done(page, 'buy-status');
    await page.waitForFunction((b) => document.querySelector('[data-testid="escrow-balance"]')?.getAttribute('data-units') !== b, before);
    const screenshots = [await shot(page, 'enterprise-bought')];
    let status;
    for (const key of config.keys) {
      await page.getByLabel('Developer key (address)', { exact: true }).fill(key.address);
      await page.getByLabel('Budget (compute tokens)').fill(key.budget);
      await page.getByRole('button', { name: 'Set budget' }).click();
      status = await done(page, 'budget-status', status);
      await page.locator(`[data-testid="budgets"] tr[data-spender="${key.address}"]`).waitFor();
    }
    const budgets = await page.locator('[data-testid="budgets"] tbody tr').evaluateAll((rows) =>
      rows.map((r) => ({ spender: r.getAttribute('data-spender'), units: r.querySelector('.amount')?.getAttribute('data-units'), text: r.innerText })),
    );
    const keysOffered = (await page.getByTestId('keys-not-offered').count()) === 0;
    screenshots.push(await shot(page, 'enterprise-keys'));
    return {
      loaded_ms: loaded, navigation, resources, quote, bought, escrow: await units(page.getByTestId('escrow-balance')),
      budgets, keys_offered: keysOffered, methods: [...new Set(wallet.methods())].sort(), problems, screenshots,
    };
  },

  async 'enterprise-refused'(browser) {
    const { page, problems } = await open(browser, '#/enterprise', { decline: config.decline ?? [] });
    await page.getByTestId('escrow-balance').waitFor();
    await page.getByLabel('Compute tokens to buy').fill(config.buy);
    await page.getByTestId('quote').getByText('Costs').waitFor();
    await page.getByRole('button', { name: 'Buy into escrow' }).click();
    const alert = await refused(page, 'buy-status');
    return { alert, problems, screenshots: [await shot(page, `enterprise-refused-${config.label}`)] };
  },

  async 'enterprise-request-withdrawal'(browser) {
    const { page, problems } = await open(browser, '#/enterprise');
    await page.getByTestId('escrow-balance').waitFor();
    await page.getByLabel('Request a withdrawal').fill(config.amount);
    await page.getByRole('button', { name: 'Request withdrawal' }).click();
    const status = await done(page, 'escrow-status');
    await page.getByTestId('pending-withdrawal').getByText('unlocks at').waitFor();
    const locked = await page.getByRole('button', { name: 'Complete withdrawal' }).isDisabled();
    return { status, pending: await page.getByTestId('pending-withdrawal').innerText(), locked, problems, screenshots: [await shot(page, 'enterprise-withdrawal-requested')] };
  },

  async 'enterprise-withdraw-and-deposit'(browser) {
    const { page, problems } = await open(browser, '#/enterprise');
    await page.getByTestId('pending-withdrawal').getByText('unlocked since').waitFor();
    const pending = await page.getByTestId('pending-withdrawal').innerText();
    await page.getByRole('button', { name: 'Complete withdrawal' }).click();
    const withdrawn = await done(page, 'escrow-status');
    await page.waitForFunction(() => document.querySelector('[data-testid="pending-withdrawal"]')?.textContent === 'none');
    const wallet = await units(page.getByTestId('wallet-balance'));
    await page.getByLabel('Deposit compute tokens from the wallet').fill(config.deposit);
    await page.getByRole('button', { name: 'Deposit', exact: true }).click();
    const deposited = await done(page, 'escrow-status', withdrawn);
    await page.waitForFunction((w) => document.querySelector('[data-testid="wallet-balance"]')?.getAttribute('data-units') !== w, wallet);
    return {
      pending, withdrawn, deposited, wallet_after_withdraw: wallet, wallet: await units(page.getByTestId('wallet-balance')),
      escrow: await units(page.getByTestId('escrow-balance')), problems, screenshots: [await shot(page, 'enterprise-deposited')],
    };
  },

  async 'enterprise-key-policy'(browser) {
    const { page, problems } = await open(browser, '#/enterprise');
    await page.getByRole('button', { name: 'Show key policies' }).waitFor();
    await page.getByLabel('Developer key to name and limit (address)').fill(config.key);
    await page.getByLabel('Name', { exact: true }).fill(config.label);
    await page.getByLabel('Requests per minute (empty: no limit)').fill(config.rpm);
    await page.getByRole('button', { name: 'Save policy' }).click();
    const saved = await done(page, 'policy-status');
    await page.getByRole('button', { name: 'Show key policies' }).click();
    await done(page, 'policy-status', saved);
    const row = await page.locator(`[data-testid="policies-table"] tr[data-spender="${config.key}"]`).locator('td').allInnerTexts();
    return { saved, row, problems, screenshots: [await shot(page, 'enterprise-key-policy')] };
  },

  async 'enterprise-key-policy-delete'(browser) {
    const { page, problems } = await open(browser, '#/enterprise');
    await page.getByRole('button', { name: 'Show key policies' }).click();
    const listed = await done(page, 'policy-status');
    const row = page.locator(`[data-testid="policies-table"] tr[data-spender="${config.key}"]`);
    const before = await row.locator('td').allInnerTexts();
    await row.getByRole('button', { name: 'Delete policy' }).click();
    const deleted = await done(page, 'policy-status', listed);
    const after = await row.locator('td').allInnerTexts();
    return { before, deleted, after, problems, screenshots: [await shot(page, 'enterprise-key-policy-deleted')] };
  },

  async 'enterprise-usage'(browser) {
    const { page, problems } = await open(browser, '#/enterprise');
    await page.getByRole('button', { name: 'Show usage' }).click();
    await done(page, 'usage-status');
    const bars = (id) =>
      page.locator(`[data-testid="${id}"] g`).evaluateAll((gs) => gs.map((g) => ({ label: g.getAttribute('data-label'), units: g.getAttribute('data-units') })));
    const href = await page.getByTestId('usage-csv').getAttribute('href');
    const csv = decodeURIComponent(href.slice(href.indexOf(',') + 1));
    const table = await page.getByTestId('usage-table').innerText();
    const screenshots = [await shot(page, 'enterprise-usage')];
    await page.setViewportSize({ width: 390, height: 844 });
    const fits = await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
    screenshots.push(await shot(page, 'enterprise-usage-390'));
    return { keys: await bars('chart-keys'), models: await bars('chart-models'), days: await bars('chart-days'), csv, table, fits_390: fits, problems, screenshots };
  },

  async 'enterprise-cut'(browser) {
    const { page, problems } = await open(browser, '#/enterprise');
    const row = page.locator(`[data-testid="budgets"] tr[data-spender="${config.key}"]`);
    await row.waitFor();
    await page.getByLabel('Developer key (address)', { exact: true }).fill(config.key);
    await page.getByLabel('Budget (compute tokens)').fill(config.budget);
    await page.getByRole('button', { name: 'Set budget' }).click();
    const status = await done(page, 'budget-status');
    await row.locator('time').waitFor();
    const cut = await row.getByTestId('pending-cut').innerText();
    const effective = await row.locator('time').getAttribute('datetime');
    return { status, cut, effective, problems, screenshots: [await shot(page, 'enterprise-cut')] };
  },

  async 'developer'(browser) {
    const { page, problems } = await open(browser, '#/developer');
    const row = page.locator(`[data-testid="dev-budgets-table"] tr[data-payer="${config.payer}"]`);
    await row.waitFor();
    await row.getByRole('button', { name: 'What is left' }).click();
    await done(page, 'dev-status');
    const left = await page.getByTestId('dev-left').innerText();
    await row.getByRole('button', { name: 'Recent calls' }).click();
    const callsStatus = await done(page, 'dev-calls-status');
    const calls = await page.locator('[data-testid="dev-calls"] tbody tr').evaluateAll((rows) =>
      rows.map((r) => ({
        job: r.getAttribute('data-job'),
        units: r.querySelector('[data-testid="call-units"]')?.textContent,
        amount: r.querySelector('.amount')?.getAttribute('data-units'),
        settled: r.querySelector('[data-testid="call-settled"]')?.textContent,
        finished: r.querySelector('time')?.getAttribute('datetime'),
        cells: [...r.querySelectorAll('td')].slice(1, 4).map((td) => td.textContent),
      })));
    const python = await page.getByTestId('snippet-python').innerText();
    return { row: await row.innerText(), left, callsStatus, calls, python, problems, screenshots: [await shot(page, 'developer')] };
  },

  async 'auditor'(browser) {
    const { page, context, problems } = await open(browser, '#/auditor?event=BatchSettled');
    await page.getByRole('button', { name: 'Show history' }).click();
    await done(page, 'history-status');
    const events = await page.locator('[data-testid="history-table"] tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-event')));
    const href = await page.getByTestId('history-csv').getAttribute('href');
    const csv = decodeURIComponent(href.slice(href.indexOf(',') + 1));
    await page.locator('[data-testid="history-table"] tbody tr').first().getByRole('button', { name: 'Open batch' }).click();
    await page.getByTestId('receipts-table').waitFor();
    const receipts = await page.locator('[data-testid="receipts-table"] tbody tr').evaluateAll((rows) => rows.map((r) => r.getAttribute('data-job')));
    const screenshots = [await shot(page, 'auditor-batch')];
    await page.getByRole('button', { name: 'Verify this batch in the browser' }).click();
    await page.getByTestId('verify-result').waitFor();
    const verified = { ok: await page.getByTestId('verify-result').getAttribute('data-ok'), text: await page.getByTestId('verify-result').innerText() };
    screenshots.push(await shot(page, 'auditor-verified'));

    // The server lies: one receipt's cost is raised by one base unit on its way to the page.
    await context.route('**/audit/batches/**', async (route) => {
      const response = await route.fetch();
      const body = await response.json();
      body.receipts[0].cost = (BigInt(body.receipts[0].cost) + 1n).toString();
      await route.fulfill({ response, json: body });
    });
    await page.getByRole('button', { name: 'Open batch' }).last().click();
    await done(page, 'batch-status');
    await page.getByRole('button', { name: 'Verify this batch in the browser' }).click();
    await page.locator('[data-testid="verify-result"][data-ok="false"]').waitFor();
    const tampered = {
      text: await page.getByTestId('verify-result').innerText(),
      codes: await page.locator('[data-testid="verify-problems"] li').evaluateAll((items) => items.map((i) => i.getAttribute('data-code'))),
    };
    screenshots.push(await shot(page, 'auditor-tampered'));
    await page.getByRole('button', { name: 'Show reconciliation' }).click();
    await done(page, 'reconciliation-status');
    const reconciliation = {
      balanced: await page.getByTestId('reconciliation-table').getAttribute('data-balanced'),
      rows: await page.locator('[data-testid="reconciliation-table"] tbody tr').evaluateAll((rows) =>
        rows.map((r) => ({ payer: r.getAttribute('data-payer'), spender: r.getAttribute('data-spender'), units: [...r.querySelectorAll('[data-units]')].map((e) => e.getAttribute('data-units')) })),
      ),
    };
    screenshots.push(await shot(page, 'auditor-reconciliation'));
    return { events, csv, receipts, verified, tampered, reconciliation, problems, screenshots };
  },

  async 'operator'(browser) {
    const { page, problems } = await open(browser, '#/operator');
    await page.getByTestId('paused-token').waitFor();
    await page.getByLabel('Model', { exact: true }).fill(config.model);
    await page.getByLabel('Input rate (base units per 1M tokens)').fill(config.input);
    await page.getByLabel('Output rate (base units per 1M tokens)').fill(config.output);
    await page.getByLabel('Tier', { exact: true }).selectOption(config.tier);
    await page.getByRole('button', { name: 'Set rate' }).click();
    const status = await done(page, 'rate-status');
    const first = page.locator('[data-testid="rate-history"] tbody tr').first();
    await page.waitForFunction((m) => document.querySelector('[data-testid="rate-history"] tbody tr')?.getAttribute('data-model') === m, config.model);
    const cells = await first.locator('td').allInnerTexts();
    const nodes = await page.locator('[data-testid="nodes-table"] tbody tr').count();
    const shortfalls = await page.getByTestId('shortfalls').locator('[data-testid="no-shortfalls"], [data-testid="shortfalls-table"]').innerText();
    const screenshots = [await shot(page, 'operator-rate')];
    // A node registered, then retired.
    await page.getByLabel('Node key (address)').fill(config.node);
    await page.getByLabel('Endpoint (http(s) URL)').fill(config.endpoint);
    await page.getByLabel('Node tier').selectOption('regional');
    await page.getByLabel('Region', { exact: true }).fill('eu-test');
    await page.getByRole('button', { name: 'Register node' }).click();
    const registered = await done(page, 'node-status');
    const row = page.locator(`[data-testid="nodes-table"] tr[data-node="${config.node}"]`);
    const before = await row.getAttribute('data-status');
    await row.getByRole('button', { name: 'Retire' }).click();
    const retired = await done(page, 'node-status', registered);
    await page.locator(`[data-testid="nodes-table"] tr[data-node="${config.node}"][data-status="retired"]`).waitFor();
    screenshots.push(await shot(page, 'operator-nodes'));
    // Pause the settlement contract, then unpause it.
    const settlement = page.getByTestId('paused-settlement');
    await settlement.getByRole('button', { name: 'Pause' }).click();
    const paused = await done(page, 'pause-status');
    await settlement.getByText('Settlement: paused').waitFor();
    const whilePaused = await settlement.innerText();
    await settlement.getByRole('button', { name: 'Unpause' }).click();
    const unpaused = await done(page, 'pause-status', paused);
    await settlement.getByText('Settlement: running').waitFor();
    return {
      pause: { paused, whilePaused, unpaused },
      status, history: cells, history_rows: await page.locator('[data-testid="rate-history"] tbody tr').count(), nodes, shortfalls,
      node: { registered, before, retired, row: await row.innerText() }, problems, screenshots,
    };
  },
};

const browser = await launchChromium();
let code = 0;
try {
  const run = steps[step];
  if (run === undefined) throw new Error(`no step ${step}: one of ${Object.keys(steps).join(', ')}`);
  const result = await run(browser);
  await writeFile(join(config.out, `${step}${config.label ? `-${config.label}` : ''}.json`), JSON.stringify(result, null, 2));
  process.stdout.write(`${JSON.stringify(result)}\n`);
} catch (error) {
  process.stderr.write(`${step} failed: ${error.stack ?? error}\n`);
  code = 1;
} finally {
  await browser.close();
}
process.exit(code);
