"""The supervisor: start order, deadlines, failures that quote their log, children that die with it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from ledger.config import Settings
from ledger.paths import StatePaths
from ledger.stack import supervisor
from ledger.stack.errors import StackError
from ledger.stack.probes import free_port
from ledger.stack.processes import Launch
from ledger.stack.services import Service, default_services, redis_client_url, redis_service
from ledger.stack.supervisor import Stack
from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[3]


def _process_service(tmp_path: Path, argv: tuple[str, ...], healthy: Callable[[], bool], timeout: float) -> Service:
    log = tmp_path / "proc.log"
    return Service(
        name="proc", title="Proc", url=None, address="nowhere", healthy=healthy,
        launch=Launch(argv=argv, log=log, start_timeout=timeout),
    )  # fmt: skip


def test_a_service_that_never_answers_fails_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    service = _process_service(tmp_path, ("sh", "-c", "echo $$; exec sleep 30"), lambda: False, timeout=0.3)
    with pytest.raises(StackError) as caught:
        Stack([service]).start()
    assert str(caught.value) == "Proc did not answer on nowhere within 0.3 s; see proc.log"
    assert caught.value.log == tmp_path / "proc.log"
    pid = int(caught.value.log_tail(1))
    assert not _alive(pid), "a failed start stops the process it launched"


def test_a_service_that_exits_during_start_up_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    service = _process_service(tmp_path, ("sh", "-c", "echo cannot start; exit 3"), lambda: False, timeout=20)
    began = time.monotonic()
    with pytest.raises(StackError) as caught:
        Stack([service]).start()
    assert time.monotonic() - began < 5
    assert str(caught.value) == "Proc exited during start-up (exit code 3); see proc.log"
    assert caught.value.log_tail().endswith("cannot start")


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = (
        "import signal, sys\n"
        "from pathlib import Path\n"
        "from ledger.stack.services import redis_service\n"
        "from ledger.stack.supervisor import Stack\n"
        "from ledger.paths import StatePaths\n"
        "Stack([redis_service(StatePaths(Path(sys.argv[1])))]).start()\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT)  # fmt: skip
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == "ready\n"
        socket_url = redis_client_url(redis_service(StatePaths(tmp_path)).url or "")
        child = int(redis.Redis.from_url(socket_url).info("server")["process_id"])
    finally:
        parent.kill()
        parent.wait()
    wait_until(lambda: not _alive(child), 10, "redis-server exits when its parent is SIGKILLed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat_file:
            state = stat_file.read().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"  # a zombie has exited; it only waits to be reaped


def test_external_endpoints_are_checked_not_started(fresh_anvil: str, postgres_url: str, redis_url: str) -> None:
    settings = Settings(home=Path("/nonexistent/sluice"), rpc_url=fresh_anvil, database_url=postgres_url,
                        broker_url=redis_url)  # fmt: skip
    services = default_services(settings)
    assert [(s.name, s.embedded, s.url) for s in services] == [
        ("chain", False, fresh_anvil),
        ("database", False, postgres_url),
        ("broker", False, redis_url),
    ]
    stack = Stack(services)
    stack.start()
    assert stack.endpoints == {"rpc": fresh_anvil, "database": postgres_url, "broker": redis_url}
    stack.stop()


def test_an_external_endpoint_that_does_not_answer_says_which_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "EXTERNAL_TIMEOUT_S", 0.2)
    url = f"http://127.0.0.1:{free_port()}"
    settings = Settings(home=Path("/nonexistent/sluice"), rpc_url=url)
    with pytest.raises(StackError) as caught:
        Stack(default_services(settings)[:1]).start()
    assert str(caught.value) == f"chain did not answer at {url} within 0.2 s"
    assert caught.value.hint == (
        "check that it runs and that RPC_URL is right, or unset RPC_URL to start the embedded one"
    )
