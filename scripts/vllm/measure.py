"""Measure a running vLLM server: generation speed, and how much it stalls another loopback server.

    .venv/bin/python scripts/vllm/measure.py --base-url http://127.0.0.1:24010

* speed: ``--runs`` sequential completions of exactly ``--tokens`` tokens each (greedy; the tiny model
  never emits EOS), timed end to end, as output tokens per second;
* stall: a small HTTP server in its own process on a free loopback port, probed every 10 ms in
  windows that alternate between vLLM idle and vLLM generating (``--concurrency`` completions of
  ``--tokens`` tokens, over and over), three rounds in ``--load-seconds``; reported as the probe's
  median, 99th-percentile and worst round trip in each state. Other load on the machine shows in both.

Prints one JSON object. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

MODEL = "sluice-tiny-llama"
PROBE_SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(host: str, port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    connection = http.client.HTTPConnection(host, port, timeout=300)
    try:
        connection.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {data[:300]!r}")
        return dict(json.loads(data))
    finally:
        connection.close()


def completion_body(tokens: int, index: int) -> dict[str, Any]:
    # A different prompt each time, so the prefix cache does not skip the prefill.
    return {"model": MODEL, "prompt": f"Run {index}: the quick brown fox", "max_tokens": tokens, "temperature": 0}


def measure_speed(host: str, port: int, runs: int, tokens: int) -> dict[str, Any]:
    post(host, port, "/v1/completions", completion_body(tokens, -1))  # warm-up
    rates = []
    for index in range(runs):
        started = time.perf_counter()
        reply = post(host, port, "/v1/completions", completion_body(tokens, index))
        elapsed = time.perf_counter() - started
        generated = reply["usage"]["completion_tokens"]
        rates.append(generated / elapsed)
    return {
        "runs": runs,
        "tokens_per_completion": tokens,
        "tokens_per_second_mean": round(statistics.mean(rates), 1),
        "tokens_per_second_min": round(min(rates), 1),
        "tokens_per_second_max": round(max(rates), 1),
    }


def probe(port: int, seconds: float) -> list[float]:
    """Round trips (seconds) of GETs to the probe server, one every 10 ms, for ``seconds``."""
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", "/")
            connection.getresponse().read()
        finally:
            connection.close()
        latencies.append(time.perf_counter() - started)
        time.sleep(0.01)
    return latencies


def summary(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "probes": len(ordered),
        "median_ms": round(1000 * statistics.median(ordered), 2),
        "p99_ms": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 2),
        "max_ms": round(1000 * ordered[-1], 2),
    }


def measure_stall(host: str, port: int, tokens: int, concurrency: int, seconds: float) -> dict[str, Any]:
    """Alternate idle and loaded windows (``seconds`` in all, 3 rounds) so other load on the machine hits both."""
    probe_port = free_port()
    server = subprocess.Popen([sys.executable, "-c", PROBE_SERVER, str(probe_port)], stdout=subprocess.PIPE, text=True)
    window = seconds / 6
    idle: list[float] = []
    loaded: list[float] = []
    generated = [0] * concurrency
    busy_seconds = 0.0
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the probe server did not start")
        for round_index in range(3):
            idle += probe(probe_port, window)
            stop = threading.Event()

            def load(worker: int, stop: threading.Event = stop, round_index: int = round_index) -> None:
                index = 0
                while not stop.is_set():
                    body = completion_body(tokens, 10_000 * round_index + 100 * worker + index)
                    generated[worker] += post(host, port, "/v1/completions", body)["usage"]["completion_tokens"]
                    index += 1

            workers = [threading.Thread(target=load, args=(worker,), daemon=True) for worker in range(concurrency)]
            started = time.perf_counter()
            for worker in workers:
                worker.start()
            loaded += probe(probe_port, window)
            stop.set()
            for worker in workers:
                worker.join(timeout=120)
            busy_seconds += time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=10)
    return {
        "concurrency": concurrency,
        "tokens_per_completion": tokens,
        "loaded_seconds": round(busy_seconds, 1),
        "generated_tokens": sum(generated),
        "aggregate_tokens_per_second": round(sum(generated) / busy_seconds, 1),
        "probe_idle": summary(idle),
        "probe_under_load": summary(loaded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:24010")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 4])
    parser.add_argument("--load-seconds", type=float, default=30.0, help="idle + loaded probing, per concurrency")
    args = parser.parse_args()
    parts = urlsplit(args.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    result: dict[str, Any] = {"load_average_before": os.getloadavg()}
    result["speed"] = measure_speed(host, port, args.runs, args.tokens)
    result["stall"] = [measure_stall(host, port, args.tokens, c, args.load_seconds) for c in args.concurrency]
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
