"""`sluice up`, `sluice status` and `sluice down`: the CLI drives the embedded stack end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ledger.db import applied_migrations
from ledger.stack.probes import chain_id_at, free_port, free_port_run
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[3]


def _sluice_env(home: Path, port: int, api_port: int = 0, node_base_port: int = 0) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RPC_URL", "DATABASE_URL", "BROKER_URL")}
    env.update({"SLUICE_HOME": str(home), "SLUICE_CHAIN_PORT": str(port)})
    if api_port:
        env.update({"SLUICE_API_PORT": str(api_port), "SLUICE_NODE_BASE_PORT": str(node_base_port),
                    "SLUICE_WORKER_METRICS_PORT": str(free_port())})
    return env


def _sluice(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from ledger.cli.app import main; main()", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec("ledger.chain.deploy") is None, reason="deployer not built yet")
@pytest.mark.slow  # end to end: a detached stack up, its status, down (about 30 s)
def test_up_detach_status_down(tmp_path: Path) -> None:
    home, port, api_port, node_port = tmp_path / "home", free_port(), free_port(), free_port_run(4)
    env = _sluice_env(home, port, api_port, node_port)
    try:
        up = _sluice(env, "up", "--detach")
        assert up.returncode == 0, up.stderr
        record = json.loads(up.stdout)
        assert set(record) == {"chain_id", "rpc_url", "deploy_block", "contracts", "endpoints"}
        assert record["chain_id"] == 31337
        assert set(record["contracts"]) == {"token", "sale", "rate_card", "settlement", "payment_token",
                                           "node_registry"}
        assert record["endpoints"] == {
            "rpc": f"http://127.0.0.1:{port}",
            "database": f"postgresql://postgres@/postgres?host={home}/run/pg",
            "broker": f"redis+socket://{home}/run/redis.sock",
            "api": f"http://127.0.0.1:{api_port}",
            "nodes": [f"http://127.0.0.1:{node_port + 1}", f"http://127.0.0.1:{node_port + 3}"],
            "worker": f"http://127.0.0.1:{env['SLUICE_WORKER_METRICS_PORT']}",
        }
        assert json.loads((home / "stack.json").read_text()) == record

        again = _sluice(env, "up", "--detach")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout) == record
        assert "already running" in again.stderr

        def status_with_worker() -> bool:  # the worker may still be starting when `up --detach` returns
            nonlocal report
            status = _sluice(env, "status", "--json")
            assert status.returncode == 0, status.stderr
            report = json.loads(status.stdout)
            return bool(report["processes"]["workers"])

        report: dict[str, Any] = {}
        wait_until(status_with_worker, 60, "the worker answering `sluice status`", max_delay=0.5)
        assert report["running"] is True
        assert {name: s["up"] for name, s in report["services"].items()} == {
            "chain": True, "database": True, "broker": True, "api": True, "node-1": True, "node-2": True,
        }  # fmt: skip
        assert report["endpoints"] == record["endpoints"]
        assert report["chain_head"] >= record["deploy_block"]
        processes = report["processes"]
        assert processes["api"] == {"url": f"http://127.0.0.1:{api_port}", "up": True, "mirror_lag_blocks": 0,
                                    "nodes_routed": 2}
        assert {f: processes[f]["lag_blocks"] <= 1 for f in ("mirror", "indexer")} == {"mirror": True,
                                                                                        "indexer": True}
        assert [(w["beat"], w["concurrency"], w["name"].startswith("sluice-beat-")) for w in processes["workers"]] \
            == [(True, 2, True)]
        assert processes["beat"] is True
        assert sorted((n["url"], n["tier"], n["health"], n["running"], n["waiting"]) for n in processes["nodes"]) == [
            (f"http://127.0.0.1:{node_port + 1}", "edge", "ok", 0, 0),
            (f"http://127.0.0.1:{node_port + 3}", "regional", "ok", 0, 0)]
        assert report["token"] == {"address": record["contracts"]["token"], "paused": False}
        assert report["settlement"]["backlog_records"] == 0
        text = _sluice({**env, "COLUMNS": "80"}, "status")
        assert text.returncode == 0, text.stderr
        assert max(len(line) for line in text.stdout.splitlines()) <= 80
        assert "token not paused" in text.stdout and "runs the beat" in text.stdout
        assert report["deployment"] == {k: v for k, v in record.items() if k != "endpoints"}
        assert applied_migrations(record["endpoints"]["database"])[0] == "0001_base"
    finally:
        down = _sluice(env, "down")
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("Stopped the Sluice stack (pid ")
    assert chain_id_at(record["endpoints"]["rpc"]) is None
    assert not (home / "stack.json").exists()

    stopped = _sluice(env, "status", "--json")
    assert stopped.returncode == 1
    assert json.loads(stopped.stdout)["running"] is False
    nothing = _sluice(env, "down")
    assert (nothing.returncode, nothing.stdout) == (0, "No Sluice stack is running for " + str(home) + ".\n")

    # The foreground stack reuses the deployment (the chain kept it) and stops cleanly on Ctrl-C.
    foreground = subprocess.Popen(
        [sys.executable, "-c", "from ledger.cli.app import main; main()", "up"],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: (home / "stack.json").exists() or foreground.poll() is not None, 60,
                   "foreground stack ready")
        assert foreground.poll() is None, foreground.communicate()[1]
        assert json.loads((home / "stack.json").read_text()) == record
        foreground.send_signal(signal.SIGINT)
        out, err = foreground.communicate(timeout=60)
    finally:
        if foreground.poll() is None:
            foreground.kill()
    assert foreground.returncode == 0, err
    assert "Sluice stack ready" in out
    assert out.endswith("Stopped.\n")
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "received SIGINT; stack stopped"
