"""The operator's monitoring: the real processes' /metrics carry every series that deploy/prometheus.yml
scrapes and deploy/grafana/sluice.json queries, docs/metrics.md names them all, and calls are counted."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from ledger.keys import embedded_account
from ledger.stack.probes import free_port
from redemption.sdk import SluiceAuth, openai_client
from tests.support.settlement import WorkerProcess
from tests.support.stack import SMALL_MODEL, Deployed

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\b((?:sluice_|vllm:)[a-z_:]+)")
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def series_names(exposition: str) -> set[str]:
    """Every sample name in a Prometheus text exposition."""
    return {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and not line.startswith("#")}


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def scrape(url: str) -> str:
    response = httpx.get(url + "/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def calls(exposition: str) -> dict[tuple[str, str], float]:
    found = {}
    for m in re.finditer(r'^sluice_calls_total\{endpoint="(\w+)",outcome="(\w+)"\} ([0-9.e+]+)$', exposition, re.M):
        found[(m.group(1), m.group(2))] = float(m.group(3))
    return found


@pytest.fixture(scope="module")
def worker(deployed: Deployed, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `sluice worker` on the deployment's database, its metrics on a port of its own."""
    port = free_port()
    env = {**os.environ, "SLUICE_HOME": str(deployed.settings.home),
           "RPC_URL": deployed.settings.effective_rpc_url, "DATABASE_URL": deployed.db_url, "BROKER_URL": redis_url,
           "SLUICE_SETTLER_KEY": "0x" + bytes(embedded_account(1).key).hex(),
           "SLUICE_WORKER_METRICS_PORT": str(port), "SLUICE_CONFIRMATIONS": "0", "PYTHONUNBUFFERED": "1"}
    process = WorkerProcess(env, tmp_path_factory.mktemp("worker") / "worker.log", "--pool", "solo")
    try:
        process.wait_ready(60)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def test_calls_total_counts_every_billable_call_by_endpoint_and_outcome(deployed: Deployed) -> None:
    before = calls(scrape(deployed.api))
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 10**17)
    deployed.wait_mirrored()
    client = openai_client(deployed.api, developer, payer=enterprise.address, max_cost=10**16)
    for _ in range(3):
        client.chat.completions.create(model=SMALL_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    stream = client.chat.completions.create(model=SMALL_MODEL, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4, stream=True)
    assert list(stream)
    client.completions.create(model=SMALL_MODEL, prompt="hi", max_tokens=4)
    stranger = httpx.Client(auth=SluiceAuth(Account.create(), payer=enterprise.address, max_cost=10**16), timeout=30)
    refused = stranger.post(deployed.api + "/v1/chat/completions",
                            json={"model": SMALL_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "no_budget"
    after = calls(scrape(deployed.api))
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert delta == {("chat", "answered"): 4.0, ("completions", "answered"): 1.0, ("chat", "refused"): 1.0}


def test_every_metric_the_dashboard_queries_is_served(deployed: Deployed, worker: str) -> None:
    node_urls = [s.url for s in deployed.node_svcs if s.url is not None]
    expositions = [scrape(deployed.api), scrape(worker), *(scrape(u) for u in node_urls)]
    served = set().union(*(series_names(e) for e in expositions))
    board = json.loads((ROOT / "deploy/grafana/sluice.json").read_text())
    queried = {m for panel in board["panels"] for target in panel["targets"] for m in METRIC.findall(target["expr"])}
    assert len(queried) >= 25
    assert sorted(q for q in queried if q not in served) == []


def test_scrape_config_names_every_process() -> None:
    text = (ROOT / "deploy/prometheus.yml").read_text()
    jobs = dict(re.findall(r'- job_name: (\S+)\n    metrics_path: /metrics\n    static_configs:\n'
                           r'      - targets: \[([^]]*)\]', text))
    assert sorted(jobs) == ["sluice-api", "sluice-node", "sluice-worker", "vllm"]
    assert jobs["sluice-worker"] == '"127.0.0.1:9808"'
    assert jobs["sluice-api"] == '"127.0.0.1:8000"'


def test_metrics_doc_lists_every_served_family(deployed: Deployed, worker: str) -> None:
    doc = (ROOT / "docs/metrics.md").read_text()
    node_urls = [s.url for s in deployed.node_svcs if s.url is not None]
    families = {family(n) for e in (scrape(deployed.api), scrape(worker), *(scrape(u) for u in node_urls))
                for n in series_names(e) if n.startswith("sluice_")}
    assert sorted(f for f in families if f"`{f}" not in doc) == []


def test_a_taken_worker_metrics_port_stops_the_worker_with_the_variable_to_set(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "SLUICE_HOME": str(tmp_path), "SLUICE_WORKER_METRICS_PORT": str(port),
               "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
        out = subprocess.run([sys.executable, "-m", "ledger.cli.worker"], env=env, capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2
    assert f"settlement metrics cannot be served on 127.0.0.1:{port}" in out.stderr
    assert "set SLUICE_WORKER_METRICS_PORT to a free port, or to 0 to serve none" in out.stderr
