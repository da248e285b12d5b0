"""`sluice node`: run an inference node agent (in front of vLLM) or a vLLM-API simulator."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inference nodes: the agent in front of vLLM, and the vLLM-API simulator.",
                  no_args_is_help=True)

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command("run", context_settings=PASS_THROUGH)
def run(ctx: typer.Context) -> None:
    """Run the node agent: `sluice node run --vllm-url URL --service-url URL [...]`.

    Without `--vllm-url`, `--model NAME` (with the `vllm` extra installed) starts `vllm serve NAME` first.
    Needs SLUICE_NODE_KEY: the node's hex private key, whose address the operator registers on chain.
    `sluice node run --help` lists every option.
    """
    from inference_node.agent_main import main

    args = list(ctx.args)
    if args and "--vllm-url" not in args and "--launch-vllm" not in args and "--model" in args:
        args += ["--launch-vllm", args[args.index("--model") + 1]]
    main(args or ["--help"], prog="sluice node run")


@app.command("sim", context_settings=PASS_THROUGH)
def sim(ctx: typer.Context) -> None:
    """Run a vLLM-API simulator (development and CI only: no model, deterministic text).

    `sluice node sim --port 8001 --config-json '{"served_model_names": ["m"], "tier": "edge"}'`;
    `sluice node sim --help` lists every option.
    """
    from inference_node.sim_main import main

    main(ctx.args, prog="sluice node sim")
