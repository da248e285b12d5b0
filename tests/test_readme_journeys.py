"""The README's journeys, run as written: every `<!-- journey: USER -->` shell block in README order, in one
shell session (variables carry from block to block), at the root of a copy of the checkout, against a fresh
embedded stack (`sluice up --detach` in a temporary SLUICE_HOME on free ports). A block followed by a
`<!-- journey-output -->` text block must print exactly that (`…` stands for anything within a line; a line
of `…` alone for any number of lines). The developer's blocks use a fresh virtualenv with only the light
client installed; there every server command must name the extra it needs and exit 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger.stack.probes import free_port, free_port_run

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- journey: (?P<user>[a-z-]+) -->\n```sh\n(?P<script>.*?)```\n"
                   r"(?:\n<!-- journey-output -->\n```text\n(?P<output>.*?)```\n)?", re.S)
USERS = {"operator", "enterprise", "developer", "auditor", "node-host"}
# Top-level commands that need the server extra; in the client-only install each names it and exits 2.
SERVER_COMMANDS = (["status"], ["up", "--detach"], ["wallet", "balance"], ["admin", "rates", "list"],
                   ["audit", "history"], ["node", "sim", "--help"], ["--help"], ["dev", "--help"])


@dataclass(frozen=True)
class Block:
    user: str
    script: str
    output: str | None


def journey_blocks(readme: str) -> list[Block]:
    return [Block(m["user"], m["script"], m["output"]) for m in BLOCK.finditer(readme)]


def matches(expected: str, actual: str) -> bool:
    """`actual` fits `expected` line by line: `…` is any text within a line, a line of `…` any lines."""
    pattern = []
    for line in expected.rstrip("\n").split("\n"):
        if line.strip() == "…":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(".*?".join(re.escape(part) for part in line.rstrip().split("…")) + r"[ \t]*\n")
    return re.fullmatch("".join(pattern), actual.rstrip("\n") + "\n") is not None


def test_the_matcher_takes_ellipses_as_wildcards() -> None:
    assert matches("job     0x…\nleft 4.9 of 0x…\n", "job     0xabc\nleft 4.9 of 0xdef   \n")
    assert matches("a\n…\nz\n", "a\nb\nc\nz\n") and matches("a\n…\nz\n", "a\nz\n")
    assert not matches("job 0x…\n", "job 1x2\n")
    assert not matches("a\nb\n", "a\nb\nc\n")


def test_every_user_has_a_journey_in_the_readme() -> None:
    blocks = journey_blocks((REPO / "README.md").read_text())
    assert {b.user for b in blocks} == USERS
    assert blocks[0].script.splitlines()[1].startswith("sluice up --detach")
    assert blocks[-1].script.strip() == "sluice down"


def _checkout(into: Path) -> Path:
    """A copy of the checkout's distribution, with the set-up `make setup` made (.venv, node_modules) linked in."""
    root = into / "checkout"
    root.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, root / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("ledger", "redemption", "inference_node"):
        shutil.copytree(REPO / package, root / package, ignore=ignore)
    for made in (".venv", "node_modules"):
        (root / made).symlink_to(REPO / made)
    return root


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


@pytest.mark.slow  # a whole stack, a client virtualenv and every journey: about 90 s
def test_the_readme_journeys_run_as_written(tmp_path: Path) -> None:
    blocks = journey_blocks((REPO / "README.md").read_text())
    root = _checkout(tmp_path)
    state = tmp_path / "shell.env"
    state.write_text("")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLUICE_", "VIRTUAL_ENV")) and k not in ("RPC_URL", "DATABASE_URL", "BROKER_URL")}
    env.update({"SLUICE_HOME": str(tmp_path / "home"), "SLUICE_CHAIN_PORT": str(free_port()),
                "SLUICE_API_PORT": str(free_port()), "SLUICE_NODE_BASE_PORT": str(free_port_run(4)),
                "SLUICE_WORKER_METRICS_PORT": str(free_port()), "COLUMNS": "80", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PATH": "/usr/local/bin:/usr/bin:/bin"})
    ran: list[str] = []
    try:
        for i, block in enumerate(blocks):
            # `set -a`: every variable a block sets is exported, so `export -p` hands it to the next block.
            script = f"set -a\n. {state}\nset -eo pipefail\ncd {root}\n{block.script}\nexport -p > {state}\n"
            started = time.monotonic()
            out = subprocess.run(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, timeout=600)  # one stream, in the order a terminal shows it
            seconds = time.monotonic() - started
            ran.append(f"[{block.user}] block {i} ({seconds:.1f} s): exit {out.returncode}")
            assert out.returncode == 0, f"{block.user} block {i} failed:\n{block.script}\n{out.stdout}"
            if block.output is not None:
                assert matches(block.output, out.stdout), (f"{block.user} block {i} printed:\n{out.stdout}\n"
                                                           f"the README shows:\n{block.output}")
            if "pip install" in block.script:
                client = root / "sluice-client"
                print(f"client-only install block: {seconds:.1f} s, virtualenv {_size_mb(client):.1f} MB")
        client = root / "sluice-client"
        listed = json.loads(subprocess.run([str(client / "bin" / "pip"), "list", "--format", "json"], env=env,
                                           capture_output=True, text=True, check=True).stdout)
        assert {p["name"].lower() for p in listed} - {"pip", "setuptools"} == {
            "sluice", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "typing_extensions", "coincurve",
            "pycryptodome"}
        for command in SERVER_COMMANDS:
            out = subprocess.run([str(client / "bin" / "sluice"), *command], env=env, capture_output=True, text=True,
                                 timeout=60)
            assert (out.returncode, out.stdout) == (2, ""), (command, out.stdout, out.stderr)
            assert "Install it with:  pip install 'sluice[server]'" in out.stderr, command
    finally:
        subprocess.run([str(REPO / ".venv" / "bin" / "sluice"), "down"], env=env, capture_output=True, timeout=120)
        print("\n".join(ran))
