"""Starting vLLM for the agent."""

from __future__ import annotations

import re

import pytest

from inference_node.agent.errors import VllmNotInstalled
from inference_node.agent.launcher import launch_vllm
from ledger.stack.probes import free_port


def test_launch_vllm_names_the_extra_to_install() -> None:
    with pytest.raises(VllmNotInstalled, match=re.escape("pip install 'sluice[vllm]'")):
        launch_vllm("meta-llama/Llama-3.1-8B-Instruct", free_port())
