"""The CLI's start-up: eth-keyfile's import binds stand-ins for py_ecc's BLS suite, which still works when used."""

from __future__ import annotations

import json
import subprocess
import sys

from ledger.cli.startup import BLS12_381_CURVE_ORDER

PROBE = """
import json, sys
from ledger.cli.startup import defer_bls_keystores
defer_bls_keystores()
import web3  # noqa: F401  (what every chain command imports)
import eth_keyfile.keyfile as keyfile
from eth_account import Account
deferred = "py_ecc.optimized_bls12_381" not in sys.modules and "py_ecc.bls" not in sys.modules
account = Account.create()
keystore = Account.encrypt(account.key, "pw", kdf="scrypt", iterations=2**4)
decrypted = Account.decrypt(keystore, "pw") == account.key
pubkey = keyfile.bls.SkToPk(7).hex()  # the stand-in imports the real suite when used
from py_ecc.bls import G2ProofOfPossession
print(json.dumps({"deferred": deferred, "decrypted": decrypted, "max_v4": keyfile.MAX_V4_PRIVATE_KEY,
                  "pubkey_ok": pubkey == G2ProofOfPossession.SkToPk(7).hex(),
                  "real_bls": type(sys.modules["py_ecc.bls"]).__name__}))
"""


def test_curve_order_stand_in_is_py_eccs() -> None:
    from py_ecc.bls12_381 import curve_order

    assert curve_order == BLS12_381_CURVE_ORDER


def test_keyfile_imports_without_bls_tables_and_keystores_still_work() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout) == {"deferred": True, "decrypted": True, "max_v4": BLS12_381_CURVE_ORDER - 1,
                                      "pubkey_ok": True, "real_bls": "module"}


def test_help_imports_no_chain_library() -> None:
    probe = ("import sys\nfrom ledger.cli.app import app\n"
             "print(sorted(m for m in ('web3', 'eth_account', 'psycopg', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_paused_selector_is_keccak_of_the_signature() -> None:
    from ledger.protocol.keccak import keccak256
    from ledger.stack.operations import PAUSED_SELECTOR

    assert "0x" + keccak256(b"paused()")[:4].hex() == PAUSED_SELECTOR
