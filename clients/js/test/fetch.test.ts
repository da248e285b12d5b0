// The signing fetch, SluiceClient and the OpenAI Node SDK against a real HTTP server on loopback that checks
// every call the way the redemption service does (headers, deadline window, body hash, low-s signature).

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import OpenAI from 'openai';
import { type Address, type Hex, keccak256, recoverTypedDataAddress } from 'viem';
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';

import {
  chunkCharge,
  createSigningFetch,
  type Eip1193Provider,
  eip1193Signer,
  localSigner,
  normalizeSignature,
  readEventStream,
  responseCharge,
  SECP256K1_N,
  SluiceAuthenticationError,
  SluiceClient,
  SluiceError,
  SluicePaymentRequiredError,
  SluicePermissionError,
  SluiceSignatureError,
  SluiceUpstreamError,
  SluiceWalletError,
} from '../src/index.js';

const SETTLEMENT = '0xDc64a140Aa3E981100a9becA4E685f962f0cF6C9';
const MAX_DEADLINE = 300;
const developer = privateKeyToAccount(generatePrivateKey());
const enterprise = privateKeyToAccount(generatePrivateKey());
const auditor = privateKeyToAccount(generatePrivateKey());
const JOB_ID = `0x${'a1'.repeat(32)}`;

interface Verified {
  method: string;
  path: string;
  spender: Address;
  payer: Address;
  maxCost: bigint;
  nonce: bigint;
  body: Buffer;
}

let server: Server;
let baseUrl: string;
let discoveryHits = 0;
let calls: Verified[] = [];

function envelope(res: ServerResponse, status: number, code: string, message: string, param: string | null = null) {
  const type = { 401: 'authentication_error', 402: 'insufficient_quota', 403: 'permission_error' }[status] ?? 'x';
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ error: { message, type, param, code } }));
}

async function verify(req: IncomingMessage, body: Buffer): Promise<Verified | string> {
  const h = (name: string) => req.headers[name.toLowerCase()] as string | undefined;
  const names = ['Sluice-Payer', 'Sluice-Max-Cost', 'Sluice-Nonce', 'Sluice-Deadline', 'Sluice-Signature'];
  if (names.some((n) => h(n) === undefined)) return 'missing_signature';
  if (!/^[0-9]{1,78}$/.test(h('Sluice-Nonce')!) || !/^[0-9]{1,78}$/.test(h('Sluice-Max-Cost')!)) {
    return 'invalid_header';
  }
  const deadline = BigInt(h('Sluice-Deadline')!);
  const now = BigInt(Math.floor(Date.now() / 1000));
  if (deadline < now) return 'signature_expired';
  if (deadline > now + BigInt(MAX_DEADLINE)) return 'deadline_too_far';
  const signature = h('Sluice-Signature') as Hex;
  if (!/^0x[0-9a-f]{130}$/i.test(signature) || BigInt(`0x${signature.slice(66, 130)}`) > SECP256K1_N / 2n) {
    return 'invalid_signature';
  }
  const message = {
    payer: h('Sluice-Payer') as Address,
    bodyHash: keccak256(body),
    maxCost: BigInt(h('Sluice-Max-Cost')!),
    nonce: BigInt(h('Sluice-Nonce')!),
    deadline,
  };
  const spender = await recoverTypedDataAddress({
    domain: { name: 'Sluice', version: '1', chainId: 31337, verifyingContract: SETTLEMENT },
    types: {
      Redemption: [
        { name: 'payer', type: 'address' },
        { name: 'bodyHash', type: 'bytes32' },
        { name: 'maxCost', type: 'uint256' },
        { name: 'nonce', type: 'uint256' },
        { name: 'deadline', type: 'uint256' },
      ],
    },
    primaryType: 'Redemption',
    message,
    signature,
  });
  if (spender !== message.payer && !(spender === developer.address && message.payer === enterprise.address)) {
    return 'unknown_signer';
  }
  return {
    method: req.method!,
    path: req.url!,
    spender,
    payer: message.payer,
    maxCost: message.maxCost,
    nonce: message.nonce,
    body,
  };
}

async function handle(req: IncomingMessage, res: ServerResponse) {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const body = Buffer.concat(chunks);
  const path = req.url!.split('?')[0];
  if (path === '/.well-known/sluice.json') {
    discoveryHits += 1;
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(
      JSON.stringify({
        chain_id: 31337,
        rpc_url: 'http://127.0.0.1:8545',
        contracts: {
          token: '0x5FbDB2315678afecb367f032d93F642f64180aa3',
          sale: '0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512',
          rate_card: '0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0',
          settlement: SETTLEMENT,
          payment_token: '0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9',
        },
        eip712_domain: { name: 'Sluice', version: '1', chainId: 31337, verifyingContract: SETTLEMENT },
        max_deadline_seconds: MAX_DEADLINE,
      }),
    );
    return;
  }
  const verified = await verify(req, body);
  if (typeof verified === 'string') {
    envelope(res, 401, verified === 'unknown_signer' ? 'invalid_signature' : verified, `refused: ${verified}`);
    return;
  }
  calls.push(verified);
  if (path === '/v1/chat/completions') {
    const request = JSON.parse(body.toString('utf8'));
    if (verified.maxCost < 1000n) {
      envelope(res, 402, 'insufficient_escrow', 'top up the payer', 'Sluice-Max-Cost');
      return;
    }
    const usage = { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 };
    if (!request.stream) {
      res.writeHead(200, { 'Content-Type': 'application/json', 'Sluice-Job-Id': JOB_ID, 'Sluice-Cost': '170' });
      res.end(
        JSON.stringify({
          id: 'cmpl-1',
          object: 'chat.completion',
          created: 1,
          model: request.model,
          choices: [{ index: 0, message: { role: 'assistant', content: 'Hi!' }, finish_reason: 'stop' }],
          usage,
        }),
      );
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Sluice-Job-Id': JOB_ID });
    const chunk = (delta: object, extra: object = {}) => ({
      id: 'cmpl-2',
      object: 'chat.completion.chunk',
      created: 1,
      model: request.model,
      choices: [{ index: 0, delta, finish_reason: null }],
      ...extra,
    });
    res.write(`data: ${JSON.stringify(chunk({ role: 'assistant', content: 'Hi' }))}\n\n`);
    res.write(`data: ${JSON.stringify(chunk({ content: '!' }))}\r\n\r\n`);
    if (request.messages[0].content === 'break') {
      res.write(`data: ${JSON.stringify({ error: { message: 'the node dropped the stream', type: 'server_error', param: null, code: 'upstream_dropped' } })}\n\n`);
    } else {
      const final = { id: 'cmpl-2', object: 'chat.completion.chunk', created: 1, model: request.model, choices: [] };
      res.write(`data: ${JSON.stringify({ ...final, usage, sluice: { job_id: JOB_ID, cost: '170' } })}\n\n`);
    }
    res.end('data: [DONE]\n\n');
    return;
  }
  if (path === '/v1/budget') {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ payer: enterprise.address, spender: verified.spender, balance_available: '5000' }));
    return;
  }
  if (path === '/audit/nodes') {
    if (verified.spender !== auditor.address) {
      envelope(res, 403, 'not_auditor', 'the signer does not hold AUDITOR_ROLE');
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ nodes: [] }));
    return;
  }
  envelope(res, 404, 'not_found', 'Not Found');
}

beforeAll(async () => {
  server = createServer((req, res) => {
    handle(req, res).catch((error) => {
      res.writeHead(500);
      res.end(String(error));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
});

beforeEach(() => {
  calls = [];
  discoveryHits = 0;
});

const chatBody = { model: 'tiny-chat', messages: [{ role: 'user' as const, content: 'Hello' }], max_tokens: 4 };

describe('the OpenAI Node SDK with the signing fetch', () => {
  const openai = (maxCost: bigint, signer = localSigner(developer), payer: Address = enterprise.address) =>
    new OpenAI({
      baseURL: `${baseUrl}/v1`,
      apiKey: 'unused',
      maxRetries: 0,
      fetch: createSigningFetch({ signer, payer, maxCost }),
    });

  it('signs a completion and reports its job id and cost', async () => {
    const { data, response } = await openai(10n ** 17n).chat.completions.create(chatBody).withResponse();
    expect(data.choices[0]?.message.content).toBe('Hi!');
    expect(responseCharge(response)).toEqual({ jobId: JOB_ID, cost: 170n });
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ spender: developer.address, payer: enterprise.address, maxCost: 10n ** 17n });
    expect(JSON.parse(calls[0]!.body.toString())).toEqual(chatBody);
    expect(calls[0]!.nonce < 2n ** 128n).toBe(true);
  });

  it('streams, and the final usage chunk carries the charge', async () => {
    const stream = await openai(10n ** 17n).chat.completions.create({
      ...chatBody,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    const charges = [];
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      const charge = chunkCharge(chunk);
      if (charge !== undefined) charges.push(charge);
    }
    expect(text).toBe('Hi!');
    expect(charges).toEqual([{ jobId: JOB_ID, cost: 170n }]);
  });

  it('passes the OpenAI error envelope through: status and code', async () => {
    const refused = await openai(999n)
      .chat.completions.create(chatBody)
      .catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(OpenAI.APIError);
    expect((refused as InstanceType<typeof OpenAI.APIError>).status).toBe(402);
    expect((refused as InstanceType<typeof OpenAI.APIError>).code).toBe('insufficient_escrow');
  });

  it('fetches discovery once per origin and signs a fresh nonce per call', async () => {
    const client = openai(10n ** 17n);
    await client.chat.completions.create(chatBody);
    await client.chat.completions.create(chatBody);
    expect(discoveryHits).toBe(1);
    expect(calls[0]!.nonce).not.toBe(calls[1]!.nonce);
  });
});

describe('SluiceClient', () => {
  const client = (signer = localSigner(developer), payer?: Address) =>
    new SluiceClient({ baseUrl, signer, ...(payer ? { payer } : {}), maxCost: 10n ** 17n });

  it('signs GETs with an empty body and maxCost 0', async () => {
    const budget = await client().budget<{ balance_available: string }>({ payer: enterprise.address });
    expect(budget.balance_available).toBe('5000');
    expect(calls[0]).toMatchObject({ method: 'GET', path: `/v1/budget?payer=${enterprise.address}`, maxCost: 0n });
    expect(calls[0]!.body.length).toBe(0);
    expect(calls[0]!.payer).toBe(developer.address);
  });

  it('posts JSON with a per-call maxCost and returns the charge', async () => {
    const result = await client(localSigner(developer), enterprise.address).post('v1/chat/completions', chatBody, {
      maxCost: 5000n,
    });
    expect(result.charge).toEqual({ jobId: JOB_ID, cost: 170n });
    expect(calls[0]!.maxCost).toBe(5000n);
    expect(calls[0]!.payer).toBe(enterprise.address);
  });

  it('throws typed errors with status, code and param', async () => {
    const poor = await client(localSigner(developer), enterprise.address)
      .post('v1/chat/completions', chatBody, { maxCost: 10n })
      .catch((e: unknown) => e);
    expect(poor).toBeInstanceOf(SluicePaymentRequiredError);
    expect(poor).toMatchObject({ status: 402, code: 'insufficient_escrow', param: 'Sluice-Max-Cost' });
    const notAuditor = await client().auditNodes().catch((e: unknown) => e);
    expect(notAuditor).toBeInstanceOf(SluicePermissionError);
    expect(notAuditor).toMatchObject({ status: 403, code: 'not_auditor', type: 'permission_error' });
    expect(await client(localSigner(auditor)).auditNodes()).toEqual({ nodes: [] });
    // A payer that gave this key no budget: the signature is fine, the service refuses the signer.
    const stranger = await client(localSigner(privateKeyToAccount(generatePrivateKey())), enterprise.address)
      .budget({ payer: enterprise.address })
      .catch((e: unknown) => e);
    expect(stranger).toBeInstanceOf(SluiceAuthenticationError);
    expect(stranger).toMatchObject({ status: 401, code: 'invalid_signature' });
  });

  it('a billable call without a maxCost is refused before it is sent', async () => {
    const bare = new SluiceClient({ baseUrl, signer: localSigner(developer) });
    await expect(bare.post('v1/chat/completions', chatBody)).rejects.toThrow('give the signing fetch a maxCost');
    expect(calls).toHaveLength(0);
  });

  it('reads a raw stream and throws the mid-stream error envelope', async () => {
    const signed = client(localSigner(developer), enterprise.address).fetch;
    const body = (content: string) =>
      JSON.stringify({ ...chatBody, messages: [{ role: 'user', content }], stream: true });
    const ok = await signed(`${baseUrl}/v1/chat/completions`, { method: 'POST', body: body('Hello') });
    expect(responseCharge(ok)).toEqual({ jobId: JOB_ID, cost: null });
    const chunks = [];
    for await (const chunk of readEventStream(ok)) chunks.push(chunk);
    expect(chunks).toHaveLength(3);
    expect(chunkCharge(chunks[2])).toEqual({ jobId: JOB_ID, cost: 170n });
    const broken = await signed(`${baseUrl}/v1/chat/completions`, { method: 'POST', body: body('break') });
    const read = async () => {
      for await (const _ of readEventStream(broken)) void _;
    };
    await expect(read()).rejects.toBeInstanceOf(SluiceUpstreamError);
  });
});

describe('signing through an EIP-1193 wallet', () => {
  // A wallet as the page sees one: JSON-RPC requests, typed data as the v4 JSON string.
  function wallet(
    key = developer,
    behaviour: { highS?: boolean; signWith?: typeof developer; reject?: boolean; connected?: boolean } = {},
  ) {
    const seen: string[] = [];
    let connected = behaviour.connected ?? true;
    const provider: Eip1193Provider = {
      async request({ method, params }) {
        seen.push(method);
        if (method === 'eth_accounts') return connected ? [key.address.toLowerCase()] : [];
        if (method === 'eth_requestAccounts') {
          connected = true;
          return [key.address];
        }
        if (method !== 'eth_signTypedData_v4') throw Object.assign(new Error('unsupported'), { code: 4200 });
        if (behaviour.reject) throw Object.assign(new Error('User rejected the request.'), { code: 4001 });
        const [address, json] = params as [string, string];
        expect(address).toBe(key.address);
        const typed = JSON.parse(json);
        delete typed.types.EIP712Domain;
        let signature = await (behaviour.signWith ?? key).signTypedData(typed);
        if (behaviour.highS) {
          const s = BigInt(`0x${signature.slice(66, 130)}`);
          const v = Number.parseInt(signature.slice(130), 16);
          signature = `${signature.slice(0, 66)}${(SECP256K1_N - s).toString(16).padStart(64, '0')}${(v === 27 ? 28 : 27).toString(16)}` as Hex;
        }
        return signature;
      },
    };
    return { provider, seen };
  }

  const call = (signer: ReturnType<typeof eip1193Signer>) =>
    new SluiceClient({ baseUrl, signer, payer: enterprise.address, maxCost: 10n ** 17n }).post(
      'v1/chat/completions',
      chatBody,
    );

  it('signs with eth_signTypedData_v4 and the service accepts it', async () => {
    const { provider, seen } = wallet();
    const result = await call(eip1193Signer(provider));
    expect(result.charge?.cost).toBe(170n);
    expect(calls[0]!.spender).toBe(developer.address);
    // The account is read again just before signing: the user may have switched it in between.
    expect(seen).toEqual(['eth_accounts', 'eth_accounts', 'eth_signTypedData_v4']);
  });

  it('asks to connect when no account is connected', async () => {
    const { provider, seen } = wallet(developer, { connected: false });
    await call(eip1193Signer(provider));
    expect(seen).toEqual(['eth_accounts', 'eth_requestAccounts', 'eth_accounts', 'eth_signTypedData_v4']);
  });

  it('turns a high-s signature into its low-s twin', async () => {
    const { provider } = wallet(developer, { highS: true });
    await call(eip1193Signer(provider));
    expect(calls).toHaveLength(1);
    expect(calls[0]!.spender).toBe(developer.address);
    const sig = `0x${'11'.repeat(32)}${(SECP256K1_N - 5n).toString(16).padStart(64, '0')}1b` as Hex;
    expect(normalizeSignature(sig)).toBe(`0x${'11'.repeat(32)}${'0'.repeat(63)}51c`);
  });

  it('catches a wallet that signed with another account', async () => {
    const { provider } = wallet(developer, { signWith: auditor });
    await expect(call(eip1193Signer(provider))).rejects.toBeInstanceOf(SluiceSignatureError);
    expect(calls).toHaveLength(0);
  });

  it('reports a rejection with its EIP-1193 code', async () => {
    const { provider } = wallet(developer, { reject: true });
    const refused = await call(eip1193Signer(provider)).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(SluiceWalletError);
    expect(refused).toBeInstanceOf(SluiceError);
    expect(refused).toMatchObject({ code: 4001, message: 'eth_signTypedData_v4 failed: the user rejected the request' });
  });
});
