// @sluice/client bundled for the browser by Vite, as an app would bundle it, so tests can run the client
// itself in the page (`await import('/__client__/client.js')`).

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { build } from 'vite';

const ENTRY = join(dirname(fileURLToPath(import.meta.url)), 'client-entry.js');

export async function bundleClient() {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-client-bundle-'));
  await build({
    root: dirname(ENTRY),
    configFile: false,
    logLevel: 'silent',
    resolve: { dedupe: ['viem'] },
    build: {
      outDir: dir,
      emptyOutDir: true,
      target: 'es2022',
      lib: { entry: ENTRY, formats: ['es'], fileName: () => 'client.js' },
    },
  });
  return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
}
