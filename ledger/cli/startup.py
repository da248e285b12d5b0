"""What the `sluice` process arranges before any command runs, to keep each command's start-up short.

web3 imports eth-account, which imports eth-keyfile, which imports py_ecc's BLS12-381 signature suite at
module level for EIP-2335 validator keystores. Importing it computes pairing tables: about 0.6 s of CPU,
a third of web3's whole import, on every command that touches the chain, for keystores Sluice never
reads or writes. `defer_bls_keystores` lets eth-keyfile's import bind stand-ins instead: the curve
order as the constant it is, and the signature suite as an object that imports the real one when first
used. Only eth-keyfile's own import sees them; everything else imports py_ecc as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Sequence
from typing import Any

# The order of BLS12-381's prime subgroup (py_ecc.bls12_381.curve_order; a test checks they agree).
BLS12_381_CURVE_ORDER = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001

_KEYFILE = "eth_keyfile.keyfile"


class _DeferredSuite:
    """Stands for py_ecc.bls.G2ProofOfPossession: the first attribute asked for imports the real suite."""

    def __getattr__(self, name: str) -> Any:
        from py_ecc.bls.ciphersuites import G2ProofOfPossession

        return getattr(G2ProofOfPossession, name)


def _stand_ins() -> dict[str, types.ModuleType]:
    bls = types.ModuleType("py_ecc.bls", "stand-in while eth_keyfile.keyfile imports (ledger.cli.startup)")
    bls.G2ProofOfPossession = _DeferredSuite()  # type: ignore[attr-defined]
    curve = types.ModuleType("py_ecc.bls12_381", "stand-in while eth_keyfile.keyfile imports (ledger.cli.startup)")
    curve.curve_order = BLS12_381_CURVE_ORDER  # type: ignore[attr-defined]
    return {"py_ecc.bls": bls, "py_ecc.bls12_381": curve}


class _KeyfileLoader(importlib.abc.Loader):
    """Runs eth_keyfile.keyfile's real loader with the stand-ins in sys.modules, then takes them out."""

    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        installed = {name: m for name, m in _stand_ins().items() if name not in sys.modules}
        sys.modules.update(installed)
        try:
            self.real.exec_module(module)
        finally:
            for name, stand_in in installed.items():
                if sys.modules.get(name) is stand_in:
                    del sys.modules[name]


class _KeyfileFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _KEYFILE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _KeyfileLoader(spec.loader)
        return spec


def defer_bls_keystores() -> None:
    """Make eth-keyfile's import skip py_ecc's BLS tables (a no-op once it is imported or the hook is in)."""
    if _KEYFILE in sys.modules or any(isinstance(f, _KeyfileFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _KeyfileFinder())
