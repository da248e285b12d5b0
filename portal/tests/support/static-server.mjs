// Serves the built portal (portal/dist) the way the service will: static files, plus the discovery document
// at /.well-known/sluice.json and, for tests, handlers of other paths (`routes`: path -> (request, body) ->
// { status, headers, body }) and extra static directories (`mounts`: prefix -> directory). Loopback only, on
// a port the OS picks.

import { readFile, stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join, normalize, sep } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.woff2': 'font/woff2',
};

export async function serveStatic(root, { discovery, routes = {}, mounts = {} } = {}) {
  const requests = [];
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
    requests.push(path);
    if (path === '/.well-known/sluice.json' && discovery !== undefined) {
      res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
      res.end(JSON.stringify(discovery));
      return;
    }
    const route = routes[path];
    if (route !== undefined) {
      const chunks = [];
      for await (const chunk of req) chunks.push(chunk);
      const answer = await route(req, Buffer.concat(chunks));
      res.writeHead(answer.status ?? 200, { 'Content-Type': 'application/json', ...answer.headers });
      res.end(typeof answer.body === 'string' ? answer.body : JSON.stringify(answer.body));
      return;
    }
    const prefix = Object.keys(mounts).find((p) => path.startsWith(p));
    const base = prefix === undefined ? root : mounts[prefix];
    const rest = prefix === undefined ? path : path.slice(prefix.length - 1);
    const file = normalize(join(base, rest === '/' ? 'index.html' : rest));
    if (!file.startsWith(base + sep)) {
      res.writeHead(403).end();
      return;
    }
    try {
      if (!(await stat(file)).isFile()) throw new Error('not a file');
      const body = await readFile(file);
      res.writeHead(200, { 'Content-Type': TYPES[extname(file)] ?? 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404, { 'Content-Type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}
