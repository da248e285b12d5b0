"""The agent's configuration and the settings its process reads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from inference_node.agent.config import NODE_KEY_ENV, AgentConfig, AgentSettings
from inference_node.agent_main import parse_args


def test_config_requires_a_service_or_the_dispatch_settings() -> None:
    key = "0x" + "a1" * 32
    with pytest.raises(ValueError, match="standalone"):
        AgentConfig.model_validate({"node_key": key})
    with pytest.raises(ValueError, match="public_url"):
        AgentConfig.model_validate({"node_key": key, "service_url": "http://service"})
    with pytest.raises(ValueError, match="32 bytes"):
        AgentConfig.model_validate({"node_key": "0x1234", "service_url": "http://s", "public_url": "http://a"})


def test_the_body_limit_defaults_to_8_mib_and_is_at_least_1024_bytes() -> None:
    standalone = {"node_key": "0x" + "a1" * 32, "chain_id": 1, "settlement": "0x" + "11" * 20,
                  "dispatch_signer": "0x" + "22" * 20}  # fmt: skip
    assert AgentConfig.model_validate(standalone).max_body_bytes == 8 << 20
    assert AgentConfig.model_validate({**standalone, "max_body_bytes": 1024}).max_body_bytes == 1024
    with pytest.raises(ValueError, match="greater than or equal to 1024"):
        AgentConfig.model_validate({**standalone, "max_body_bytes": 1023})
    assert parse_args([]).max_body_bytes == 8 << 20
    assert parse_args(["--max-body-bytes", "4096"]).max_body_bytes == 4096


def test_the_node_key_comes_from_sluice_node_key(monkeypatch: pytest.MonkeyPatch) -> None:
    assert NODE_KEY_ENV == "SLUICE_NODE_KEY"
    monkeypatch.setenv("SLUICE_NODE_KEY", "0x" + "a1" * 32)
    key = AgentSettings().node_key
    assert key is not None and key.get_secret_value() == "0x" + "a1" * 32
    assert "a1a1" not in repr(AgentSettings())  # a SecretStr never prints
    monkeypatch.setenv("SLUICE_NODE_KEY", "")
    assert AgentSettings().node_key is None  # empty counts as unset, as it always did
    monkeypatch.delenv("SLUICE_NODE_KEY")
    assert AgentSettings().node_key is None


def test_the_agent_process_refuses_to_start_without_a_node_key() -> None:
    env = {name: value for name, value in os.environ.items() if name != "SLUICE_NODE_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "inference_node.agent_main", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == ("error: set SLUICE_NODE_KEY to the node's hex private key (0x + 64 hex "
                                              "digits); `python -m inference_node.agent_main --help` says more")
