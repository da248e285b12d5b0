"""`sluice node run --help` and `sluice node sim --help` name themselves, the node key and an example."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sluice(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from ledger.cli.app import main; main()", *args], cwd=ROOT,
                          env={**os.environ, "COLUMNS": "80", **env}, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_sim_help_is_sluice_node_sims() -> None:
    out = sluice("node", "sim", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: sluice node sim [-h] [--host HOST] [--port PORT]")
    assert "inference_node.sim_main" not in out.stdout.split("\n\n")[0]
    assert "sluice node sim --port 8100 --config-json" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80


def test_agent_help_names_the_node_key_and_vllm_serve() -> None:
    out = sluice("node", "run", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: sluice node run [-h]")
    assert "SLUICE_NODE_KEY  required: the node's hex private key (0x + 64 hex digits)." in out.stdout
    assert "vllm serve meta-llama/Llama-3.1-8B-Instruct --port 8000 &" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 80


def test_agent_without_a_node_key_says_what_to_set() -> None:
    out = sluice("node", "run", "--vllm-url", "http://127.0.0.1:1", SLUICE_NODE_KEY="")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: set SLUICE_NODE_KEY to the node's hex private key (0x + 64 hex digits); "
        "`sluice node run --help` says more")
