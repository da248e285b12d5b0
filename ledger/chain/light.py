"""Chain reads without web3: the subset of `Web3` that `Ledger`'s views use, over plain JSON-RPC.

Importing web3 (with eth-account and aiohttp behind it) costs more than everything else a read
command does; a read needs only `eth_call`, a block number and some logs. `LightWeb3` answers
`w3.eth.contract(address=, abi=).functions.name(*args).call()`, `w3.eth.chain_id`, `w3.eth.block_number`,
`w3.eth.get_block("latest")` and `w3.eth.get_logs(...)` from the artifacts' ABIs with eth_abi and a
stdlib HTTP client, so `Ledger(LightWeb3(url), deployment)` serves every view and no write.
A revert comes back as the ledger's typed `ContractRevert`; a node that does not answer as `ChainUnavailable`.
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode

from ledger.errors import ChainUnavailable, LedgerError, decode_revert
from ledger.protocol.address import to_checksum_address
from ledger.protocol.keccak import keccak256


class LightRpcError(LedgerError):
    """The node answered a JSON-RPC request with an error object (not a revert)."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.code = error.get("code")
        self.message = str(error.get("message", error))
        super().__init__(f"{method} failed: {self.message} (code {self.code})")


class JsonRpcClient:
    """One JSON-RPC endpoint over HTTP, a request per call."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        self._ids = itertools.count(1)

    def request(self, method: str, params: Sequence[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)})
        request = urllib.request.Request(self.url, body.encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ChainUnavailable(f"the chain at {self.url} does not answer ({exc.__class__.__name__})") from exc
        if "error" in answer:
            error = answer["error"] if isinstance(answer["error"], dict) else {"message": str(answer["error"])}
            data = error.get("data")
            if method == "eth_call" and (isinstance(data, str) or "revert" in str(error.get("message", ""))):
                raise decode_revert(data if isinstance(data, str) else None)
            raise LightRpcError(method, error)
        return answer.get("result")


def _type_of(param: dict[str, Any]) -> str:
    """The ABI type string of a parameter, tuples spelled out from their components."""
    kind = str(param["type"])
    if kind.startswith("tuple"):
        return "(" + ",".join(_type_of(c) for c in param.get("components", [])) + ")" + kind[len("tuple"):]
    return kind


def _checksummed(kind: str, value: Any) -> Any:
    """Addresses as web3 returns them: EIP-55 checksummed, inside arrays and tuples too."""
    if kind == "address":
        return to_checksum_address(value)
    if kind.endswith("]"):
        inner = kind[: kind.rindex("[")]
        return [_checksummed(inner, v) for v in value]
    if kind.startswith("("):
        return tuple(_checksummed(t, v) for t, v in zip(_split_tuple(kind), value, strict=True))
    return value


def _split_tuple(kind: str) -> list[str]:
    inner, depth, start, parts = kind[1:-1], 0, 0, []
    for i, ch in enumerate(inner):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    if inner:
        parts.append(inner[start:])
    return parts


class LightCall:
    """One bound view call: `.call()` runs it at the latest block."""

    def __init__(self, contract: LightContract, abi: dict[str, Any], args: Sequence[Any]) -> None:
        self.contract, self.abi, self.args = contract, abi, args
        self.address = contract.address
        self.inputs = [_type_of(p) for p in abi.get("inputs", [])]
        self.outputs = [_type_of(p) for p in abi.get("outputs", [])]

    def call(self) -> Any:
        signature = f"{self.abi['name']}({','.join(self.inputs)})"
        data = keccak256(signature.encode())[:4] + abi_encode(self.inputs, list(self.args))
        raw = self.contract.eth.rpc.request("eth_call", [{"to": self.address, "data": "0x" + data.hex()}, "latest"])
        decoded = abi_decode(self.outputs, bytes.fromhex(str(raw).removeprefix("0x")))
        values = [_checksummed(t, v) for t, v in zip(self.outputs, decoded, strict=True)]
        return values[0] if len(values) == 1 else values


class _Functions:
    def __init__(self, contract: LightContract) -> None:
        self._contract = contract

    def __getattr__(self, name: str) -> Any:
        candidates = [e for e in self._contract.abi if e.get("type") == "function" and e.get("name") == name]
        if not candidates:
            raise AttributeError(f"the contract at {self._contract.address} has no function {name!r}")

        def bind(*args: Any) -> LightCall:
            fitting = [e for e in candidates if len(e.get("inputs", [])) == len(args)]
            if not fitting:
                raise TypeError(f"{name} takes {len(candidates[0].get('inputs', []))} arguments, not {len(args)}")
            return LightCall(self._contract, fitting[0], args)

        return bind


class LightContract:
    """A contract's views by name, like web3's `Contract.functions` (calls only)."""

    def __init__(self, eth: LightEth, address: str, abi: list[dict[str, Any]]) -> None:
        self.eth, self.address, self.abi = eth, to_checksum_address(address), abi
        self.functions = _Functions(self)


class LightEth:
    def __init__(self, rpc: JsonRpcClient) -> None:
        self.rpc = rpc
        self._chain_id: int | None = None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.rpc.request("eth_chainId", []), 16)
        return self._chain_id

    @property
    def block_number(self) -> int:
        return int(self.rpc.request("eth_blockNumber", []), 16)

    def get_block(self, block: str | int) -> dict[str, Any]:
        tag = block if isinstance(block, str) else hex(block)
        raw = self.rpc.request("eth_getBlockByNumber", [tag, False])
        return {**raw, "number": int(raw["number"], 16), "timestamp": int(raw["timestamp"], 16)}

    def get_logs(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        """Logs as web3 gives them: topics and data as bytes, numbers as ints."""
        params = {k: hex(v) if isinstance(v, int) else v for k, v in query.items()}
        return [{**log, "topics": [bytes.fromhex(t[2:]) for t in log["topics"]],
                 "data": bytes.fromhex(log["data"][2:]), "blockNumber": int(log["blockNumber"], 16),
                 "logIndex": int(log["logIndex"], 16)} for log in self.rpc.request("eth_getLogs", [params])]

    def contract(self, *, address: str, abi: list[dict[str, Any]]) -> LightContract:
        return LightContract(self, address, abi)


class LightWeb3:
    """The read-only stand-in for `Web3` (see the module docstring)."""

    def __init__(self, rpc_url: str, timeout: float = 30.0) -> None:
        self.eth = LightEth(JsonRpcClient(rpc_url, timeout))


def light_connect(rpc_url: str, timeout: float = 30.0) -> LightWeb3:
    """A read-only connection to `rpc_url`; raises ChainUnavailable when it does not answer."""
    w3 = LightWeb3(rpc_url, timeout)
    w3.eth.chain_id  # noqa: B018 - a cheap round trip proves the endpoint answers
    return w3
