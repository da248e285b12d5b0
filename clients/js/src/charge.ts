/**
 * What a call cost: the `Sluice-Job-Id` / `Sluice-Cost` headers of a response, or for a stream the
 * `"sluice": {"job_id", "cost"}` member of its final usage chunk; and a reader of the event stream itself.
 */

import type { Hex } from 'viem';

import { baseUnits } from './amounts.js';
import { HEADER_COST, HEADER_JOB_ID } from './call.js';
import { apiError, errorEnvelope, SluiceProtocolError } from './errors.js';

/** A metered job and what it was charged in base units (null while a stream has not reported it yet). */
export interface Charge {
  jobId: Hex;
  cost: bigint | null;
}

/** The charge a response reports in its headers (a stream reports only its job id up front). */
export function responseCharge(response: Response): Charge | undefined {
  const jobId = response.headers.get(HEADER_JOB_ID);
  if (jobId === null) return undefined;
  const cost = response.headers.get(HEADER_COST);
  return { jobId: jobId as Hex, cost: cost === null ? null : baseUnits(cost.trim()) };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The charge in a stream chunk (the final usage chunk carries `"sluice": {"job_id", "cost"}`), if any. */
export function chunkCharge(chunk: unknown): Charge | undefined {
  if (!isRecord(chunk) || !isRecord(chunk.sluice)) return undefined;
  const { job_id: jobId, cost } = chunk.sluice;
  if (typeof jobId !== 'string' || typeof cost !== 'string') {
    throw new SluiceProtocolError('a stream chunk\'s "sluice" member must be {"job_id": "0x…", "cost": "<decimal>"}');
  }
  return { jobId: jobId as Hex, cost: baseUnits(cost) };
}

/**
 * The JSON chunks of a server-sent event stream (`data: {...}` lines) up to `data: [DONE]`. A chunk that is the
 * service's error envelope (a stream the node broke: code `upstream_dropped`) is thrown as a SluiceApiError.
 */
export async function* readEventStream(response: Response): AsyncGenerator<unknown, void, undefined> {
  if (response.body === null) return;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = '';
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (value !== undefined) buffered += value;
      let newline: number;
      while ((newline = buffered.search(/\r?\n/)) >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(buffered[newline] === '\r' ? newline + 2 : newline + 1);
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') return;
        let chunk: unknown;
        try {
          chunk = JSON.parse(data);
        } catch {
          throw new SluiceProtocolError(`a stream chunk is not JSON: ${data.slice(0, 120)}`);
        }
        const envelope = errorEnvelope(chunk);
        if (envelope !== undefined && !(isRecord(chunk) && Array.isArray(chunk.choices))) {
          throw apiError(envelope.code === 'upstream_dropped' ? 502 : response.status, chunk);
        }
        yield chunk;
      }
      if (done) return;
    }
  } finally {
    // Stopping early (a break in the caller's loop, an error) cancels the body, closing the connection.
    await reader.cancel().catch(() => undefined);
  }
}
