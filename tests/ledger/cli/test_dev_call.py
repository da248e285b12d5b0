"""`sluice dev call` against the real service: streamed and plain calls with their exact cost and what is left,
keys from the environment or a keystore, and every refusal in words with its code, hint and exit code."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.cli import dev_call
from ledger.domain import usage_cost
from tests.support.stack import SMALL_MODEL, Deployed

PASSWORD = "dev call password"


@pytest.fixture
def developer_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No key, API or password from the environment unless a test sets them; an empty state dir."""
    for var in (dev_call.KEY_ENV, dev_call.API_ENV, dev_call.PASSWORD_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLUICE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def whole_tokens(units: int) -> str:
    """Base units as whole compute tokens, exactly (Decimal, never a float)."""
    return format(Decimal(units).scaleb(-18).normalize(), "f")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`sluice dev call ARGS` in-process: (exit code, stdout, stderr)."""
    try:
        code = dev_call.main(list(args))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_streamed_call_prints_the_text_then_cost_job_and_budget_left(
        deployed: Deployed, developer_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    enterprise = deployed.fund(10)
    developer = deployed.developer(enterprise, 10**17)
    deployed.wait_mirrored()
    monkeypatch.setenv(dev_call.KEY_ENV, "0x" + developer.key.hex())
    code, out, err = run(capsys, "Say hello", "--model", SMALL_MODEL, "--payer", enterprise.address,
                         "--max-tokens", "7", "--api", deployed.api)
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 3
    job = lines[1].removeprefix("job     ")
    (cost, prompt, completion), = deployed.sql(
        "SELECT cost, prompt_tokens, completion_tokens FROM usage_records WHERE job_id = %s", bytes.fromhex(job[2:]))
    rate = deployed.ledger.rate(SMALL_MODEL)
    assert int(cost) == usage_cost(prompt, completion, rate.input_rate, rate.output_rate) > 0
    assert completion == 7
    assert lines[0] == (f"cost    {whole_tokens(int(cost))} compute tokens ({cost} base units); "
                        f"{prompt} prompt + 7 completion model tokens")
    left = 10**17 - int(cost)
    assert lines[2] == (f"left    {whole_tokens(left)} compute tokens ({left} base units) of the "
                        f"budget from {enterprise.address}")
    assert out.endswith("\n") and out.strip()  # the streamed text, then a newline before the summary
    code, plain, _ = run(capsys, "Say hello", "--model", SMALL_MODEL, "--payer", enterprise.address,
                         "--max-tokens", "7", "--api", deployed.api, "--no-stream", "--json")
    assert code == 0
    answer = json.loads(plain)
    assert answer["text"].strip()
    assert answer["usage"]["completion_tokens"] == 7 and answer["finish_reason"] == "length"
    assert (answer["payer"], answer["spender"]) == (enterprise.address, developer.address)
    assert answer["budget_available"] == left - answer["cost"]
    assert answer["escrow_available"] == 10 * 10**18 - int(cost) - answer["cost"]


def test_a_keystore_key_pays_for_itself(deployed: Deployed, developer_env: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    enterprise = deployed.fund(10)
    deployed.wait_mirrored()
    wallets = developer_env / "wallets"
    wallets.mkdir(parents=True)
    keystore = wallets / f"{enterprise.address}.json"
    keystore.write_text(json.dumps(Account.encrypt(enterprise.key, PASSWORD, kdf="scrypt", iterations=2**10)))
    monkeypatch.setenv(dev_call.PASSWORD_ENV, PASSWORD)
    monkeypatch.setenv(dev_call.API_ENV, deployed.api)
    # The only wallet under the state dir, and the same wallet named by its address.
    for chosen in ((), ("--keystore", enterprise.address)):
        code, out, err = run(capsys, "hi", "--model", SMALL_MODEL, "--max-tokens", "2", "--json", *chosen)
        assert code == 0, err
        answer = json.loads(out)
        assert answer["payer"] == answer["spender"] == enterprise.address
        assert answer["budget_available"] is None and answer["usage"]["completion_tokens"] == 2
    monkeypatch.setenv(dev_call.PASSWORD_ENV, "not it")
    code, out, err = run(capsys, "hi", "--model", SMALL_MODEL, "--keystore", str(keystore))
    assert (code, out) == (2, "")
    assert err == (f"error: wrong password for keystore {keystore}\n"
                   "hint: give the password it was created with ($SLUICE_KEYSTORE_PASSWORD or the prompt)\n")


def _refused(capsys: pytest.CaptureFixture[str], key: LocalAccount, monkeypatch: pytest.MonkeyPatch,
             *args: str) -> tuple[int, list[str]]:
    monkeypatch.setenv(dev_call.KEY_ENV, "0x" + key.key.hex())
    code, out, err = run(capsys, "hello there", "--model", SMALL_MODEL, *args)
    assert out == ""
    return code, err.splitlines()


def test_every_refusal_has_its_code_hint_and_exit_code(
        deployed: Deployed, developer_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    enterprise = deployed.fund(10)
    poor = deployed.developer(enterprise, 1)
    stranger: LocalAccount = Account.create()
    deployed.wait_mirrored()
    api = ("--api", deployed.api)

    code, (error, hint) = _refused(capsys, stranger, monkeypatch, "--payer", enterprise.address, *api)
    assert code == 6 and error.startswith("error: 403 no_budget: ")
    assert hint == ("hint: the payer gave this key no budget: check --payer, or ask the payer to give one "
                    f"(`sluice wallet budget set {stranger.address} AMOUNT`)")

    code, (error, hint) = _refused(capsys, poor, monkeypatch, "--payer", enterprise.address, *api)
    assert code == 5 and error.startswith("error: 402 insufficient_budget: ") and "needs a hold of" in error
    assert f"`sluice wallet budget set {poor.address} AMOUNT`" in hint

    code, (error, hint) = _refused(capsys, enterprise, monkeypatch, "--max-cost", "0.000000000000000001", *api)
    assert code == 5 and error.startswith("error: 402 max_cost_too_low: Sluice-Max-Cost 1 does not cover")
    assert hint == "hint: raise --max-cost: it must cover the prompt and at least one completion token"

    monkeypatch.setenv(dev_call.KEY_ENV, "0x" + enterprise.key.hex())
    code, out, err = run(capsys, "hi", "--model", "no/such-model", *api)
    assert code == 3 and err.startswith("error: 404 model_not_found: ")
    assert err.splitlines()[1] == f"hint: no node serves that model: `curl {deployed.api}/v1/models` lists the ones " \
                                  "there are"

    code, out, err = run(capsys, "hi", "--model", SMALL_MODEL, "--api", "http://127.0.0.1:9", "--json")
    assert code == 8
    assert json.loads(out)["error"]["exit_code"] == 8
    assert err.startswith("error: no answer from the service at http://127.0.0.1:9 (ConnectError")


def test_bad_input_and_a_missing_key_are_usage_errors(developer_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "hi", "--model", SMALL_MODEL)
    assert (code, out) == (2, "")
    assert err == (f"error: no developer key: no wallet under {developer_env.resolve() / 'wallets'}\n"
                   f"hint: pass --keystore PATH|ADDRESS, or set {dev_call.KEY_ENV} to the developer's private key\n")
    monkeypatch.setenv(dev_call.KEY_ENV, "0x1234")
    code, _, err = run(capsys, "hi", "--model", SMALL_MODEL)
    assert code == 2 and err == f"error: ${dev_call.KEY_ENV} is not a private key (0x followed by 64 hex digits)\n"
    code, _, err = run(capsys, "hi", "--model", SMALL_MODEL, "--payer", "0xnope")
    assert code == 2 and "--payer '0xnope' is not an Ethereum address" in err
    code, _, err = run(capsys, "hi", "--model", SMALL_MODEL, "--max-cost", "0.0000000000000000001")
    assert code == 2 and err.startswith("error: --max-cost: '0.0000000000000000001' has more than 18 decimal places")
    code, _, err = run(capsys, "hi")
    assert code == 2 and "the following arguments are required: --model" in err


def test_help_lists_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    listed = out[out.index("exit codes:"):]
    assert all(f"\n  {number}  " in listed for number, _ in dev_call.EXIT_CODES.values())
    assert "\n  0  the call succeeded" in listed
    assert max(len(line) for line in out.splitlines()) <= 80
