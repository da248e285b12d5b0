"""`Ledger` over LightWeb3 (plain JSON-RPC, eth_abi) reads exactly what it reads over web3, reverts included,
and the CLI's read commands run without importing web3."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ledger.chain.client import Ledger
from ledger.chain.light import LightRpcError, light_connect
from ledger.errors import ChainUnavailable, ContractRevert
from ledger.units import ONE_TOKEN
from tests.support.ledger import Actors


def test_every_view_reads_the_same_as_over_web3(ledger: Ledger, escrowed: Actors) -> None:
    enterprise, developer = escrowed.enterprise, escrowed.developer
    ledger.set_budget(enterprise, developer.address, 7 * ONE_TOKEN)
    ledger.request_withdrawal(enterprise, 100 * ONE_TOKEN)
    light = Ledger(light_connect(ledger.w3.provider.endpoint_uri), ledger.deployment)  # type: ignore[attr-defined]
    for read in (lambda lg: lg.rates(), lambda lg: lg.sale_tiers(), lambda lg: lg.quote_purchase(1234 * ONE_TOKEN),
                 lambda lg: lg.balance_of(enterprise.address), lambda lg: lg.is_allowlisted(enterprise.address),
                 lambda lg: lg.escrow_of(enterprise.address), lambda lg: lg.pending_withdrawal_of(enterprise.address),
                 lambda lg: lg.budget_of(enterprise.address, developer.address), lambda lg: lg.unlock_period(),
                 lambda lg: lg.nodes(), lambda lg: lg.payment_balance(enterprise.address), lambda lg: lg.paused(),
                 lambda lg: lg.has_role("MINTER_ROLE", escrowed.operator.address), lambda lg: lg.escrow_address(),
                 lambda lg: lg.payment_token.functions.symbol().call(),
                 lambda lg: lg.payment_token.functions.decimals().call()):
        assert read(light) == read(ledger)
    assert light.budget_of(enterprise.address, developer.address).remaining == 7 * ONE_TOKEN
    assert light.w3.eth.block_number == ledger.w3.eth.block_number
    assert light.w3.eth.chain_id == 31337


def test_a_revert_is_the_same_typed_error(ledger: Ledger) -> None:
    light = Ledger(light_connect(ledger.w3.provider.endpoint_uri), ledger.deployment)  # type: ignore[attr-defined]
    errors = []
    for lg in (ledger, light):
        with pytest.raises(ContractRevert) as refused:
            lg.rate("no/such-model")
        errors.append((type(refused.value), refused.value.error, refused.value.args_by_name))
    assert errors[0] == errors[1] and errors[0][1] == "RateCardUnknownModel"


def test_a_chain_that_does_not_answer_is_chain_unavailable_and_an_rpc_error_names_its_method(ledger: Ledger) -> None:
    with pytest.raises(ChainUnavailable, match=re.escape("the chain at http://127.0.0.1:9 does not answer")):
        light_connect("http://127.0.0.1:9", timeout=2)
    light = light_connect(ledger.w3.provider.endpoint_uri)  # type: ignore[attr-defined]
    with pytest.raises(LightRpcError, match=r"^eth_noSuchMethod failed: ") as refused:
        light.eth.rpc.request("eth_noSuchMethod", [])
    assert refused.value.code == -32601


def test_read_commands_import_no_web3(home: Path) -> None:
    probe = textwrap.dedent("""
        import sys
        sys.argv = ["sluice", *sys.argv[1:]]
        from ledger.cli.launcher import main
        try:
            main()
        except SystemExit as exit_:
            assert not exit_.code, exit_.code
        print("web3 loaded" if "web3" in sys.modules else "no web3", file=sys.stderr)
    """)
    for command in (["wallet", "quote", "10"], ["admin", "rates", "list"], ["admin", "nodes", "list"],
                    ["wallet", "balance", "0x" + "11" * 20], ["wallet", "budget", "list", "0x" + "11" * 20]):
        out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stderr.splitlines()[-1] == "no web3", command
