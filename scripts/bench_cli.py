"""Wall time of each `sluice` command against the embedded stack: reads and on-chain writes.

    .venv/bin/python scripts/bench_cli.py [--runs 5] [--json PATH] [--label after]

Uses the detached stack of $SLUICE_HOME when one runs, else starts one there (`sluice up --detach`)
and stops it afterwards. Every command runs as a fresh `sluice` process, the way a shell runs it;
each figure is the median (and the range) of --runs runs. A wallet and a developer key are set up
first (allowlisted, funded, a budget), so every read has something to show and every write succeeds.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

SLUICE = [str(Path(sys.executable).with_name("sluice"))]
PASSWORD = "bench-password"
# A fixed wallet key (never used outside this benchmark's embedded chain).
WALLET_KEY = "0x" + "5e" * 32


def sluice(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLUICE, *args], env=env, capture_output=True, text=True, input=stdin, timeout=300)


def checked(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    out = sluice(*args, env=env, stdin=stdin)
    if out.returncode != 0:
        raise SystemExit(f"`sluice {' '.join(args)}` failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def random_address() -> str:
    return "0x" + secrets.token_hex(20)


def timed(args: Callable[[], list[str]], env: dict[str, str], runs: int) -> dict[str, float]:
    seconds = []
    for _ in range(runs):
        argv = args()
        started = time.perf_counter()
        checked(*argv, env=env)
        seconds.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--label", default="", help="a name for this measurement (e.g. before, after)")
    parser.add_argument("--command", default=None,
                        help="the sluice command to time, split on spaces (default: the one beside this Python), "
                             "e.g. another checkout's: 'python run_other_sluice.py'")
    opts = parser.parse_args()
    if opts.command:
        SLUICE[:] = opts.command.split()

    env = {**os.environ, "SLUICE_KEYSTORE_PASSWORD": PASSWORD, "COLUMNS": "80"}
    home = Path(env.get("SLUICE_HOME", ".sluice")).resolve()
    started_stack = sluice("status", "--json", env=env).returncode != 0 or not json.loads(
        sluice("status", "--json", env=env).stdout).get("running")
    if started_stack:
        checked("up", "--detach", env=env)
    try:
        wallet = json.loads(sluice("wallet", "address", "--json", env=env).stdout or "{}").get("address")
        if wallet is None:
            wallet = json.loads(checked("wallet", "import", "--stdin", "--json", env=env,
                                        stdin=WALLET_KEY + "\n" + PASSWORD + "\n" + PASSWORD + "\n"))["address"]
        developer = random_address()
        checked("admin", "allowlist", "add", wallet, env=env)
        checked("admin", "faucet", wallet, "100000", env=env)
        checked("wallet", "buy", "1000", "--yes", env=env)
        checked("wallet", "budget", "set", developer, "10", env=env)
        checked("admin", "roles", "grant", "auditor", wallet, env=env)
        env["SLUICE_AUDITOR_KEY"] = WALLET_KEY

        reads: dict[str, Callable[[], list[str]]] = {
            "--help": lambda: ["--help"],
            "status": lambda: ["status"],
            "wallet balance": lambda: ["wallet", "balance", wallet],
            "wallet quote": lambda: ["wallet", "quote", "1000"],
            "wallet budget list": lambda: ["wallet", "budget", "list", wallet],
            "wallet usage": lambda: ["wallet", "usage", wallet],
            "audit history": lambda: ["audit", "history"],
            "admin rates list": lambda: ["admin", "rates", "list"],
            "admin nodes list": lambda: ["admin", "nodes", "list"],
        }
        writes: dict[str, Callable[[], list[str]]] = {
            "admin allowlist add": lambda: ["admin", "allowlist", "add", random_address()],
            "admin faucet": lambda: ["admin", "faucet", wallet, "10"],
            "admin issue": lambda: ["admin", "issue", wallet, "1", "--ref", "bench"],
            "wallet buy": lambda: ["wallet", "buy", "1", "--yes"],
            "wallet deposit": lambda: ["wallet", "deposit", "1"],
            "wallet budget set": lambda: ["wallet", "budget", "set", developer, "10"],
            "wallet transfer": lambda: ["wallet", "transfer", wallet, "0.001"],
            "admin rates set": lambda: ["admin", "rates", "set", "bench/model", "20", "60", "--tier", "edge"],
        }
        checked("admin", "issue", wallet, "100", "--ref", "bench-wallet", env=env)  # wallet tokens to deposit
        figures: dict[str, dict[str, dict[str, float]]] = {"reads": {}, "writes": {}}
        for group, commands in (("reads", reads), ("writes", writes)):
            for name, argv in commands.items():
                figures[group][name] = timed(argv, env, opts.runs)
                f = figures[group][name]
                print(f"{group[:-1]:5}  {name:22} median {f['median_s']:.3f} s  "
                      f"(min {f['min_s']:.3f}, max {f['max_s']:.3f}, {f['runs']} runs)", flush=True)
        if opts.json is not None:
            opts.json.write_text(json.dumps({"label": opts.label, "home": str(home), **figures}, indent=2) + "\n")
            print(f"wrote {opts.json}")
    finally:
        if started_stack:
            sluice("down", env=env)


if __name__ == "__main__":
    main()
