"""Side by side on one machine: the simulator direct, Sluice's full path, the node agent direct, Portkey and LiteLLM.

One zero-latency vLLM-API simulator serves every leg; one load generator (wrk, with a Lua script cycling
pre-signed Sluice headers, each nonce used once) sends the same 126-byte chat body (`max_tokens` 16, not
streamed) for SECONDS per leg at each concurrency, REPEATS times in alternating leg order. For each leg it
prints and writes: calls/s, p50/p99, non-2xx answers, and the CPU milliseconds per call of each process
involved (from /proc: the Sluice service, PostgreSQL with its backends, the node agent, the simulator,
Portkey, LiteLLM), with the load average.

Portkey and LiteLLM are installed outside the repository (README, "Benchmarks"); a leg whose gateway is
not installed is skipped with a note. `--py-spy` records a profile of the Sluice service (or with
`--py-spy-of agent`, of the node agent) during its legs of the first repeat (py-spy from PyPI) and prints its
top entries.

    python scripts/bench_side_by_side.py --json /tmp/side-by-side.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ledger.bench.gateway import MODEL, Call, GatewayStack, gateway_stack
from ledger.bench.harness import cpu_seconds
from ledger.polling import poll_until
from ledger.stack.probes import free_port

# 126 bytes, max_tokens 16, not streamed: every leg sends exactly this.
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello to this bench."}],
                   "max_tokens": 16}, separators=(",", ":")).encode()
WRK_LUA = Path(__file__).with_name("bench_side_by_side.lua")
# Pre-signed calls per second of a leg (a leg faster than this would wrap and replay: counted and reported).
SIGNED_PER_SECOND = {1: 1_200, 64: 2_500}
LEGS = ("sim", "sluice", "agent", "portkey", "litellm")
TITLES = {"sim": "simulator direct", "sluice": "Sluice full path", "agent": "Sluice node agent direct",
          "portkey": "Portkey (no auth, no billing)", "litellm": "LiteLLM (no budgets)"}
PORTKEY_DIR = Path(os.environ.get("PORTKEY_DIR", "/tmp/portkey"))
LITELLM = Path(os.environ.get("LITELLM_BIN", "/tmp/litellm-venv/bin/litellm"))
# py-spy on the PATH, else next to this interpreter (`.venv/bin/pip install py-spy` without activating).
# Samples per second: the agent's calls take well under a millisecond of its CPU each.
SPY_RATE = {"service": 200, "agent": 1000}
PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


@dataclass
class Gateway:
    """A third-party gateway started for the run: its process, URL and the headers it needs."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a third-party gateway: none of Sluice's variables (LiteLLM takes DATABASE_URL as
    its own, then wants Prisma engines it downloads at start-up, and exits 3 offline)."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")
    return {**{k: v for k, v in os.environ.items() if k in keep}, **extra}


def _wait_up(gateway: Gateway, log: Path, timeout: float = 120.0) -> None:
    def answers() -> bool:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"{gateway.name} exited with status {gateway.process.returncode} at start-up; "
                               f"its log: {log}\n{log.read_text()[-3000:]}")
        try:
            response = httpx.post(gateway.url + "/v1/chat/completions", content=BODY, timeout=5,
                                  headers={"content-type": "application/json", **gateway.headers})
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    poll_until(answers, timeout, f"{gateway.name} answering at {gateway.url}")


def start_portkey(sim: str, workdir: Path) -> Gateway | None:
    server = PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    if not server.exists():
        return None
    port = free_port()
    log = workdir / "portkey.log"
    process = subprocess.Popen(["node", str(server), f"--port={port}", "--headless"], stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True,
                               env=_clean_env(NODE_ENV="production"))
    gateway = Gateway("portkey", process, f"http://127.0.0.1:{port}",
                      {"x-portkey-provider": "openai", "x-portkey-custom-host": sim + "/v1",
                       "authorization": "Bearer sk-bench"})
    _wait_up(gateway, log)
    return gateway


def start_litellm(sim: str, workdir: Path) -> Gateway | None:
    if not LITELLM.exists():
        return None
    port = free_port()
    # Without a master key LiteLLM refuses to start (exit status 3: "no master key is set").
    master_key = "sk-" + os.urandom(32).hex()
    config = workdir / "litellm.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": "openai/" + MODEL, "api_base": sim + "/v1",
                                                                "api_key": "sk-bench"}}],
        "litellm_settings": {"telemetry": False, "drop_params": True},
        "general_settings": {"master_key": master_key},
    }))
    log = workdir / "litellm.log"
    process = subprocess.Popen([str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", "1"], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               start_new_session=True, cwd=workdir,
                               env=_clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR",
                                              LITELLM_TELEMETRY="False", NO_DOCS="True", DISABLE_ADMIN_UI="True"))
    gateway = Gateway("litellm", process, f"http://127.0.0.1:{port}", {"authorization": "Bearer " + master_key})
    _wait_up(gateway, log)
    return gateway


def write_headers(path: Path, calls: list[dict[str, str]]) -> None:
    """One request's headers a line, tab-separated name and value pairs (the Lua script reads these)."""
    with path.open("w") as out:
        for headers in calls:
            out.write("\t".join(f"{k}\t{v}" for k, v in headers.items()) + "\n")


def wrk(url: str, headers_file: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    threads = 1 if concurrency == 1 else 2
    body_file = headers_file.with_suffix(".body")
    body_file.write_bytes(BODY)
    argv = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds:g}s", "--timeout", "10s",
            "-s", str(WRK_LUA), url + "/v1/chat/completions", "--", str(headers_file), str(threads), str(body_file)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    figures: dict[str, Any] = json.loads(line[len("WRKJSON "):])
    refusal = next(line for line in out.splitlines() if line.startswith("WRKREFUSAL"))
    figures["first_refusal"] = refusal[len("WRKREFUSAL "):] or None
    return figures


def _requests_of(stack: GatewayStack, leg: str, count: int,
                 gateways: dict[str, Gateway]) -> tuple[str, list[dict[str, str]]]:
    """The base URL of a leg and the headers of its requests (one set for the legs that sign nothing)."""
    def headers(calls: list[Call]) -> tuple[str, list[dict[str, str]]]:
        return calls[0][0].removesuffix("/v1/chat/completions"), [h for _, _, h in calls]

    if leg == "sluice":
        return headers(stack.signed_calls(count, body=BODY))
    if leg == "agent":
        return headers(stack.ticketed_calls(count, body=BODY))
    if leg == "sim":
        return stack.sim, [{"content-type": "application/json"}]
    gateway = gateways[leg]
    return gateway.url, [{"content-type": "application/json", **gateway.headers}]


def _watched(stack: GatewayStack, leg: str, gateways: dict[str, Gateway]) -> dict[str, int]:
    pids = {"sim": stack.pids["engine"]}
    if leg in ("sluice", "agent"):
        pids["agent"] = stack.pids["agent"]
    if leg == "sluice":
        pids = {"service": stack.pids["service"], "postgres": stack.pids["postgres"], **pids}
    if leg in gateways:
        pids = {leg: gateways[leg].process.pid, **pids}
    return pids


def run_leg(stack: GatewayStack, leg: str, concurrency: int, seconds: float, gateways: dict[str, Gateway],
            workdir: Path, profile: Path | None = None, profiled: str = "service") -> dict[str, Any]:
    count = int(SIGNED_PER_SECOND[concurrency] * seconds) if leg in ("sluice", "agent") else 1
    url, requests = _requests_of(stack, leg, count, gateways)
    headers_file = workdir / f"{leg}-{concurrency}.tsv"
    write_headers(headers_file, requests)
    pids = _watched(stack, leg, gateways)
    spy = None
    if profile is not None:
        spy = subprocess.Popen([PY_SPY or "py-spy", "record", "-p", str(stack.pids[profiled]), "-d", f"{seconds:g}",
                                "-r", str(SPY_RATE[profiled]), "-f", "raw", "-o", str(profile), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    figures = wrk(url, headers_file, concurrency, seconds)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    if spy is not None:
        spy.wait(60)
    calls = max(figures["requests"], 1)
    figures["calls_per_s"] = round(figures["requests"] / (figures["duration_us"] / 1e6), 1)
    figures["cpu_ms_per_call"] = {name: round((after[name] - before[name]) * 1000 / calls, 3) for name in pids}
    figures["loadavg"] = os.getloadavg()[0]
    figures["presigned"] = len(requests) if leg in ("sluice", "agent") else None
    return figures


def profile_summary(raw: Path, top: int = 15) -> dict[str, Any]:
    """Top functions by own samples, and the share of samples that pass through each part of the stack."""
    own: Counter[str] = Counter()
    through: Counter[str] = Counter()
    total = 0
    parts = {
        "chain follower threads": ("ledger/followers", "ledger/chain", "web3/", "requests/", "urllib3/"),
        "FastAPI/Starlette": ("fastapi/", "starlette/"),
        "OpenTelemetry": ("opentelemetry/",),
        "psycopg": ("psycopg/", "psycopg_pool/"),
        "aiohttp (to the node)": ("aiohttp/",),
        "uvicorn": ("uvicorn/",),
        "signing and hashing": ("secp256k1", "coincurve", "keccak", "eip712"),
        "pydantic": ("pydantic",),
        "prometheus_client": ("prometheus_client/",),
        "asyncio event loop": ("asyncio/",),
        "os.environ reads": ("os.py",),
    }
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for part, needles in parts.items():
            if any(needle in frame for frame in frames for needle in needles):
                through[part] += n
    return {
        "samples": total,
        "top_own": [(frame, round(100 * n / total, 1)) for frame, n in own.most_common(top)] if total else [],
        "through": {part: round(100 * n / total, 1) for part, n in through.most_common()} if total else {},
    }


def _table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| repeat | leg | c=1 calls/s | c=1 p50 | c=64 calls/s | c=64 p50 | c=64 p99 | non-2xx | "
             "CPU ms per call at c=64 | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        one, many = result.get("c1"), result.get("c64")
        def cell(f: dict[str, Any] | None, key: str, scale: float = 1.0, unit: str = "") -> str:
            return "—" if f is None else f"{f[key] * scale:,.1f}{unit}" if key != "calls_per_s" else f"{f[key]:,.0f}"
        cpu = "—" if many is None else ", ".join(f"{k} {v:.2f}" for k, v in many["cpu_ms_per_call"].items())
        errors = sum((f or {}).get("non2xx", 0) + (f or {}).get("socket_errors", 0) for f in (one, many))
        load = "—" if many is None else f"{many['loadavg']:.2f}"
        lines.append(f"| {result['repeat']} | {TITLES[result['leg']]} | {cell(one, 'calls_per_s')} | "
                     f"{cell(one, 'p50_us', 1e-3, ' ms')} | {cell(many, 'calls_per_s')} | "
                     f"{cell(many, 'p50_us', 1e-3, ' ms')} | {cell(many, 'p99_us', 1e-3, ' ms')} | {errors} | "
                     f"{cpu} | {load} |")
    return lines


def goals(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 14's goal 1, per repeat: gateway-host CPU vs Portkey, added p50 at c=1, throughput vs LiteLLM."""
    out: dict[str, Any] = {}
    for repeat in sorted({r["repeat"] for r in results}):
        legs = {r["leg"]: r for r in results if r["repeat"] == repeat}
        got: dict[str, Any] = {}
        sluice = legs.get("sluice", {}).get("c64")
        if sluice:
            cpu = sluice["cpu_ms_per_call"]
            got["sluice_host_cpu_ms"] = round(cpu["service"] + cpu["postgres"], 3)
        portkey = legs.get("portkey", {}).get("c64")
        if portkey:
            got["portkey_cpu_ms"] = portkey["cpu_ms_per_call"]["portkey"]
        # Added p50 at c=1 as the issue measures it: over the simulator direct (the service and the node agent
        # together); and over the agent direct (the service alone, the agent's own share taken out).
        sluice_c1 = legs.get("sluice", {}).get("c1")
        for base, key in (("sim", "added_p50_c1_ms"), ("agent", "added_p50_c1_over_agent_ms")):
            if sluice_c1 and legs.get(base, {}).get("c1"):
                got[key] = round((sluice_c1["p50_us"] - legs[base]["c1"]["p50_us"]) / 1e3, 2)
        portkey_c1 = legs.get("portkey", {}).get("c1")
        if portkey_c1 and legs.get("sim", {}).get("c1"):
            got["portkey_added_p50_c1_ms"] = round((portkey_c1["p50_us"] - legs["sim"]["c1"]["p50_us"]) / 1e3, 2)
        litellm = legs.get("litellm", {}).get("c64")
        if sluice and litellm and litellm["calls_per_s"]:
            got["x_litellm_c64"] = round(sluice["calls_per_s"] / litellm["calls_per_s"], 1)
        out[str(repeat)] = got
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each leg (default 15)")
    parser.add_argument("--repeats", type=int, default=2, help="repeats, leg order reversed every other one")
    parser.add_argument("--concurrency", default="1,64", help="comma-separated connection counts (1 and/or 64)")
    parser.add_argument("--legs", default=",".join(LEGS), help=f"comma-separated legs of {', '.join(LEGS)}")
    parser.add_argument("--py-spy", dest="py_spy", type=Path, default=None, metavar="RAW",
                        help="record a profile during the profiled leg of the first repeat to RAW.c1, RAW.c64")
    parser.add_argument("--py-spy-of", dest="py_spy_of", choices=("service", "agent"), default="service",
                        help="the process --py-spy records: the service (in the sluice leg) or the node agent "
                             "(in the agent leg)")
    parser.add_argument("--json", dest="json_path", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.py_spy is not None and PY_SPY is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    legs = [leg for leg in args.legs.split(",") if leg]
    unknown = [leg for leg in legs if leg not in LEGS] + [c for c in concurrencies if c not in SIGNED_PER_SECOND]
    if unknown:
        print(f"unknown legs or concurrencies: {unknown}; legs are {', '.join(LEGS)}, concurrencies 1 and 64",
              file=sys.stderr)
        return 2
    profiled_leg = "sluice" if args.py_spy_of == "service" else "agent"
    results: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-side-") as tmp, gateway_stack() as stack:
        workdir = Path(tmp)
        gateways: dict[str, Gateway] = {}
        try:
            for leg, start in (("portkey", start_portkey), ("litellm", start_litellm)):
                if leg in legs:
                    gateway = start(stack.sim, workdir)
                    if gateway is None:
                        skipped[leg] = "not installed (README, Benchmarks)"
                    else:
                        gateways[leg] = gateway
            legs = [leg for leg in legs if leg not in skipped]
            for leg in legs:  # warm every path: connections, caches, imports
                run_leg(stack, leg, 64, 2.0, gateways, workdir)
            for repeat in range(1, args.repeats + 1):
                order = legs if repeat % 2 else legs[::-1]
                for leg in order:
                    result: dict[str, Any] = {"repeat": repeat, "leg": leg}
                    for concurrency in concurrencies:
                        profile = (args.py_spy.with_name(f"{args.py_spy.name}.c{concurrency}")
                                   if args.py_spy is not None and leg == profiled_leg and repeat == 1 else None)
                        figures = run_leg(stack, leg, concurrency, args.seconds, gateways, workdir, profile,
                                          args.py_spy_of)
                        result[f"c{concurrency}"] = figures
                        print(f"repeat {repeat}  {TITLES[leg]:30} c={concurrency:<3} {figures['calls_per_s']:>8,.0f} "
                              f"calls/s  p50 {figures['p50_us'] / 1e3:7.2f} ms  p99 {figures['p99_us'] / 1e3:8.2f} ms"
                              f"  non-2xx {figures['non2xx']} {figures['first_refusal'] or ''}"
                              f"  wrapped {figures['wrapped']}  CPU ms/call "
                              f"{figures['cpu_ms_per_call']}  load {figures['loadavg']:.2f}", flush=True)
                    results.append(result)
        finally:
            for gateway in gateways.values():
                gateway.stop()
    print()
    for line in _table(results):
        print(line)
    summary = goals(results)
    print()
    for repeat, got in summary.items():
        print(f"repeat {repeat}: {got}")
    for leg, why in skipped.items():
        print(f"skipped {leg}: {why}")
    figures_out: dict[str, Any] = {"seconds": args.seconds, "body_bytes": len(BODY), "results": results,
                                   "goals": summary, "skipped": skipped, "cpus": os.cpu_count()}
    for concurrency in concurrencies if args.py_spy is not None else []:
        raw = args.py_spy.with_name(f"{args.py_spy.name}.c{concurrency}")
        if not raw.exists():
            continue
        profile = figures_out.setdefault("profile", {})[f"c{concurrency}"] = profile_summary(raw)
        print(f"\nprofile of the {args.py_spy_of} at c={concurrency} ({profile['samples']} samples; "
              "share through each part):")
        for part, share in profile["through"].items():
            print(f"  {share:5.1f} %  {part}")
        print("top functions by own samples:")
        for frame, share in profile["top_own"]:
            print(f"  {share:5.1f} %  {frame}")
    if args.json_path is not None:
        args.json_path.write_text(json.dumps(figures_out, indent=2) + "\n")
        print(f"figures written to {args.json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
