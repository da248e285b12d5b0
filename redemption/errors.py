"""The redemption service's exception tree and its one mapping onto HTTP.

Every refusal is an `ApiError` subclass with a status, an OpenAI error `type` and
a stable `code`; `error_body` renders the OpenAI envelope
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    status: ClassVar[int] = 400
    type: ClassVar[str] = "invalid_request_error"
    code: ClassVar[str] = "invalid_request"

    def __init__(self, message: str, param: str | None = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code  # type: ignore[misc]

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# 400 / 413 / 404: malformed input
class MalformedJson(ApiError):
    code = "invalid_json"


class InvalidRequest(ApiError):
    code = "invalid_request"


class InvalidHeader(ApiError):
    code = "invalid_header"


class BodyTooLarge(ApiError):
    status = 413
    code = "body_too_large"


class UnknownModel(ApiError):
    status = 404
    code = "model_not_found"


class NotFound(ApiError):
    status = 404
    code = "not_found"


# The node side and account data (Invariant 8; DESIGN.md "signed the same way")
class InvalidReceipt(ApiError):
    code = "invalid_receipt"


class RequestTimeout(ApiError):
    status = 408
    code = "request_timeout"


class ReceiptNotAccepted(ApiError):
    """A receipt that meters nothing: late, second, or for a job no open hold of this node has. One answer for
    all of them, so a node learns nothing about other nodes' jobs."""

    status = 409
    code = "receipt_not_accepted"


class ReceiptRefused(ApiError):
    status = 422
    code = "receipt_refused"


class NodeRefused(ApiError):
    """A node NodeRegistry does not list as active, or one speaking for an endpoint not its own."""

    status = 403
    type = "permission_error"
    code = "node_not_registered"


class NotAccountHolder(ApiError):
    status = 403
    type = "permission_error"
    code = "not_account_holder"


# 401: the signature
class AuthError(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_signature"


class MissingSignature(AuthError):
    code = "missing_signature"


class InvalidSignature(AuthError):
    code = "invalid_signature"


class SignatureExpired(AuthError):
    code = "signature_expired"


class DeadlineTooFar(AuthError):
    code = "deadline_too_far"


class NonceReplayed(AuthError):
    code = "nonce_replayed"


# 402: money
class PaymentRequired(ApiError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_balance"


class InsufficientBalance(PaymentRequired):
    code = "insufficient_balance"


class InsufficientAllowance(PaymentRequired):
    code = "insufficient_allowance"


class MaxCostTooLow(PaymentRequired):
    code = "max_cost_too_low"


# 403: permission
class Forbidden(ApiError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class NotAllowlisted(Forbidden):
    code = "not_allowlisted"


class TokenPaused(Forbidden):
    code = "paused"


class Suspended(Forbidden):
    code = "suspended"


class NotAuditor(Forbidden):
    code = "not_auditor"


# 503 / 502
class Unavailable(ApiError):
    status = 503
    type = "server_error"
    code = "unavailable"


class NoCapacity(Unavailable):
    code = "no_capacity"


class ChainUnavailable(Unavailable):
    code = "chain_unavailable"


class DatabaseUnavailable(Unavailable):
    code = "database_unavailable"


class UpstreamError(ApiError):
    status = 502
    type = "server_error"
    code = "upstream_error"


HOLD_REFUSALS: dict[str, type[ApiError]] = {
    "nonce_replayed": NonceReplayed,
    "unknown_signer": InvalidSignature,
    "paused": TokenPaused,
    "not_allowlisted": NotAllowlisted,
    "suspended": Suspended,
    "insufficient_balance": InsufficientBalance,
    "insufficient_allowance": InsufficientAllowance,
}

HOLD_MESSAGES: dict[str, str] = {
    "unknown_signer": (
        "the signature recovers to a key that is neither Sluice-Payer nor approved by it: check the signing key, "
        "the body, and the chain id and verifying contract from /.well-known/sluice.json"
    ),
    "nonce_replayed": "this (signer, nonce) was already used; sign the call again with a fresh nonce",
    "paused": "the compute token is paused by the operator; try again later",
    "not_allowlisted": "the payer is not allowlisted; ask the operator to allowlist it",
    "suspended": "the account is suspended for unpaid usage; the payer must top up and ask the operator to clear it",
    "insufficient_balance": (
        "the payer's balance, less open holds and unsettled usage, does not cover this call's worst-case cost; "
        "top up the payer's balance, or lower max_tokens or Sluice-Max-Cost"
    ),
    "insufficient_allowance": (
        "the payer's allowance to this key, less open holds and unsettled usage, does not cover this call's "
        "worst-case cost; ask the payer to approve a larger budget, or lower max_tokens or Sluice-Max-Cost"
    ),
}
