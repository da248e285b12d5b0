"""Key policies: a payer names its developer keys and limits each one (docs/interfaces.md).

Every request is signed like a billable call (the five Sluice-* headers over the body, Sluice-Max-Cost 0)
and the signer must be the payer named in Sluice-Payer (403 `not_account_holder`), allowlisted
(403 `not_allowlisted`). The signature covers the body, not the method or path, so a change's body names its
key (`"spender"`, the path's address; 400 otherwise) and a DELETE is never empty-bodied: a signed change cannot
be sent to another key, nor a signed (empty-bodied) read sent as a delete. The nonce is consumed once the payer
is authorized. The limits are enforced inside `reserve_hold`, in the hold's own transaction.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from eth_utils.address import is_hex_address, to_checksum_address
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from redemption import errors
from redemption.api.deps import State
from redemption.audit.auth import verify_reader
from redemption.auth import VerifiedCall, read_body, verify_headers
from redemption.models import KeyDeleted, KeyList, KeyPolicy, KeyPolicyDelete, KeyPolicyUpdate
from redemption.state import ServiceState

router = APIRouter(tags=["keys"])


def _address(value: str, name: str) -> str:
    if not is_hex_address(value) or not value.startswith("0x"):
        raise errors.InvalidRequest(f"{name} must be a 0x address, got {value[:80]!r}", name)
    return to_checksum_address(value)


async def _verify_payer(request: Request, state: ServiceState, body: bytes) -> VerifiedCall:
    """The signed change's headers; the signer must be the allowlisted payer it names."""
    settings = state.settings
    call = verify_headers(request.headers, body, state.domains.redemption, settings.max_deadline_seconds)
    if call.max_cost != 0:
        raise errors.InvalidHeader("key policy changes cost nothing: sign Sluice-Max-Cost 0", "Sluice-Max-Cost")
    if call.spender != call.payer:
        raise errors.NotAccountHolder(
            f"{call.spender} may not change the key policies of {to_checksum_address(call.payer)}: only the payer "
            "itself signs them (a developer key cannot set its own limits)", "Sluice-Payer")
    figures = await state.chain_figures(call.payer, call.payer)
    allowlisted = figures.allowlisted if figures is not None else await state.store.is_allowlisted(call.payer)
    if not allowlisted:
        raise errors.NotAllowlisted(
            "the payer is not allowlisted; key policies are set by allowlisted payers for the keys they fund")
    if not await state.store.consume_nonce(call.spender, call.nonce, call.deadline):
        raise errors.NonceReplayed("this (signer, nonce) was already used; sign the call again with a fresh nonce",
                                   "Sluice-Nonce")
    return call


def _spender_for(call: VerifiedCall, spender: str) -> str:
    if spender.lower() == call.payer:
        raise errors.InvalidRequest("a payer's own calls have no key policy: name one of its developer keys",
                                    "spender")
    return spender


def _payload(body: bytes, fields: str) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.MalformedJson(f"the request body is not valid JSON ({exc}); send one JSON object") from None
    if not isinstance(payload, dict):
        raise errors.MalformedJson(f"the request body is not a JSON object; send one JSON object with {fields}")
    return payload


def _target(payload: dict[str, Any], path: str, method: str) -> str:
    """The key the signed body names, which must be the path's: the signature covers the body, not the
    method or path, so without it a signed change (or a signed empty-bodied read) could be sent to another key."""
    spender = _address(path, "spender")
    named = payload.get("spender")
    if named is None:
        raise errors.InvalidRequest(
            f"{method} /v1/keys/{{spender}} names its key in the signed body: add \"spender\": \"{spender}\" "
            "to the body and sign it again", "spender")
    if not isinstance(named, str) or named.lower() != spender.lower():
        raise errors.InvalidRequest(
            f"the body's spender {str(named)[:80]!r} is not the key in the path ({spender}): sign a body whose "
            "spender is the key you mean to change, and send it to that key's path", "spender")
    return spender


def _invalid(exc: ValidationError, what: str) -> errors.InvalidRequest:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or None
    return errors.InvalidRequest(f"invalid {what}: {where}: {first['msg']}", where)


def _changes(payload: dict[str, Any]) -> dict[str, Any]:
    """The fields a PUT sets, validated (absent: unchanged, null: cleared)."""
    try:
        update = KeyPolicyUpdate.model_validate(payload)
    except ValidationError as exc:
        raise _invalid(exc, "key policy") from None
    return update.model_dump(include=set(payload) - {"spender"})


@router.put("/v1/keys/{spender}", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/KeyPolicyUpdate"}}}}})
async def put_key(request: Request, state: State, spender: str) -> KeyPolicy:
    """Name a developer key and set its limits (signed by the payer over this body, which names the key as
    `spender`; absent fields stay, null clears). Limits count per SLUICE_RATE_WINDOW_SECONDS window (60: per
    minute)."""
    body = await read_body(request, state.settings.max_body_bytes)
    payload = _payload(body, "spender and any of label, requests_per_minute, tokens_per_minute, expires_at")
    spender = _target(payload, spender, "PUT")
    call = await _verify_payer(request, state, body)
    spender = _spender_for(call, spender)
    return await state.store.put_policy(call.payer, spender, _changes(payload), int(time.time()))


@router.delete("/v1/keys/{spender}", openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/KeyPolicyDelete"}}}}})
async def delete_key(request: Request, state: State, spender: str) -> KeyDeleted:
    """Drop a developer key's name and limits (signed by the payer over the body `{"spender": key}`); its budget
    stays on chain."""
    body = await read_body(request, state.settings.max_body_bytes)
    if not body:
        raise errors.InvalidRequest(
            f"DELETE /v1/keys/{{spender}} carries the body {{\"spender\": \"{_address(spender, 'spender')}\"}}: "
            "send and sign that body (an empty body is refused, so a signed read cannot be sent as a delete)",
            "spender")
    payload = _payload(body, "spender")
    spender = _target(payload, spender, "DELETE")
    try:
        KeyPolicyDelete.model_validate(payload)
    except ValidationError as exc:
        raise _invalid(exc, "key policy delete") from None
    call = await _verify_payer(request, state, body)
    spender = _spender_for(call, spender)
    return KeyDeleted(deleted=await state.store.delete_policy(call.payer, spender))


@router.get("/v1/keys")
async def list_keys(request: Request, state: State, payer: str | None = Query(None, max_length=42)) -> KeyList:
    """The payer's developer keys: names, limits and budgets (a signed read by the payer, or an auditor)."""
    if payer is None:
        payer = request.headers.get("sluice-payer", "")
    payer = _address(payer, "payer")
    await verify_reader(request, roles=state.auditors, store=state.store, separator=state.domains.redemption,
                        max_deadline_seconds=state.settings.max_deadline_seconds, holders=(payer,))
    return KeyList(payer=payer, keys=await state.store.policies(payer))
