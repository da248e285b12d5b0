// A real Anvil chain for browser tests: the project's pinned binary, zero gas price like the embedded
// stack, on a port the OS picks.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/** The pinned Anvil (`@foundry-rs/anvil-linux-amd64` in the repository root), or SLUICE_ANVIL_BIN. */
export function anvilBinary() {
  if (process.env.SLUICE_ANVIL_BIN) return process.env.SLUICE_ANVIL_BIN;
  const require = createRequire(import.meta.url);
  let pkg;
  try {
    pkg = require.resolve('@foundry-rs/anvil-linux-amd64/package.json');
  } catch {
    throw new Error('Anvil is not installed: run `npm ci` in the repository root, or set SLUICE_ANVIL_BIN');
  }
  const binary = join(dirname(pkg), 'bin', 'anvil');
  if (!existsSync(binary)) throw new Error(`${binary} is missing: run \`npm ci\` in the repository root`);
  return binary;
}

/** One JSON-RPC call; an error answer throws with its code. */
export async function rpc(url, method, params = []) {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
  });
  const answer = await response.json();
  if (answer.error) throw Object.assign(new Error(answer.error.message), { code: answer.error.code, data: answer.error.data });
  return answer.result;
}

/** Start Anvil; resolves once it answers `eth_chainId`. */
export async function startAnvil({ chainId = 31337, timeoutMs = 20_000 } = {}) {
  const child = spawn(
    anvilBinary(),
    [
      '--host', '127.0.0.1',
      '--port', '0',
      '--chain-id', String(chainId),
      '--gas-price', '0',
      '--block-base-fee-per-gas', '0',
      '--disable-min-priority-fee',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`Anvil did not start in ${timeoutMs} ms:\n${output}`)), timeoutMs);
    const read = (chunk) => {
      output += chunk;
      const match = /Listening on (127\.0\.0\.1:\d+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(`http://${match[1]}`);
      }
    };
    child.stdout.setEncoding('utf8').on('data', read);
    child.stderr.setEncoding('utf8').on('data', read);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`Anvil exited with ${code}:\n${output}`));
    });
  });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (Number(await rpc(url, 'eth_chainId')) === chainId) break;
    } catch (error) {
      if (Date.now() > deadline) throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    url,
    chainId,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}
