"""Ticket checks: only a valid, unexpired ticket for this node and model reaches vLLM, and only once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from inference_node.agent.bounds import CHAT
from inference_node.agent.tickets import SpentTickets, TicketGate
from inference_node.protocol import RECEIPT_HEADER, TICKET_HEADER, DispatchInfo
from tests.inference_node.agent.support import CHAT_MESSAGES, HTTP, OTHER_NODE, STRANGER, RunningServer, chat, issue


def _tampered() -> str:
    _, header = issue()
    data = json.loads(header)
    signature = bytearray.fromhex(data["signature"][2:])
    signature[10] ^= 0x01
    data["signature"] = "0x" + signature.hex()
    return json.dumps(data)


REJECTIONS: dict[str, tuple[Callable[[], str | None], dict[str, Any], int, str]] = {
    "missing header": (lambda: None, chat(), 401, "invalid_ticket"),
    "malformed header": (lambda: '{"job_id": "0x12"}', chat(), 401, "invalid_ticket"),
    "tampered signature": (_tampered, chat(), 401, "invalid_ticket"),
    "wrong signer": (lambda: issue(signer=STRANGER)[1], chat(), 401, "invalid_ticket"),
    "other node": (lambda: issue(node=OTHER_NODE.address)[1], chat(), 401, "invalid_ticket"),
    "expired": (lambda: issue(expires_in=-60)[1], chat(), 401, "ticket_expired"),
    "model mismatch": (lambda: issue(model="another-model")[1], chat(), 400, "model_mismatch"),
    "no model": (lambda: issue()[1], {"messages": CHAT_MESSAGES}, 400, "model_mismatch"),
}


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_requests_without_a_valid_ticket_never_reach_vllm(agent: RunningServer, sim: RunningServer, case: str) -> None:
    make_header, body, status, code = REJECTIONS[case]
    header = make_header()
    generated = sim.metric("vllm:request_success_total")
    response = HTTP.post(agent.base_url + CHAT.path, json=body, headers={TICKET_HEADER: header} if header else {})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert RECEIPT_HEADER not in response.headers
    assert sim.metric("vllm:request_success_total") == generated


def test_a_ticket_is_accepted_once(agent: RunningServer) -> None:
    _, header = issue()
    first = HTTP.post(agent.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: header})
    replay = HTTP.post(agent.base_url + CHAT.path, json=chat(), headers={TICKET_HEADER: header})
    assert first.status_code == 200
    assert (replay.status_code, replay.json()["error"]["code"]) == (409, "ticket_replayed")
    rejections = agent.metric("sluice_node_ticket_rejections_total", code="ticket_replayed")
    assert rejections >= 1


def test_spent_tickets_forget_only_what_has_expired() -> None:
    spent = SpentTickets(grace_seconds=5)
    assert spent.spend(b"a", expires=100, now=90)
    assert not spent.spend(b"a", expires=100, now=104)
    assert spent.spend(b"b", expires=200, now=106)  # prunes "a": its ticket is refused as expired by now
    assert len(spent) == 1


@pytest.mark.parametrize("signer", ["0x12", "not an address", "0x" + "zz" * 20])
def test_a_dispatch_signer_that_is_no_address_is_refused_before_any_ticket(signer: str) -> None:
    gate = TicketGate(OTHER_NODE.address, clock_skew=5, max_lifetime=60)
    with pytest.raises(ValueError):
        gate.use_dispatch(DispatchInfo(chain_id=1, settlement="0x" + "11" * 20, dispatch_signer=signer))
    assert gate.dispatch is None and gate.domains is None  # the gate still refuses every ticket as not ready
