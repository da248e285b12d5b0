"""The simulator against the recorded answers of a real vLLM 0.32: the same requests, the same answers.

The recorder's own cases (``scripts/vllm/record.py``) are replayed against a simulator configured like
the recorded server (its model name, a 2048-token context, 4 sequences at once, the model's
``tokenizer.json``, a model that never ends on its own) and compared by ``scripts/vllm/compare.py``
field by field: everything but the volatile values (README.md beside the recordings), which are compared
by shape, and the generated text, compared by type. A difference is either fixed in the simulator or
listed in ACCEPTED below, with the reason it does not matter in FINDINGS.md.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from inference_node.sim.config import SimulatorConfig
from tests.inference_node.sim.support import RunningSimulator

ROOT = Path(__file__).resolve().parents[3]
RECORDED = ROOT / "tests" / "inference_node" / "recorded" / "vllm-0.32"
TOKENIZER = RECORDED / "model" / "tokenizer.json"


def _script(name: str) -> ModuleType:
    """A module of scripts/vllm (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f"sluice_vllm_{name}", ROOT / "scripts" / "vllm" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


record = _script("record")
compare = _script("compare")

# vLLM families the simulator does not model: none is read by the agent or the service (FINDINGS.md).
NOT_MODELLED_FAMILIES = [
    "vllm:kv_cache_usage_perc", "vllm:engine_sleep_state", "vllm:cache_config_info", "vllm:iteration_tokens_total",
    "vllm:request_max_num_generation_tokens", "vllm:request_num_preemptions", "vllm:request_prefill_kv_computed_tokens",
    "vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:external_prefix_cache_queries",
    "vllm:external_prefix_cache_hits", "vllm:mm_cache_queries", "vllm:mm_cache_hits", "vllm:prompt_tokens_by_source",
    "vllm:prompt_tokens_cached", "vllm:prompt_tokens_cached_by_source", "vllm:admission_rejections",
    "vllm:estimated_flops_per_gpu", "vllm:estimated_read_bytes_per_gpu", "vllm:estimated_write_bytes_per_gpu",
]  # fmt: skip

# Differences that remain, each one explained in FINDINGS.md ("Left as they are").
ACCEPTED: dict[str, list[str]] = {}


def like_the_recorded_server(**overrides: Any) -> SimulatorConfig:
    return SimulatorConfig.model_validate({
        "served_model_names": [record.MODEL], "model_path": str(TOKENIZER.parent), "max_model_len": 2048,
        "max_num_seqs": 4, "tokenizer": str(TOKENIZER),
        # The recorded model never ends on its own (its special-token rows are zero): only a bias on </s> stops it.
        "natural_min_tokens": 1_000_000, "natural_max_tokens": 1_000_000, **overrides,
    })  # fmt: skip


@pytest.fixture(scope="module")
def fast_sim() -> Iterator[RunningSimulator]:
    server = RunningSimulator(like_the_recorded_server(ttft_seconds=0, per_token_seconds=0))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[RunningSimulator]:
    """Slow enough for a client to hang up mid-generation, as the disconnect cases do."""
    server = RunningSimulator(like_the_recorded_server(ttft_seconds=0, per_token_seconds=0.01))
    server.start()
    yield server
    server.stop()


def recorded(name: str) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text())
    return entry


def differences(name: str, replayed: dict[str, Any]) -> list[str]:
    found: list[str] = compare.compare_case(recorded(name), replayed, compare.GENERATED)
    return found


@pytest.mark.parametrize("case", record.SIMPLE_CASES, ids=[case.name for case in record.SIMPLE_CASES])
def test_the_simulator_answers_each_request_as_vllm_did(fast_sim: RunningSimulator, case: Any) -> None:
    replayed = record.record_simple(record.Server(fast_sim.base_url), case)
    assert replayed["request"] == recorded(case.name)["request"]  # the recordings are of these very requests
    assert differences(case.name, replayed) == ACCEPTED.get(case.name, [])


def test_prompt_sizes_are_counted_as_vllm_counts_them(fast_sim: RunningSimulator) -> None:
    assert differences("prompt-sizes", record.record_prompt_sizes(record.Server(fast_sim.base_url))) == []


def test_metrics_have_vllms_names_types_labels_and_buckets() -> None:
    server = RunningSimulator(like_the_recorded_server(ttft_seconds=0, per_token_seconds=0))
    server.start()  # a fresh server: every counter at zero, as in metrics-idle
    try:
        idle = record.record_metrics_idle(record.Server(server.base_url))
        for case in record.SIMPLE_CASES:
            record.record_simple(record.Server(server.base_url), case)
        after = record.record_metrics_after(record.Server(server.base_url))
    finally:
        server.stop()
    for name, replayed in (("metrics-idle", idle), ("metrics-after-cases", after)):
        vllm_only = [f["name"] for f in recorded(name)["families"]
                     if f["name"].startswith("vllm:") and f["name"] not in {g["name"] for g in replayed["families"]}]
        assert {family.removesuffix("_created") for family in vllm_only} == set(NOT_MODELLED_FAMILIES)
        assert differences(name, replayed) == [f"vllm families only in A: {', '.join(vllm_only)}"]
    # A fresh server's samples, where both have them, are the same (all zero but the bucket bounds' labels).
    timed = ("_seconds", "_created")
    shared = {key: value for key, value in recorded("metrics-idle")["vllm_samples"].items()
              if key in idle["vllm_samples"] and not key.split("{")[0].endswith(timed)}  # fmt: skip
    assert shared == {key: idle["vllm_samples"][key] for key in shared}
    assert len(shared) > 50


@pytest.mark.parametrize("name", ["disconnect-mid-stream", "disconnect-non-stream", "queue-gauges"])
def test_hang_ups_and_queue_gauges_move_the_metrics_as_in_vllm(slow_sim: RunningSimulator, name: str) -> None:
    recorders = {"disconnect-mid-stream": record.record_stream_disconnect,
                 "disconnect-non-stream": record.record_nonstream_disconnect,
                 "queue-gauges": record.record_queue_gauges}  # fmt: skip
    replayed = recorders[name](record.Server(slow_sim.base_url))
    if name == "queue-gauges":
        # Of the 6 streams 4 ran; the 2 still waiting when every client left add no prompt tokens in vLLM.
        # The simulator learns of each hang-up on its own, so a waiting one may take a freed slot first.
        prompt = 'vllm:prompt_tokens_total{engine="0",model_name="sluice-tiny-llama"}'
        assert replayed["metrics_delta_after_close"][prompt] in {4 * 13, 5 * 13, 6 * 13}
        replayed["metrics_delta_after_close"][prompt] = 4 * 13
    assert differences(name, replayed) == ACCEPTED.get(name, [])
