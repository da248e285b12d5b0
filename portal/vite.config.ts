import { defineConfig } from 'vite';

// The portal is a static shell: relative asset URLs, so the service can serve it under any path prefix.
// `npm run dev` forwards discovery and the API to a running service (SLUICE_API_URL, default the embedded
// stack's http://127.0.0.1:8000).
const api = process.env.SLUICE_API_URL ?? 'http://127.0.0.1:8000';

export default defineConfig({
  base: './',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  // One copy of viem, whether imported here or by @sluice/client (a linked local package).
  resolve: { dedupe: ['viem', 'preact'] },
  build: {
    outDir: 'dist',
    target: 'es2022',
    assetsInlineLimit: 0,
    sourcemap: false,
    reportCompressedSize: true,
  },
  server: {
    proxy: {
      '/.well-known': api,
      '/v1': api,
      '/audit': api,
    },
  },
});
