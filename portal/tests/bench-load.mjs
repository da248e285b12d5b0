// Load the portal served by a running Sluice service RUNS times in fresh headless Chromium contexts (a cold
// cache each, no wallet) and print one JSON line per load: navigation timings and bytes transferred.
//
//     node tests/bench-load.mjs http://127.0.0.1:8000/portal/ 10      (scripts/bench_portal.py runs it)

import { launchChromium } from './support/browser.mjs';

const [url, runs = '10'] = process.argv.slice(2);
const browser = await launchChromium();
try {
  for (let i = 0; i < Number(runs); i += 1) {
    const context = await browser.newContext();
    const page = await context.newPage();
    const started = performance.now();
    await page.goto(url);
    // Discovery read and rendered: the footer names the chain.
    await page.locator('.site-footer dd').first().waitFor();
    const ready = performance.now() - started;
    const timing = await page.evaluate(() => {
      const n = performance.getEntriesByType('navigation')[0];
      const resources = performance.getEntriesByType('resource');
      return {
        dom_content_loaded_ms: n.domContentLoadedEventEnd,
        load_ms: n.loadEventEnd,
        transferred_bytes: n.transferSize + resources.reduce((sum, r) => sum + r.transferSize, 0),
        decoded_bytes: n.decodedBodySize + resources.reduce((sum, r) => sum + r.decodedBodySize, 0),
        requests: 1 + resources.length,
      };
    });
    process.stdout.write(`${JSON.stringify({ ...timing, discovery_rendered_ms: ready })}\n`);
    await context.close();
  }
} finally {
  await browser.close();
}
