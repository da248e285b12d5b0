"""The portal's page weight, and its load time from a running Sluice service.

    .venv/bin/python scripts/bench_portal.py [--api http://127.0.0.1:8000] [--runs 10] [--json PATH]

Page weight: every file of portal/dist (build it first: `make setup`), in bytes and gzip -9 bytes. With
--api (a running stack, e.g. `sluice up`): loads `<api>/portal/` --runs times in fresh headless Chromium
contexts (cold cache, no wallet; /usr/bin/chromium or SLUICE_CHROMIUM) and prints the median and worst
DOMContentLoaded, load event and time until the discovery document is rendered, with the bytes
transferred (what the service sent, gzip included) and decoded.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DIST = REPO / "portal" / "dist"


def weight() -> list[dict[str, Any]]:
    if not (DIST / "index.html").is_file():
        raise SystemExit(f"{DIST} holds no build: run make setup (or npm --prefix portal run build)")
    return [{"file": str(f.relative_to(DIST)), "bytes": f.stat().st_size,
             "gzip_bytes": len(gzip.compress(f.read_bytes(), compresslevel=9, mtime=0))}
            for f in sorted(DIST.rglob("*")) if f.is_file()]


def loads(api: str, runs: int) -> list[dict[str, float]]:
    done = subprocess.run(["node", "tests/bench-load.mjs", api.rstrip("/") + "/portal/", str(runs)],
                          cwd=REPO / "portal", capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"loading the portal failed:\n{done.stderr}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", help="a running service's base URL (omit: page weight only)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    files = weight()
    print(f"{'file':<40} {'bytes':>10} {'gzip -9':>10}")
    for f in files:
        print(f"{f['file']:<40} {f['bytes']:>10,} {f['gzip_bytes']:>10,}")
    total = {"bytes": sum(f["bytes"] for f in files), "gzip_bytes": sum(f["gzip_bytes"] for f in files)}
    print(f"{'total':<40} {total['bytes']:>10,} {total['gzip_bytes']:>10,}")
    result: dict[str, Any] = {"files": files, "total": total}
    if args.api:
        rows = loads(args.api, args.runs)
        summary = {}
        for key in ("dom_content_loaded_ms", "load_ms", "discovery_rendered_ms", "transferred_bytes",
                    "decoded_bytes", "requests"):
            values = [float(r[key]) for r in rows]
            summary[key] = {"median": statistics.median(values), "max": max(values)}
        print(f"\n{args.runs} cold loads of {args.api}/portal/ (median / worst):")
        for key, figures in summary.items():
            print(f"  {key:<24} {figures['median']:>10,.0f} {figures['max']:>10,.0f}")
        result |= {"api": args.api, "runs": rows, "summary": summary}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
