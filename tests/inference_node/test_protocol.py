"""Wire formats of tickets and receipts: what the agent decodes and writes per call, byte for byte."""

from __future__ import annotations

import json

import pytest

from inference_node.protocol import ProtocolError, SignedReceipt, SignedTicket
from ledger.protocol.eip712 import UsageReceipt
from tests.inference_node.agent.support import NODE, issue


def test_a_receipt_encodes_as_compact_json_and_decodes_to_itself() -> None:
    ticket, _ = issue()
    receipt = UsageReceipt(job_id=ticket.job_id, payer=ticket.payer, spender=ticket.spender, model=ticket.model,
                           prompt_tokens=17, completion_tokens=2**70, cost=3 * 2**200,
                           request_digest=ticket.request_digest)  # fmt: skip
    signed = SignedReceipt(receipt, bytes(range(65)), NODE.address)
    assert signed.encode() == json.dumps(signed.to_json(), separators=(",", ":"))
    assert SignedReceipt.decode(signed.encode()) == signed


def test_a_ticket_header_decodes_to_the_ticket_signed() -> None:
    ticket, header = issue()
    assert SignedTicket.decode(header).ticket == ticket
    assert SignedTicket.decode(header).encode() == header


@pytest.mark.parametrize("header", ["", "{", "[1]", '{"job_id": "0x12"}', "NaN", '{"a": 1, "a": 2}'])
def test_a_malformed_ticket_header_is_a_protocol_error(header: str) -> None:
    with pytest.raises(ProtocolError):
        SignedTicket.decode(header)


def test_a_ticket_integer_past_64_bits_decodes_exactly() -> None:
    _, header = issue()
    data = json.loads(header)
    data["max_tokens"] = 2**70
    assert SignedTicket.decode(json.dumps(data)).ticket.max_tokens == 2**70
