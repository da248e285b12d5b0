"""The web portal's static files at /portal/ (built by `make setup` into portal/dist).

`index.html` is revalidated on every load (`Cache-Control: no-cache`), so a new build shows at once; the
files under `assets/` carry a content hash in their names and are cached for a year as immutable, and are
sent gzipped (from 1 KiB) to browsers that accept it (compressed once per file and kept in memory). When the
portal has not been built, /portal/ answers 404 with a page saying how to build it. Nothing outside the
build directory is ever served (the path is resolved and must stay inside it).
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from html import escape
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

PORTAL_PATH = "/portal/"
# The repository's portal build: redemption/ sits next to portal/ in the source tree.
DEFAULT_DIST = Path(__file__).resolve().parents[2] / "portal" / "dist"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sluice portal not built</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; line-height: 1.5">
<h1>The Sluice portal is not built</h1>
<p>This service serves the web portal from <code>{dist}</code>, which holds no <code>index.html</code>.</p>
<p>Build it from the repository root with <code>make setup</code>, or step by step:</p>
<pre>npm ci --prefix clients/js
npm ci --prefix portal
npm --prefix portal run build</pre>
<p>then reload this page (no restart needed). Set <code>SLUICE_PORTAL_DIR</code> to serve a build kept elsewhere.</p>
</body></html>
"""

NOT_FOUND = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Not found</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto">
<h1>Not found</h1><p>The portal has no file <code>{path}</code>. <a href="/portal/">Open the portal</a>.</p>
</body></html>
"""


COMPRESSIBLE = frozenset({".js", ".css", ".svg", ".json", ".html", ".map"})


@lru_cache(maxsize=64)
def _gzipped(path: Path, mtime_ns: int) -> bytes:
    """The file gzipped (cached per path and modification time, so a rebuild is picked up)."""
    return gzip.compress(path.read_bytes(), compresslevel=9, mtime=0)


def install_portal(app: FastAPI, dist: Path | None) -> None:
    """Serve `dist` (default: the repository's portal/dist) under /portal/."""
    root = (dist or DEFAULT_DIST).resolve()

    async def redirect(request: Request) -> Response:
        return RedirectResponse(PORTAL_PATH, status_code=308)

    async def serve(request: Request) -> Response:
        relative = request.path_params.get("path", "") or "index.html"
        index = root / "index.html"
        if not index.is_file():
            return HTMLResponse(NOT_BUILT.format(dist=escape(str(root))), status_code=404,
                                headers={"Cache-Control": REVALIDATE})
        target = (root / relative).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return HTMLResponse(NOT_FOUND.format(path=escape(relative)), status_code=404)
        if target.parent != root / "assets":
            return FileResponse(target, headers={"Cache-Control": REVALIDATE})
        headers = {"Cache-Control": IMMUTABLE, "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", "") and target.suffix in COMPRESSIBLE \
                and target.stat().st_size >= 1024:
            body = _gzipped(target, target.stat().st_mtime_ns)
            media = FileResponse(target).media_type
            return Response(body, media_type=media, headers={**headers, "Content-Encoding": "gzip"})
        return FileResponse(target, headers=headers)

    app.add_route("/portal", redirect, methods=["GET"], include_in_schema=False)
    app.add_route(PORTAL_PATH, serve, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_route(PORTAL_PATH + "{path:path}", serve, methods=["GET", "HEAD"], include_in_schema=False)
