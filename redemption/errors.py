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

    def __init__(self, message: str, param: str | None = None, *, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
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
    code = "insufficient_escrow"


class InsufficientEscrow(PaymentRequired):
    code = "insufficient_escrow"


class InsufficientBudget(PaymentRequired):
    code = "insufficient_budget"


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


class NoBudget(Forbidden):
    code = "no_budget"


class NotAuditor(Forbidden):
    code = "not_auditor"


class NotOperator(Forbidden):
    code = "not_operator"


class KeyExpired(Forbidden):
    code = "key_expired"


# 429: a key's limits (the payer's key policy), with Retry-After
class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int, param: str | None = None) -> None:
        super().__init__(message, param, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class TokenRateLimited(RateLimited):
    code = "token_rate_limited"


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


class SettlementOverdue(Unavailable):
    code = "settlement_overdue"


class DurationExceeded(ApiError):
    status = 504
    type = "server_error"
    code = "duration_exceeded"


class UpstreamError(ApiError):
    status = 502
    type = "server_error"
    code = "upstream_error"


HOLD_REFUSALS: dict[str, type[ApiError]] = {
    "nonce_replayed": NonceReplayed,
    "no_budget": NoBudget,
    "paused": TokenPaused,
    "not_allowlisted": NotAllowlisted,
    "suspended": Suspended,
    "settlement_overdue": SettlementOverdue,
    "key_expired": KeyExpired,
    "insufficient_escrow": InsufficientEscrow,
    "insufficient_budget": InsufficientBudget,
}

HOLD_MESSAGES: dict[str, str] = {
    "no_budget": (
        "Sluice-Payer gave the signing key no budget (or cut it to zero): ask the payer for one "
        "(`sluice wallet budget set SPENDER AMOUNT`), or check that Sluice-Payer, the signing key, the body and "
        "the chain id and verifying contract from /.well-known/sluice.json are the ones you meant"
    ),
    "nonce_replayed": "this (signer, nonce) was already used; sign the call again with a fresh nonce",
    "paused": "the compute token is paused by the operator; try again later",
    "not_allowlisted": "the payer is not allowlisted; ask the operator to allowlist it",
    "suspended": "the account is suspended for unpaid usage; the payer must top up and ask the operator to clear it",
    "settlement_overdue": (
        "settlement is behind: usage older than the settlement bound is not burned yet, so no new call is "
        "admitted until it is; nothing was charged, retry shortly"
    ),
    "key_expired": (
        "the payer's policy for this key has expired (its expires_at has passed); ask the payer to extend it "
        "(`sluice wallet keys limit SPENDER --expires ...`) or use another key"
    ),
    "insufficient_escrow": (
        "this call needs a hold of {needed} base units but the payer's escrow, less its pending withdrawal, open "
        "holds and unsettled usage, has {available}; deposit more (`sluice wallet deposit` or `sluice wallet buy`), "
        "or lower max_tokens or Sluice-Max-Cost"
    ),
    "insufficient_budget": (
        "this call needs a hold of {needed} base units but this key's budget from the payer, less pending cuts, "
        "open holds and unsettled usage, has {available}; ask the payer to raise it "
        "(`sluice wallet budget set SPENDER AMOUNT`), or lower max_tokens or Sluice-Max-Cost"
    ),
}


RATE_MESSAGES: dict[str, str] = {
    "rate_limited": (
        "this key may make {limit} calls per {window} s window for this payer (the payer's key policy) and has "
        "used them; retry after {retry_after} s (Retry-After), or ask the payer to raise the limit "
        "(`sluice wallet keys limit SPENDER --rpm N`); nothing was charged"
    ),
    "token_rate_limited": (
        "this call may use up to {needed} model tokens (prompt bound + max_tokens) but this key has {left} of its "
        "{limit} tokens per {window} s window left for this payer (the payer's key policy); retry after "
        "{retry_after} s (Retry-After), lower max_tokens, or ask the payer to raise the limit "
        "(`sluice wallet keys limit SPENDER --tpm N`); nothing was charged"
    ),
}


def hold_refusal(outcome: str, rate_window_seconds: int = 60) -> ApiError:
    """The error for a `reserve_hold` refusal ('code', 'code needed available', or a rate limit's figures)."""
    code, *figures = outcome.split()
    if code == "rate_limited":
        retry, limit = figures
        return RateLimited(RATE_MESSAGES[code].format(limit=limit, window=rate_window_seconds, retry_after=retry),
                           int(retry))
    if code == "token_rate_limited":
        retry, needed, used, limit = figures
        left = max(int(limit) - int(used), 0)
        return TokenRateLimited(RATE_MESSAGES[code].format(needed=needed, left=left, limit=limit,
                                                           window=rate_window_seconds, retry_after=retry),
                                int(retry), "max_tokens")
    message = HOLD_MESSAGES[code]
    if figures:
        message = message.format(needed=figures[0], available=figures[1])
    return HOLD_REFUSALS[code](message)
