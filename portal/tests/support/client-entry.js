// The whole client, as a browser bundle for tests (see client-bundle.mjs).
export * from '@sluice/client';
