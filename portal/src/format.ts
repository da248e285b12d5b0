/** Amounts as text: exact, from bigint base units, never through a float. */

import { formatAmount, formatTokens } from '@sluice/client';

/** Whole tokens with thousands separators ("1,234.5"); the fraction is kept exactly. */
export function groupedTokens(units: bigint): string {
  return group(formatTokens(units));
}

export function formatUnits(units: bigint, decimals: number): string {
  return group(formatAmount(units, decimals));
}

function group(text: string): string {
  const [whole = '', fraction] = text.split('.');
  const sign = whole.startsWith('-') ? '-' : '';
  const digits = sign ? whole.slice(1) : whole;
  const grouped = digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return fraction === undefined ? `${sign}${grouped}` : `${sign}${grouped}.${fraction}`;
}

/** A unix time (seconds) as an ISO date-time in UTC, and how far away it is. */
export function describeTime(seconds: bigint | number, now: number = Date.now()): string {
  const ms = Number(seconds) * 1000;
  const iso = new Date(ms).toISOString().replace('.000Z', 'Z');
  const delta = Math.round((ms - now) / 1000);
  if (Math.abs(delta) < 5) return `${iso} (now)`;
  return delta > 0 ? `${iso} (in ${span(delta)})` : `${iso} (${span(-delta)} ago)`;
}

function span(seconds: number): string {
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} days`;
}

/** RFC 4180 CSV: every field quoted when it needs to be. */
export function toCsv(header: readonly string[], rows: readonly (readonly (string | number | bigint | null)[])[]): string {
  const cell = (v: string | number | bigint | null) => {
    const text = v === null ? '' : String(v);
    return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  };
  return [header, ...rows].map((row) => row.map(cell).join(',')).join('\r\n') + '\r\n';
}
