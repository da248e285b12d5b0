"""The light client stands alone: redemption.sdk imports nothing of the server, installs without the
server extra into a fresh virtualenv, and makes a paid signed call from there; the `sluice` command
names the extra it lacks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import venv
from pathlib import Path

import pytest

from tests.support.stack import SMALL_MODEL, Deployed

REPO = Path(__file__).resolve().parents[2]
# The client's whole world: its three dependencies and theirs, and the protocol core.
CLIENT_TOP_MODULES = {"httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio", "typing_extensions",
                      "coincurve", "_libsecp256k1", "_cffi_backend", "Crypto", "ledger", "redemption"}
# httpx imports its optional command line's libraries when they happen to be installed.
HTTPX_OPTIONAL = {"click", "rich", "pygments", "h2", "hpack", "hyperframe", "brotli", "zstandard", "socksio"}

PROBE = textwrap.dedent("""
    import json, sys
    import redemption.sdk
    tops = {m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("ledger", "redemption", "inference_node"))
    print(json.dumps({"tops": sorted(tops), "ours": ours}))
""")


def _probe(python: str) -> dict[str, list[str]]:
    out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60, cwd="/")
    result: dict[str, list[str]] = json.loads(out.stdout)
    return result


def test_the_sdk_imports_nothing_of_the_server() -> None:
    found = _probe(sys.executable)
    extra = set(found["tops"]) - CLIENT_TOP_MODULES - HTTPX_OPTIONAL - {"__main__"}
    assert {m for m in extra if not m.startswith(("_distutils_hack", "__editable__"))} == set()
    assert found["ours"] == sorted(["ledger", "ledger.protocol", "ledger.protocol.abi", "ledger.protocol.address",
                                    "ledger.protocol.eip712", "ledger.protocol.keccak", "ledger.protocol.secp256k1",
                                    "ledger.protocol.signed_call", "redemption", "redemption.sdk"])


def test_the_cli_names_the_server_extra_when_it_is_missing() -> None:
    """With typer (any server library) absent, `sluice` prints the extra to install and exits 2."""
    hide = textwrap.dedent("""
        import sys
        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "typer":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Hide())
        sys.argv = ["sluice", "status"]
        from ledger.cli.launcher import main
        main()
    """)
    out = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "missing module 'typer'" in out.stderr
    assert "pip install 'sluice[server]'" in out.stderr


@pytest.mark.parametrize(("command", "usage"), [("call", "usage: sluice dev call [-h] --model MODEL"),
                                               ("budgets", "usage: sluice dev budgets [-h] [--api API]")])
def test_dev_commands_run_without_any_server_library(command: str, usage: str) -> None:
    """`sluice dev call` and `dev budgets` are light: with every server library hidden they still parse, and
    import none of them."""
    hide = textwrap.dedent("""
        import json, sys
        SERVER = {"typer", "rich", "click", "web3", "eth_account", "eth_utils", "pydantic", "pydantic_settings",
                  "psycopg", "celery", "fastapi", "starlette", "orjson"}
        class Hide:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in SERVER:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Hide())
        sys.argv = ["sluice", "dev", "COMMAND", "--help"]
        from ledger.cli.launcher import main
        try:
            main()
        finally:
            print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in SERVER)), file=sys.stderr)
    """).replace("COMMAND", command)
    out = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(usage)
    assert json.loads(out.stderr) == []


def _copy_distribution(into: Path) -> Path:
    source = into / "sluice-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("ledger", "redemption", "inference_node"):
        shutil.copytree(REPO / package, source / package, ignore=ignore)
    return source


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


@pytest.mark.slow
def test_a_fresh_virtualenv_with_only_the_client_makes_a_paid_call(deployed: Deployed, tmp_path: Path) -> None:
    source = _copy_distribution(tmp_path)
    env_dir = tmp_path / "client-venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    quiet = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # The wheel a developer would download, built first; then the install from it is what is timed.
    subprocess.run([python, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, timeout=300, env=quiet, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("sluice-*.whl")
    before = _size_mb(site)
    started = time.monotonic()
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True, timeout=300,
                   env=quiet, capture_output=True)
    seconds = time.monotonic() - started
    added = _size_mb(site) - before
    listed = json.loads(subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True,
                                       text=True, check=True).stdout)
    installed = sorted(p["name"].lower().replace("_", "-") for p in listed if p["name"] not in ("pip", "setuptools"))
    print(f"client install: {seconds:.1f} s, {added:.1f} MB, {len(installed)} packages: {installed}")
    assert set(installed) == {"sluice", "httpx", "httpcore", "h11", "anyio", "idna", "certifi",
                              "typing-extensions", "coincurve", "pycryptodome"}
    assert added < 30

    found = _probe(python)
    assert set(found["tops"]) - {"__main__", "_distutils_hack"} <= CLIENT_TOP_MODULES

    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    call = textwrap.dedent("""
        import json, sys
        import httpx
        from redemption.sdk import SluiceAuth, fetch_budget, fetch_discovery
        api, key, model = sys.argv[1:4]
        auth = SluiceAuth(key, max_cost=10**17)
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
        plain = httpx.post(api + "/v1/chat/completions", json=body, auth=auth, timeout=30)
        with httpx.Client(auth=auth, timeout=30) as client, client.stream(
                "POST", api + "/v1/chat/completions", json={**body, "stream": True}) as streamed:
            for _ in streamed.iter_lines():
                pass
        budget = fetch_budget(api, key)
        print(json.dumps({"status": plain.status_code, "header": plain.headers.get("Sluice-Cost"),
                          "total": auth.total_cost, "last": auth.last_cost, "escrow": budget.escrow_available,
                          "chain_id": fetch_discovery(api)["chain_id"]}))
    """)
    out = subprocess.run([python, "-c", call, deployed.api, "0x" + enterprise.key.hex(), SMALL_MODEL],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == 200 and result["chain_id"] == 31337
    plain_cost = int(result["header"])
    assert result["last"] > 0 and result["total"] == plain_cost + result["last"]
    assert result["escrow"] == 10 * 10**18 - result["total"]

    sluice = subprocess.run([str(env_dir / "bin" / "sluice"), "status"], capture_output=True, text=True, timeout=60)
    assert sluice.returncode == 2
    assert "pip install 'sluice[server]'" in sluice.stderr
