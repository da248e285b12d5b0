"""The Web3 connection to the chain's JSON-RPC endpoint."""

from __future__ import annotations

import requests
from web3 import Web3

from ledger.errors import ChainUnavailable


def connect(rpc_url: str, timeout: float = 30.0) -> Web3:
    """A Web3 connection to `rpc_url`; raises ChainUnavailable when it does not answer."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    try:
        w3.eth.chain_id  # noqa: B018 - a cheap round trip proves the endpoint answers
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise ChainUnavailable(f"the chain at {rpc_url} does not answer ({exc.__class__.__name__})") from exc
    return w3
