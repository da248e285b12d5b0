"""The wire protocol between the redemption service and inference nodes.

Dispatch: the service forwards an OpenAI request to a node's agent with a
`Sluice-Ticket` header, the EIP-712 `DispatchTicket` (ledger.protocol.eip712) signed by the
service's dispatch key. The agent accepts a ticket once, before it expires, when
it names the agent's own node address and the request's model.

Receipt: the agent signs an EIP-712 `UsageReceipt` with its node key.
- non-streamed responses carry it in the `Sluice-Receipt` response header;
- streamed responses carry it as a last SSE event before `data: [DONE]`:
  `event: sluice.receipt` / `data: <receipt JSON>`;
- when the service hangs up mid-stream (its client disconnected), the agent aborts
  generation and POSTs the receipt for what was generated to the service's
  `POST /internal/receipts`.

Registration and heartbeats: agents `POST /internal/nodes/heartbeat` a
`NodeHeartbeat` signed (EIP-191) by the node key; the service learns the ticket
signer and chain from `GET /internal/dispatch`.

Every header value is compact JSON; byte fields are 0x-hex; integers are decimal strings
where they may exceed 2**53.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, Field

from ledger.domain import TierName
from ledger.protocol.eip712 import DispatchTicket, UsageReceipt

TICKET_HEADER = "Sluice-Ticket"
RECEIPT_HEADER = "Sluice-Receipt"
RECEIPT_EVENT = "sluice.receipt"
RECEIPTS_PATH = "/internal/receipts"
HEARTBEAT_PATH = "/internal/nodes/heartbeat"
DISPATCH_INFO_PATH = "/internal/dispatch"
# The agent counts a request's prompt tokens at PROMPT_TOKENS_PATH + the generation path (e.g.
# /sluice/prompt-tokens/v1/chat/completions), so the service can hold for the prompt vLLM will bill.
PROMPT_TOKENS_PATH = "/sluice/prompt-tokens"


class ProtocolError(ValueError):
    """A ticket, receipt or heartbeat that cannot be decoded."""


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _unhex(value: Any, length: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ProtocolError(f"expected 0x-hex, got {value!r}")
    try:
        raw = bytes.fromhex(value[2:])
    except ValueError:
        raise ProtocolError(f"not hex: {value!r}") from None
    if length is not None and len(raw) != length:
        raise ProtocolError(f"expected {length} bytes, got {len(raw)}")
    return raw


_DECIMAL = re.compile(r"[0-9]{1,78}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _uint(value: Any) -> int:
    # int() alone would take "1_000", " 7 " and non-ASCII digits, and nothing would stop a value past uint256.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ProtocolError(f"expected an integer, got {value!r}")
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):
        raise ProtocolError(f"expected a decimal integer, got {value!r}")
    number = int(value)
    if not 0 <= number < 2**256:
        raise ProtocolError(f"expected a uint256, got {value!r}")
    return number


def _address(value: Any) -> str:
    # Checked here so that hashing a decoded ticket or receipt cannot fail later on a malformed address.
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise ProtocolError(f"expected a 0x-prefixed 20-byte address, got {value!r}")
    return value


def _dumps(fields: dict[str, Any]) -> str:
    # orjson writes what json.dumps(separators=(",", ":")) writes for these ASCII-only fields, in a tenth of the
    # time; an integer past 64 bits (orjson's TypeError) still encodes, through json.
    try:
        return orjson.dumps(fields).decode()
    except TypeError:
        return json.dumps(fields, separators=(",", ":"))


def _loads(text: str) -> Any:
    # The agent decodes a ticket and the service a receipt on every call; orjson's errors are json.JSONDecodeErrors.
    data = orjson.loads(text)
    if isinstance(data, dict) and any(type(value) is float for value in data.values()):
        data = json.loads(text)  # orjson reads an integer past 64 bits as a float: json keeps it exact
    return data


@dataclass(frozen=True)
class SignedTicket:
    ticket: DispatchTicket
    signature: bytes

    def encode(self) -> str:
        t = self.ticket
        return _dumps({
            "job_id": _hex(t.job_id), "node": t.node, "payer": t.payer, "spender": t.spender,
            "model": _hex(t.model), "max_tokens": t.max_tokens, "input_rate": str(t.input_rate),
            "output_rate": str(t.output_rate), "request_digest": _hex(t.request_digest), "expires": t.expires,
            "signature": _hex(self.signature),
        })

    @classmethod
    def decode(cls, header: str) -> SignedTicket:
        try:
            data = _loads(header)
            ticket = DispatchTicket(
                job_id=_unhex(data["job_id"], 32), node=_address(data["node"]), payer=_address(data["payer"]),
                spender=_address(data["spender"]), model=_unhex(data["model"], 32),
                max_tokens=_uint(data["max_tokens"]),
                input_rate=_uint(data["input_rate"]), output_rate=_uint(data["output_rate"]),
                request_digest=_unhex(data["request_digest"], 32), expires=_uint(data["expires"]),
            )
            return cls(ticket, _unhex(data["signature"], 65))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"malformed {TICKET_HEADER}: {exc}") from None


@dataclass(frozen=True)
class SignedReceipt:
    receipt: UsageReceipt
    signature: bytes
    node: str

    def to_json(self) -> dict[str, Any]:
        r = self.receipt
        return {
            "job_id": _hex(r.job_id), "payer": r.payer, "spender": r.spender, "model": _hex(r.model),
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens, "cost": str(r.cost),
            "request_digest": _hex(r.request_digest), "node": self.node, "signature": _hex(self.signature),
        }

    def encode(self) -> str:
        return _dumps(self.to_json())

    @classmethod
    def from_json(cls, data: Any) -> SignedReceipt:
        try:
            receipt = UsageReceipt(
                job_id=_unhex(data["job_id"], 32), payer=_address(data["payer"]), spender=_address(data["spender"]),
                model=_unhex(data["model"], 32), prompt_tokens=_uint(data["prompt_tokens"]),
                completion_tokens=_uint(data["completion_tokens"]), cost=_uint(data["cost"]),
                request_digest=_unhex(data["request_digest"], 32),
            )
            return cls(receipt, _unhex(data["signature"], 65), _address(data["node"]))
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed receipt: {exc}") from None

    @classmethod
    def decode(cls, text: str) -> SignedReceipt:
        try:
            return cls.from_json(_loads(text))
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"malformed receipt JSON: {exc}") from None


# The signature field's value while a heartbeat is built, before it is signed (the signing text omits it).
UNSIGNED = "0x" + "00" * 65


class NodeHeartbeat(BaseModel):
    """What an agent tells the service every few seconds (and on start, to register)."""

    node: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$", description="the node's receipt-signing address")
    url: str = Field(min_length=1, max_length=2048,
                     description="base URL of the agent, e.g. http://10.0.0.5:9100 (its NodeRegistry endpoint)")
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=64)
    tier: TierName
    region: str = Field(max_length=128)
    capacity: int = Field(ge=1, le=1_000_000, description="concurrent sequences the node serves (vLLM max_num_seqs)")
    running: int = Field(ge=0, le=1_000_000_000, description="vllm:num_requests_running")
    waiting: int = Field(ge=0, le=1_000_000_000, description="vllm:num_requests_waiting")
    timestamp: int = Field(ge=0, le=2**40, description="unix seconds; stale heartbeats are refused")
    signature: str = Field(pattern=r"^0x[0-9a-fA-F]{130}$",
                           description="EIP-191 signature (65 bytes, 0x-hex) by `node` over `signing_text()`")

    def signing_text(self) -> str:
        fields = self.model_dump(exclude={"signature"})
        return "sluice-node-heartbeat:" + json.dumps(fields, sort_keys=True, separators=(",", ":"))


class DispatchInfo(BaseModel):
    """`GET /internal/dispatch`: what an agent needs to check tickets."""

    chain_id: int
    settlement: str
    dispatch_signer: str


class PromptTokenBound(BaseModel):
    """The agent's answer at PROMPT_TOKENS_PATH: an upper bound on the prompt tokens vLLM will bill the request."""

    prompt_tokens: int = Field(ge=0, description="vLLM's usage.prompt_tokens for this body will not exceed this")
    exact: bool = Field(description="counted with the model's tokenizer (true) or bounded by its context (false)")
    reason: str | None = Field(default=None, description="why the count is not exact, when it is not")


# Chat fields the chat template renders into the prompt in ways a text-only count (or the body's size) does not
# bound: tool schemas, documents, a request's own template, multimodal processing, prompt embeddings.
UNCOUNTED_CHAT_FIELDS = ("tools", "functions", "documents", "chat_template", "mm_processor_kwargs", "prompt_embeds",
                         "reasoning_effort")  # fmt: skip


def uncounted_reason(body: dict[str, Any], *, chat: bool) -> str | None:
    """Why `body`'s prompt tokens are not bounded by its text (None: text only, so its size and /tokenize bound it).

    Images and other non-text parts, tool schemas, assistant tool calls, request-supplied chat templates and
    prompt embeddings become prompt tokens that are not bytes of the body. Shapes it does not know are left
    to the validation of whoever reads the body.
    """
    if not chat:
        return "`prompt_embeds` carry no tokens to count" if body.get("prompt_embeds") is not None else None
    for field in UNCOUNTED_CHAT_FIELDS:
        if body.get(field) is not None:
            return f"`{field}` is rendered into the prompt by the chat template"
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    return f"a message part of type {kind!r} is not text"
        if message.get("tool_calls") is not None:
            return "assistant `tool_calls` are rendered into the prompt by the chat template"
    return None
