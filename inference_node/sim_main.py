"""Command-line entry to the vLLM-API simulator: ``python -m inference_node.sim_main``.

Owns only argument parsing; the simulator itself lives in :mod:`inference_node.sim`.
The whole :class:`~inference_node.sim.config.SimulatorConfig` is given as JSON, so a test
harness can start a simulator in a subprocess with exactly the config it would pass in-process::

    python -m inference_node.sim_main --port 8100 \\
        --config-json '{"served_model_names": ["llama-8b"], "tier": "edge", "max_num_seqs": 4}'
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from inference_node.sim.api_server import run_simulator
from inference_node.sim.config import SimulatorConfig

PROG = "python -m inference_node.sim_main"
EPILOG = """--config-json takes any fields of inference_node.sim.config.SimulatorConfig:
  %(prog)s --port 8100 --config-json \\
      '{"served_model_names": ["llama-8b"], "tier": "edge", "max_num_seqs": 4}'
For development and CI only: no model runs; text is deterministic and
latency modelled."""


def parse_args(argv: Sequence[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description="A vLLM OpenAI-API simulator: vLLM 0.32's answers, "
                                     "usage and /metrics,\nwithout a GPU or a model.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    parser.add_argument("--config-json", default="{}", help="SimulatorConfig as JSON (default: all defaults)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> None:
    args = parse_args(argv, prog)
    config = SimulatorConfig.model_validate_json(args.config_json)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_simulator(config, args.host, args.port)


if __name__ == "__main__":
    main()
