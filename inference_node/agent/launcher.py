"""Starting a local ``vllm serve`` for the agent to front (:func:`launch_vllm`, needs ``sluice[vllm]``)."""

from __future__ import annotations

import http.client
import importlib.util
import logging
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from inference_node.agent.errors import VllmLaunchFailed, VllmNotInstalled

logger = logging.getLogger(__name__)


# Start-up polling of a local vLLM, before any event loop runs; never through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def launch_vllm(
    model: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    extra_args: Sequence[str] = (),
    startup_timeout: float = 1800.0,
) -> subprocess.Popen[bytes]:
    """Start `vllm serve MODEL --port PORT` and return once its /health answers 200.

    Model download and weight loading can take many minutes, hence the long default timeout.
    """
    if importlib.util.find_spec("vllm") is None:
        raise VllmNotInstalled(
            "vLLM is not installed in this environment; install it on the GPU host with: pip install 'sluice[vllm]'"
        )
    executable = shutil.which("vllm", path=str(Path(sys.executable).parent)) or shutil.which("vllm")
    if executable is None:
        raise VllmNotInstalled("the `vllm` command is missing; reinstall with: pip install 'sluice[vllm]'")
    command = [executable, "serve", model, "--host", host, "--port", str(port), *extra_args]
    logger.info("starting %s", " ".join(command))
    process = subprocess.Popen(command)
    url = f"http://{host}:{port}/health"
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise VllmLaunchFailed(f"`vllm serve {model}` exited with status {code} before becoming healthy")
        try:
            with _DIRECT.open(url, timeout=2.0) as response:
                if response.status == 200:
                    return process
        except (OSError, http.client.HTTPException):  # urllib's URLError and HTTPError (non-2xx) are OSErrors
            pass
        time.sleep(0.5)
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    raise VllmLaunchFailed(f"`vllm serve {model}` was not healthy on {url} within {startup_timeout:.0f} s")
