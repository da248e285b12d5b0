"""Idle CPU of the embedded stack, per process kind: what `sluice up` costs when nobody calls it.

Starts the stack detached (or measures the one running under SLUICE_HOME), lets it settle, then
reads every descendant process's CPU time over a window and prints CPU milliseconds per second of
wall time for each kind (service, PostgreSQL, Anvil, node agents, simulators, worker, Redis), and
the same as JSON (--json). Run it with the ports and SLUICE_HOME of your own stack:

    SLUICE_HOME=/tmp/idle .venv/bin/python scripts/idle_cpu.py --window 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil

from ledger.config import Settings
from ledger.paths import StatePaths
from ledger.stack.running import running_pid

KINDS = (
    ("service", "-m redemption"),
    ("node agent", "inference_node.agent_main"),
    ("simulator", "inference_node.sim_main"),
    ("worker", "ledger.cli.worker"),
    ("anvil", "anvil"),
    ("postgresql", "postgres"),
    ("redis", "redis"),
)


def kind_of(proc: psutil.Process) -> str | None:
    try:
        cmdline = " ".join(proc.cmdline())
        name = proc.name()
    except psutil.Error:
        return None
    for kind, needle in KINDS:
        if needle in cmdline or needle in name:
            return kind
    return None


def stack_processes(root: psutil.Process) -> dict[int, tuple[str, psutil.Process]]:
    found: dict[int, tuple[str, psutil.Process]] = {}
    for proc in root.children(recursive=True):
        kind = kind_of(proc)
        if kind is not None:
            found[proc.pid] = (kind, proc)
    return found


def cpu_seconds(proc: psutil.Process) -> float | None:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def measure(root: psutil.Process, window: float) -> dict[str, dict[str, float]]:
    procs = stack_processes(root)
    before = {pid: cpu_seconds(p) for pid, (_k, p) in procs.items()}
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    # Processes started during the window (PostgreSQL backends) count from zero.
    later = stack_processes(root)
    totals: dict[str, dict[str, float]] = {}
    for pid, (kind, proc) in later.items():
        after = cpu_seconds(proc)
        if after is None:
            continue
        spent = after - (before.get(pid) or 0.0)
        entry = totals.setdefault(kind, {"processes": 0, "ms_per_s": 0.0})
        entry["processes"] += 1
        entry["ms_per_s"] += 1000 * spent / elapsed
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds waited after start-up")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    paths = StatePaths(Settings().state_dir)
    sluice = [sys.executable, "-c", "from ledger.cli.launcher import main; main()"]
    started_here = False
    pid = running_pid(paths)
    if pid is None:
        subprocess.run([*sluice, "up", "--detach"], check=True, stdout=subprocess.DEVNULL)
        started_here = True
        pid = running_pid(paths)
        assert pid is not None, "the stack did not start"
    try:
        root = psutil.Process(pid)
        time.sleep(args.settle)
        totals = measure(root, args.window)
    finally:
        if started_here:
            subprocess.run([*sluice, "down"], check=False, stdout=subprocess.DEVNULL)
    print(f"idle CPU over {args.window:g} s (ms of CPU per second)")
    for kind, _needle in KINDS:
        entry = totals.get(kind)
        if entry is not None:
            print(f"  {kind:<11} {entry['ms_per_s']:7.1f}  ({int(entry['processes'])} processes)")
    if args.json is not None:
        args.json.write_text(json.dumps({"window_s": args.window, "kinds": totals}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
