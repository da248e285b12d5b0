/** The portal's sections and hash routing (`#/enterprise`): static hosting needs no server-side rewrites. */

import { useEffect, useState } from 'preact/hooks';

export interface Section {
  id: 'enterprise' | 'developer' | 'auditor' | 'operator';
  title: string;
  summary: string;
}

export const SECTIONS: readonly Section[] = [
  { id: 'enterprise', title: 'Enterprise', summary: 'Buy compute tokens, hold them in escrow and give developer keys budgets.' },
  { id: 'developer', title: 'Developer', summary: 'See your budgets and usage, and sign calls to the API.' },
  { id: 'auditor', title: 'Auditor', summary: 'Check settled batches against the chain, in this browser.' },
  { id: 'operator', title: 'Operator', summary: 'Publish rates, register nodes and manage the allowlist.' },
];

export type RouteId = Section['id'] | 'home' | 'not-found';

export function routeOf(hash: string): RouteId {
  const path = hash.replace(/^#\/?/, '').split('?')[0]!.replace(/\/+$/, '');
  if (path === '') return 'home';
  return SECTIONS.find((s) => s.id === path)?.id ?? 'not-found';
}

export function hrefOf(id: Section['id'] | 'home'): string {
  return id === 'home' ? '#/' : `#/${id}`;
}

/** The current route, following `hashchange`. */
export function useRoute(): RouteId {
  const [route, setRoute] = useState<RouteId>(() => routeOf(window.location.hash));
  useEffect(() => {
    const follow = () => setRoute(routeOf(window.location.hash));
    window.addEventListener('hashchange', follow);
    return () => window.removeEventListener('hashchange', follow);
  }, []);
  return route;
}
