"""Ticket checks: a call runs only with a ``Sluice-Ticket`` signed by the service's dispatch key,
naming this node and the request's model, unexpired and never seen before.
"""

from __future__ import annotations

import heapq
import time

from eth_hash.auto import keccak

from inference_node.agent.errors import InvalidTicket, NodeNotReady, TicketExpired, TicketReplayed
from inference_node.protocol import TICKET_HEADER, DispatchInfo, ProtocolError, SignedTicket
from ledger.protocol.abi import address_word
from ledger.protocol.eip712 import DispatchTicket, Domains, typed_digest
from ledger.protocol.secp256k1 import SignatureError, recover_address


class SpentTickets:
    """Job ids already admitted, kept until their ticket would be refused as expired anyway."""

    def __init__(self, grace_seconds: float) -> None:
        self._grace = grace_seconds
        self._spent: set[bytes] = set()
        self._by_expiry: list[tuple[int, bytes]] = []

    def spend(self, job_id: bytes, expires: int, now: float) -> bool:
        """Record `job_id`; False if it was already spent."""
        while self._by_expiry and self._by_expiry[0][0] + self._grace < now:
            self._spent.discard(heapq.heappop(self._by_expiry)[1])
        if job_id in self._spent:
            return False
        self._spent.add(job_id)
        heapq.heappush(self._by_expiry, (expires, job_id))
        return True

    def __len__(self) -> int:
        return len(self._spent)


class TicketGate:
    """Admits requests by their dispatch ticket once the dispatch signer and the EIP-712 domains are known."""

    def __init__(self, node: str, *, clock_skew: float, max_lifetime: float) -> None:
        self._node = node
        self._node_lower = node.lower()
        self._clock_skew = clock_skew
        self._max_lifetime = max_lifetime
        self._spent = SpentTickets(clock_skew)
        self.dispatch: DispatchInfo | None = None
        self.domains: Domains | None = None
        self._signer = b""  # the dispatch signer's 20 bytes: recovery gives bytes, so no checksumming per call
        self._ticket_domain = b""
        self._model_names: dict[bytes, str] = {}  # ticket model hash -> the name that hashed to it

    def use_dispatch(self, info: DispatchInfo) -> None:
        """Check tickets against `info` from now on; ValueError when its signer or settlement is no address."""
        domains = Domains(info.chain_id, info.settlement)
        self._ticket_domain = domains.ticket
        self._signer = address_word(info.dispatch_signer)[12:]
        self.dispatch, self.domains = info, domains

    def admit(self, header: str | None) -> DispatchTicket:
        """The ticket of a request, if it is signed by the dispatch key, for this node and unexpired."""
        dispatch, domains = self.dispatch, self.domains
        if dispatch is None or domains is None:
            raise NodeNotReady("the node has not yet learned the dispatch signer from the service")
        if header is None:
            raise InvalidTicket(f"missing {TICKET_HEADER} header", param=TICKET_HEADER)
        try:
            signed = SignedTicket.decode(header)
            ticket = signed.ticket
            signer = recover_address(typed_digest(self._ticket_domain, ticket.struct_hash()), signed.signature)
        except (ProtocolError, SignatureError, ValueError) as exc:  # ValueError: a field that cannot be hashed
            raise InvalidTicket(f"unreadable {TICKET_HEADER}: {exc}", param=TICKET_HEADER) from None
        if signer != self._signer:
            raise InvalidTicket("the ticket is not signed by the dispatch key", param=TICKET_HEADER)
        if ticket.node.lower() != self._node_lower:
            raise InvalidTicket(f"the ticket is for node {ticket.node}, not {self._node}", param=TICKET_HEADER)
        now = time.time()
        if ticket.expires + self._clock_skew < now:
            raise TicketExpired(f"the ticket expired at {ticket.expires}", param=TICKET_HEADER)
        if ticket.expires > now + self._max_lifetime + self._clock_skew:
            raise InvalidTicket("the ticket expires further ahead than this node accepts", param=TICKET_HEADER)
        return ticket

    def is_ticket_model(self, model: str, ticket: DispatchTicket) -> bool:
        """Whether `model` is the name whose hash the ticket carries."""
        if self._model_names.get(ticket.model) == model:
            return True
        if keccak(model.encode()) != ticket.model:
            return False
        self._model_names[ticket.model] = model  # only names that matched a signed ticket, so a handful
        return True

    def spend(self, ticket: DispatchTicket) -> None:
        """Mark the ticket's job as dispatched here; a second time is a replay."""
        if not self._spent.spend(ticket.job_id, ticket.expires, time.time()):
            raise TicketReplayed(f"job 0x{ticket.job_id.hex()} was already dispatched here", param=TICKET_HEADER)
