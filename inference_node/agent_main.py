"""Command-line entry to the node agent: ``python -m inference_node.agent_main``.

Owns only argument parsing; the agent lives in :mod:`inference_node.agent`. The node key comes from
``SLUICE_NODE_KEY`` through :class:`~inference_node.agent.config.AgentSettings` (never from the
command line, where ``ps`` would show it)::

    SLUICE_NODE_KEY=0x... python -m inference_node.agent_main --vllm-url http://127.0.0.1:8000 \\
        --service-url http://10.0.0.1:8000 --public-url http://10.0.0.5:9100 --port 9100

``--launch-vllm MODEL`` first starts vLLM's OpenAI server on MODEL at ``--vllm-port`` (needs ``sluice[vllm]``,
or ``--vllm-python`` naming the interpreter of a virtualenv that has vLLM).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from inference_node.agent.api_server import run_agent
from inference_node.agent.config import DEFAULT_MAX_BODY_BYTES, NODE_KEY_ENV, AgentConfig, AgentSettings
from inference_node.agent.launcher import launch_vllm, stop_vllm
from ledger.domain import TIER_NAMES

PROG = "python -m inference_node.agent_main"
EPILOG = f"""environment:
  {NODE_KEY_ENV}  required: the node's hex private key (0x + 64 hex digits).
                   Its address signs receipts and heartbeats; the operator
                   registers that address on chain (sluice admin nodes
                   register ADDRESS ...). Never given on the command line.

example, in front of `vllm serve` on a GPU host:
  vllm serve meta-llama/Llama-3.1-8B-Instruct --port 8000 &
  {NODE_KEY_ENV}=0x... %(prog)s --vllm-url http://127.0.0.1:8000 \\
      --service-url http://SERVICE:8000 --public-url http://THIS-HOST:9100 \\
      --host 0.0.0.0 --port 9100 --tier edge --region eu-west-edge"""


def parse_args(argv: Sequence[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description="The node agent: signs a receipt for every call it "
                                     "serves from vLLM,\nand heartbeats its queue to the redemption service.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9100, help="port to bind (default: 9100)")
    parser.add_argument("--vllm-url", default="http://127.0.0.1:8000", help="vLLM OpenAI server base URL")
    parser.add_argument("--launch-vllm", metavar="MODEL", help="start vLLM's OpenAI server on MODEL first")
    parser.add_argument("--vllm-python", help="for --launch-vllm: the python vLLM is installed in (default: this one)")
    parser.add_argument("--vllm-port", type=int, default=8000, help="port for --launch-vllm (default: 8000)")
    parser.add_argument("--service-url", help="redemption service base URL (omit to run standalone)")
    parser.add_argument("--public-url", help="URL the service reaches this agent at (default: http://HOST:PORT)")
    parser.add_argument("--model", action="append", dest="models", help="served model name (repeatable; "
                        "default: vLLM's /v1/models)")  # fmt: skip
    parser.add_argument("--tier", choices=TIER_NAMES, default="regional")
    parser.add_argument("--region", default="local")
    parser.add_argument("--capacity", type=int, default=256, help="vLLM max_num_seqs (default: 256)")
    parser.add_argument("--heartbeat-interval", type=float, default=2.0, help="seconds (default: 2)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="largest generation "
                        f"request body accepted; larger ones get 413 (default: {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--chain-id", type=int, help="standalone: chain id")
    parser.add_argument("--settlement", help="standalone: Settlement contract address")
    parser.add_argument("--dispatch-signer", help="standalone: address that signs dispatch tickets")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> None:
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node_key = AgentSettings().node_key
    if node_key is None:
        raise SystemExit(f"error: set {NODE_KEY_ENV} to the node's hex private key (0x + 64 hex digits); "
                         f"`{prog} --help` says more")
    vllm_url = args.vllm_url
    vllm = None
    if args.launch_vllm:
        vllm = launch_vllm(args.launch_vllm, args.vllm_port, python=args.vllm_python)
        vllm_url = f"http://127.0.0.1:{args.vllm_port}"
    config = AgentConfig(
        vllm_url=vllm_url,
        node_key=node_key,
        service_url=args.service_url,
        public_url=args.public_url or (f"http://{args.host}:{args.port}" if args.service_url else None),
        models=args.models,
        tier=args.tier,
        region=args.region,
        capacity=args.capacity,
        heartbeat_interval=args.heartbeat_interval,
        max_body_bytes=args.max_body_bytes,
        chain_id=args.chain_id,
        settlement=args.settlement,
        dispatch_signer=args.dispatch_signer,
    )
    try:
        run_agent(config, args.host, args.port)
    finally:
        if vllm is not None:
            stop_vllm(vllm)


if __name__ == "__main__":
    main()
