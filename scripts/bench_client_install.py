"""How long the light client takes to install into a fresh virtualenv, and how much it adds.

    .venv/bin/python scripts/bench_client_install.py [--json PATH]

Copies the distribution (pyproject.toml, README.md, the packages) into a temporary directory, then, in
fresh virtualenvs: `pip install .` from that source tree (what the README's developer journey runs), and
`pip install sluice-*.whl` from a wheel built beforehand (what a developer downloading a release runs).
Prints seconds, megabytes added to site-packages and the packages installed; with --json writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUIET = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def distribution(into: Path) -> Path:
    source = into / "sluice-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("ledger", "redemption", "inference_node"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return source


def install(into: Path, target: str) -> dict[str, object]:
    """A fresh virtualenv at `into`, then `pip install target` into it, timed and weighed."""
    started = time.monotonic()
    venv.create(into, with_pip=True)
    created = time.monotonic() - started
    python = str(into / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    before = size_mb(site)
    started = time.monotonic()
    subprocess.run([python, "-m", "pip", "install", "--quiet", target], check=True, env=QUIET, timeout=600)
    seconds = time.monotonic() - started
    listed = json.loads(subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True,
                                       text=True, check=True, env=QUIET).stdout)
    packages = sorted(p["name"].lower() for p in listed if p["name"] not in ("pip", "setuptools"))
    return {"virtualenv_s": round(created, 2), "install_s": round(seconds, 2),
            "added_mb": round(size_mb(site) - before, 1), "packages": packages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sluice-client-bench-") as tmp:
        root = Path(tmp)
        source = distribution(root)
        dist = root / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)],
                       check=True, env=QUIET, timeout=600, capture_output=True)
        (wheel,) = dist.glob("sluice-*.whl")
        figures = {"from_source": install(root / "venv-source", str(source)),
                   "from_wheel": install(root / "venv-wheel", str(wheel))}
    for how, f in figures.items():
        print(f"{how:12} virtualenv {f['virtualenv_s']:.1f} s, pip install {f['install_s']:.1f} s, "
              f"{f['added_mb']:.1f} MB added, {len(f['packages'])} packages: {', '.join(f['packages'])}")  # type: ignore[arg-type]
    if opts.json is not None:
        opts.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
