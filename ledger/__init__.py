"""Sluice ledger: chain access, contract bindings, deployment and the embedded stack."""

__version__ = "0.1.0"
