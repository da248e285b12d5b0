"""Signed-call verification: the five `Sluice-*` headers and the EIP-712 `Redemption` signature.

No chain or database round trip happens here: headers are parsed, the deadline
window checked, the body hashed and the signer recovered with libsecp256k1. The
nonce is consumed later, atomically with the hold (see `store.reserve_hold`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from ledger.protocol.eip712 import Redemption, typed_digest
from ledger.protocol.keccak import keccak256 as keccak
from ledger.protocol.secp256k1 import SignatureError, recover_address
from redemption import errors

PAYER = "sluice-payer"
MAX_COST = "sluice-max-cost"
NONCE = "sluice-nonce"
DEADLINE = "sluice-deadline"
SIGNATURE = "sluice-signature"
SIGNED_HEADERS = ("Sluice-Payer", "Sluice-Max-Cost", "Sluice-Nonce", "Sluice-Deadline", "Sluice-Signature")
UINT256_MAX = 2**256 - 1
DECIMAL = re.compile(r"[0-9]{1,78}")
ADDRESS = re.compile(r"0[xX][0-9a-fA-F]{40}")
SIGNING_HINT = (
    "send the 0x-hex 65-byte low-s EIP-712 signature of the Redemption struct, under the domain from "
    "/.well-known/sluice.json"
)


@dataclass(frozen=True, slots=True)
class VerifiedCall:
    """A call whose signature checked out: `spender` is the recovered signer."""

    spender: str
    payer: str
    max_cost: int
    nonce: int
    deadline: int
    signature: bytes
    body: bytes
    body_hash: bytes
    digest: bytes


def call_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (the first of a repeated one, as Starlette's `Headers.get`)."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


async def receive_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    """`read_body` straight from the ASGI `receive` (the billable fast path has no Starlette Request)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.BodyTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit; send a smaller "
                                  "request")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # http.disconnect: closed mid-body (a 408 from the server's body timeout, or the client left).
            raise errors.RequestTimeout("the request body did not arrive; send the whole request promptly")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise errors.BodyTooLarge(f"request body is over the {limit}-byte limit; send a smaller request")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.BodyTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit; send a smaller "
                                  "request")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise errors.BodyTooLarge(f"request body is over the {limit}-byte limit; send a smaller request")
            chunks.append(chunk)
    except ClientDisconnect:
        # The connection closed mid-body (a 408 from the server's body timeout, or the client left).
        raise errors.RequestTimeout("the request body did not arrive; send the whole request promptly") from None
    return b"".join(chunks)


def _uint_header(headers: Mapping[str, str], name: str, title: str) -> int:
    value = headers[name].strip()
    # Not str.isdigit(): it takes "²", which int() then refuses with a 500.
    if not DECIMAL.fullmatch(value):
        raise errors.InvalidHeader(f"{title} must be a decimal unsigned integer, got {value[:80]!r}", title)
    number = int(value)
    if number > UINT256_MAX:
        raise errors.InvalidHeader(f"{title} does not fit in uint256; send a decimal unsigned integer below 2**256",
                                   title)
    return number


def verify_headers(headers: Mapping[str, str], body: bytes, separator: bytes, max_deadline_seconds: int,
                   now: float | None = None) -> VerifiedCall:
    """Check the signed-call headers (by lower-case name) against `body`; raise the matching ApiError otherwise."""
    missing = [h for h in SIGNED_HEADERS if h.lower() not in headers]
    if missing:
        raise errors.MissingSignature(
            f"missing signed-call headers: {', '.join(missing)}; every billable call carries all of "
            + ", ".join(SIGNED_HEADERS),
            missing[0],
        )
    payer = headers[PAYER].strip()
    # Not is_hex_address(): it also takes 40 hex digits with no 0x, which the slicing below would cut short.
    if not ADDRESS.fullmatch(payer):
        raise errors.InvalidHeader(f"Sluice-Payer must be a 0x address, got {payer[:80]!r}", "Sluice-Payer")
    max_cost = _uint_header(headers, MAX_COST, "Sluice-Max-Cost")
    nonce = _uint_header(headers, NONCE, "Sluice-Nonce")
    deadline = _uint_header(headers, DEADLINE, "Sluice-Deadline")
    now = time.time() if now is None else now
    if deadline < now:
        raise errors.SignatureExpired(f"Sluice-Deadline {deadline} has passed; sign the call again", "Sluice-Deadline")
    if deadline > now + max_deadline_seconds:
        raise errors.DeadlineTooFar(
            f"Sluice-Deadline is more than {max_deadline_seconds} s ahead; use a nearer deadline", "Sluice-Deadline"
        )
    raw_sig = headers[SIGNATURE].strip()
    try:
        signature = bytes.fromhex(raw_sig[2:] if raw_sig.startswith("0x") else raw_sig)
    except ValueError:
        raise errors.InvalidSignature(f"Sluice-Signature is not hex; {SIGNING_HINT}", "Sluice-Signature") from None
    body_hash = keccak(body)
    payer = "0x" + payer[2:].lower()  # addresses travel lower-case inside the service; checksums cost ~50 µs
    digest = typed_digest(separator, Redemption(payer, body_hash, max_cost, nonce, deadline).struct_hash())
    try:
        spender = "0x" + recover_address(digest, signature).hex()
    except SignatureError as exc:
        raise errors.InvalidSignature(f"Sluice-Signature is invalid: {exc}; {SIGNING_HINT}",
                                      "Sluice-Signature") from None
    return VerifiedCall(spender, payer, max_cost, nonce, deadline, signature, body, body_hash, digest)
