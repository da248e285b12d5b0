"""ComputeToken behaviour: roles, the allowlist, pause, EIP-2612 permit and Transfer events.

Every refusal is asserted by its exact custom error and values, every event by its exact args.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eth_account import Account
from eth_account.messages import encode_typed_data

from ledger.chain.client import Ledger, role_id
from ledger.units import ONE_TOKEN
from tests.support.assertions import ZERO_ADDRESS, events, latest_timestamp, reverts

if TYPE_CHECKING:
    from tests.support.ledger import Actors









# -- mint ------------------------------------------------------------------------------------
def test_mint_by_minter_emits_transfer_from_zero(ledger: Ledger, actors: Actors) -> None:
    ledger.set_allowlisted(actors.operator, actors.enterprise.address, True)
    supply = ledger.total_supply()

    tx = ledger.mint(actors.operator, actors.enterprise.address, 7 * ONE_TOKEN + 3)

    assert events(ledger.token.events.Transfer, tx) == [
        {"from": ZERO_ADDRESS, "to": actors.enterprise.address, "value": 7 * ONE_TOKEN + 3}
    ]
    assert ledger.balance_of(actors.enterprise.address) == 7 * ONE_TOKEN + 3
    assert ledger.total_supply() == supply + 7 * ONE_TOKEN + 3


def test_mint_without_minter_role_is_refused(ledger: Ledger, actors: Actors) -> None:
    ledger.set_allowlisted(actors.operator, actors.enterprise.address, True)

    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("MINTER_ROLE")):
        ledger.mint(actors.other, actors.enterprise.address, ONE_TOKEN)
    # The settler holds SETTLER_ROLE on Settlement, which gives it nothing on the token.
    with reverts("AccessControlUnauthorizedAccount", account=actors.settler.address, neededRole=role_id("MINTER_ROLE")):
        ledger.mint(actors.settler, actors.enterprise.address, ONE_TOKEN)
    assert ledger.balance_of(actors.enterprise.address) == 0


def test_granted_minter_can_mint_and_revoked_cannot(ledger: Ledger, actors: Actors) -> None:
    ledger.set_allowlisted(actors.operator, actors.enterprise.address, True)
    ledger.grant_role(actors.operator, "MINTER_ROLE", actors.other.address)

    ledger.mint(actors.other, actors.enterprise.address, 5)
    ledger.revoke_role(actors.operator, "MINTER_ROLE", actors.other.address)

    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("MINTER_ROLE")):
        ledger.mint(actors.other, actors.enterprise.address, 5)
    assert ledger.balance_of(actors.enterprise.address) == 5


def test_only_admin_grants_roles(ledger: Ledger, actors: Actors) -> None:
    with reverts(
        "AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("DEFAULT_ADMIN_ROLE")
    ):
        ledger.grant_role(actors.other, "MINTER_ROLE", actors.other.address)
    assert not ledger.has_role("MINTER_ROLE", actors.other.address)


def test_deployment_wires_roles(ledger: Ledger, actors: Actors) -> None:
    assert ledger.has_role("MINTER_ROLE", ledger.sale.address)
    assert ledger.has_role("MINTER_ROLE", actors.operator.address)
    assert ledger.has_role("REDEEMER_ROLE", ledger.settlement.address)
    assert not ledger.has_role("REDEEMER_ROLE", actors.operator.address)
    assert ledger.has_role("SETTLER_ROLE", actors.settler.address)
    assert not ledger.has_role("SETTLER_ROLE", actors.operator.address)
    for role in ("COMPLIANCE_ROLE", "PAUSER_ROLE", "DEFAULT_ADMIN_ROLE"):
        assert ledger.has_role(role, actors.operator.address)


def test_mint_to_non_allowlisted_is_refused(ledger: Ledger, actors: Actors) -> None:
    with reverts("ComputeTokenNotAllowlisted", account=actors.developer.address):
        ledger.mint(actors.operator, actors.developer.address, ONE_TOKEN)
    assert ledger.balance_of(actors.developer.address) == 0


# -- transfers and the allowlist ---------------------------------------------------------------
def test_transfer_between_allowlisted(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)

    tx = ledger.transfer(funded.enterprise, funded.developer.address, 40 * ONE_TOKEN)

    assert events(ledger.token.events.Transfer, tx) == [
        {"from": funded.enterprise.address, "to": funded.developer.address, "value": 40 * ONE_TOKEN}
    ]
    assert ledger.balance_of(funded.enterprise.address) == 960 * ONE_TOKEN
    assert ledger.balance_of(funded.developer.address) == 40 * ONE_TOKEN


def test_transfer_to_non_allowlisted_is_refused(ledger: Ledger, funded: Actors) -> None:
    with reverts("ComputeTokenNotAllowlisted", account=funded.developer.address):
        ledger.transfer(funded.enterprise, funded.developer.address, ONE_TOKEN)
    assert ledger.balance_of(funded.enterprise.address) == 1_000 * ONE_TOKEN


def test_transfer_from_delisted_account_is_refused(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)
    ledger.set_allowlisted(funded.operator, funded.enterprise.address, False)

    with reverts("ComputeTokenNotAllowlisted", account=funded.enterprise.address):
        ledger.transfer(funded.enterprise, funded.developer.address, ONE_TOKEN)
    assert ledger.balance_of(funded.enterprise.address) == 1_000 * ONE_TOKEN


def test_transfer_from_by_spender_checks_the_owner_listing(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)
    ledger.approve(funded.enterprise, funded.developer.address, 10 * ONE_TOKEN)
    ledger.set_allowlisted(funded.operator, funded.enterprise.address, False)

    transfer_from = ledger.token.functions.transferFrom(funded.enterprise.address, funded.developer.address, ONE_TOKEN)
    with reverts("ComputeTokenNotAllowlisted", account=funded.enterprise.address):
        ledger._transact(funded.developer, transfer_from)
    assert ledger.allowance(funded.enterprise.address, funded.developer.address) == 10 * ONE_TOKEN


def test_delisted_holder_can_still_burn(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.enterprise.address, False)

    tx = ledger.burn(funded.enterprise, ONE_TOKEN)

    assert events(ledger.token.events.Transfer, tx) == [
        {"from": funded.enterprise.address, "to": ZERO_ADDRESS, "value": ONE_TOKEN}
    ]


def test_transfer_above_balance_is_refused(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)

    with reverts(
        "ERC20InsufficientBalance",
        sender=funded.enterprise.address,
        balance=1_000 * ONE_TOKEN,
        needed=1_000 * ONE_TOKEN + 1,
    ):
        ledger.transfer(funded.enterprise, funded.developer.address, 1_000 * ONE_TOKEN + 1)


def test_set_allowlisted_emits_event(ledger: Ledger, actors: Actors) -> None:
    tx = ledger.set_allowlisted(actors.operator, actors.developer.address, True)
    assert events(ledger.token.events.AllowlistUpdated, tx) == [{"account": actors.developer.address, "allowed": True}]
    assert ledger.is_allowlisted(actors.developer.address)

    tx = ledger.set_allowlisted(actors.operator, actors.developer.address, False)
    assert events(ledger.token.events.AllowlistUpdated, tx) == [{"account": actors.developer.address, "allowed": False}]
    assert not ledger.is_allowlisted(actors.developer.address)


def test_only_compliance_role_sets_allowlist(ledger: Ledger, actors: Actors) -> None:
    with reverts(
        "AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("COMPLIANCE_ROLE")
    ):
        ledger.set_allowlisted(actors.other, actors.other.address, True)
    assert not ledger.is_allowlisted(actors.other.address)

    ledger.grant_role(actors.operator, "COMPLIANCE_ROLE", actors.other.address)
    tx = ledger.set_allowlisted(actors.other, actors.other.address, True)
    assert events(ledger.token.events.AllowlistUpdated, tx) == [{"account": actors.other.address, "allowed": True}]


# -- pause -----------------------------------------------------------------------------------
def test_pause_stops_mint_transfer_and_burn(ledger: Ledger, funded: Actors) -> None:
    ledger.set_allowlisted(funded.operator, funded.developer.address, True)

    tx = ledger.pause(funded.operator)
    assert events(ledger.token.events.Paused, tx) == [{"account": funded.operator.address}]
    assert ledger.paused()

    with reverts("EnforcedPause"):
        ledger.mint(funded.operator, funded.enterprise.address, ONE_TOKEN)
    with reverts("EnforcedPause"):
        ledger.transfer(funded.enterprise, funded.developer.address, ONE_TOKEN)
    with reverts("EnforcedPause"):
        ledger.burn(funded.enterprise, ONE_TOKEN)
    with reverts("EnforcedPause"):
        ledger.pause(funded.operator)
    assert ledger.balance_of(funded.enterprise.address) == 1_000 * ONE_TOKEN

    tx = ledger.unpause(funded.operator)
    assert events(ledger.token.events.Unpaused, tx) == [{"account": funded.operator.address}]
    ledger.transfer(funded.enterprise, funded.developer.address, ONE_TOKEN)
    assert ledger.balance_of(funded.developer.address) == ONE_TOKEN


def test_unpause_when_not_paused_is_refused(ledger: Ledger, actors: Actors) -> None:
    with reverts("ExpectedPause"):
        ledger.unpause(actors.operator)


def test_only_pauser_role_pauses_and_unpauses(ledger: Ledger, actors: Actors) -> None:
    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("PAUSER_ROLE")):
        ledger.pause(actors.other)
    assert not ledger.paused()

    ledger.pause(actors.operator)
    with reverts("AccessControlUnauthorizedAccount", account=actors.other.address, neededRole=role_id("PAUSER_ROLE")):
        ledger.unpause(actors.other)
    assert ledger.paused()


# -- permit ----------------------------------------------------------------------------------
def permit_signer_for(
    ledger: Ledger, owner: str, spender: str, value: int, nonce: int, deadline: int, v: int, r: bytes, s: bytes
) -> str:
    """The address ECDSA recovers from (v, r, s) over the Permit with these fields (what OZ compares)."""
    fields = ledger.token.functions.eip712Domain().call()
    domain = {"name": fields[1], "version": fields[2], "chainId": fields[3], "verifyingContract": fields[4]}
    types = {
        "Permit": [
            {"name": "owner", "type": "address"},
            {"name": "spender", "type": "address"},
            {"name": "value", "type": "uint256"},
            {"name": "nonce", "type": "uint256"},
            {"name": "deadline", "type": "uint256"},
        ]
    }
    message = {"owner": owner, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline}
    signable = encode_typed_data(domain, types, message)
    return str(Account.recover_message(signable, vrs=(v, r, s)))


def test_permit_domain_is_the_token(ledger: Ledger) -> None:
    fields = ledger.token.functions.eip712Domain().call()
    assert tuple(fields[1:5]) == ("Sluice Compute Token", "1", ledger.w3.eth.chain_id, ledger.token.address)


def test_valid_permit_sets_allowance(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise, funded.developer.address
    deadline = latest_timestamp(ledger) + 3600
    v, r, s = ledger.sign_permit(ledger.token, owner, spender, 25 * ONE_TOKEN, deadline)

    # Anyone may submit the permit; the relayer here is the spender itself.
    tx = ledger.permit(funded.developer, owner.address, spender, 25 * ONE_TOKEN, deadline, v, r, s)

    assert events(ledger.token.events.Approval, tx) == [
        {"owner": owner.address, "spender": spender, "value": 25 * ONE_TOKEN}
    ]
    assert ledger.allowance(owner.address, spender) == 25 * ONE_TOKEN
    assert ledger.token.functions.nonces(owner.address).call() == 1


def test_expired_permit_is_refused(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise, funded.developer.address
    deadline = latest_timestamp(ledger) - 1
    v, r, s = ledger.sign_permit(ledger.token, owner, spender, ONE_TOKEN, deadline)

    with reverts("ERC2612ExpiredSignature", deadline=deadline):
        ledger.permit(funded.developer, owner.address, spender, ONE_TOKEN, deadline, v, r, s)
    assert ledger.allowance(owner.address, spender) == 0
    assert ledger.token.functions.nonces(owner.address).call() == 0


def test_replayed_permit_is_refused(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise, funded.developer.address
    deadline = latest_timestamp(ledger) + 3600
    v, r, s = ledger.sign_permit(ledger.token, owner, spender, 5 * ONE_TOKEN, deadline)
    ledger.permit(funded.developer, owner.address, spender, 5 * ONE_TOKEN, deadline, v, r, s)
    ledger.approve(owner, spender, 0)

    # OZ 5.x hashes the permit with the owner's *current* nonce (now 1), so the replayed
    # signature recovers to an unrelated address: ERC2612InvalidSigner(that address, owner).
    recovered = permit_signer_for(ledger, owner.address, spender, 5 * ONE_TOKEN, 1, deadline, v, r, s)
    assert recovered != owner.address
    with reverts("ERC2612InvalidSigner", signer=recovered, owner=owner.address):
        ledger.permit(funded.developer, owner.address, spender, 5 * ONE_TOKEN, deadline, v, r, s)
    assert ledger.allowance(owner.address, spender) == 0


def test_permit_signed_by_another_key_is_refused(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise.address, funded.developer.address
    deadline = latest_timestamp(ledger) + 3600
    # The developer signs a permit claiming to be the enterprise (nonce 0 as the token expects).
    forged = Account.from_key(funded.developer.key)
    fields = ledger.token.functions.eip712Domain().call()
    domain = {"name": fields[1], "version": fields[2], "chainId": fields[3], "verifyingContract": fields[4]}
    types = {
        "Permit": [
            {"name": "owner", "type": "address"},
            {"name": "spender", "type": "address"},
            {"name": "value", "type": "uint256"},
            {"name": "nonce", "type": "uint256"},
            {"name": "deadline", "type": "uint256"},
        ]
    }
    message = {"owner": owner, "spender": spender, "value": ONE_TOKEN, "nonce": 0, "deadline": deadline}
    signed = forged.sign_typed_data(domain, types, message)

    with reverts("ERC2612InvalidSigner", signer=funded.developer.address, owner=owner):
        ledger.permit(
            funded.developer,
            owner,
            spender,
            ONE_TOKEN,
            deadline,
            signed.v,
            signed.r.to_bytes(32, "big"),
            signed.s.to_bytes(32, "big"),
        )


def test_permit_with_tampered_value_is_refused(ledger: Ledger, funded: Actors) -> None:
    owner, spender = funded.enterprise, funded.developer.address
    deadline = latest_timestamp(ledger) + 3600
    v, r, s = ledger.sign_permit(ledger.token, owner, spender, ONE_TOKEN, deadline)

    recovered = permit_signer_for(ledger, owner.address, spender, 2 * ONE_TOKEN, 0, deadline, v, r, s)
    with reverts("ERC2612InvalidSigner", signer=recovered, owner=owner.address):
        ledger.permit(funded.developer, owner.address, spender, 2 * ONE_TOKEN, deadline, v, r, s)


# -- redemption and burns ----------------------------------------------------------------------
def test_redeem_batch_only_by_redeemer_role(ledger: Ledger, funded: Actors) -> None:
    items = [(funded.enterprise.address, funded.enterprise.address, ONE_TOKEN)]
    for caller in (funded.operator, funded.settler, funded.enterprise):
        with reverts("AccessControlUnauthorizedAccount", account=caller.address, neededRole=role_id("REDEEMER_ROLE")):
            ledger._transact(caller, ledger.token.functions.redeemBatch(items))
    assert ledger.balance_of(funded.enterprise.address) == 1_000 * ONE_TOKEN


def test_redeem_batch_by_granted_redeemer_burns(ledger: Ledger, funded: Actors) -> None:
    ledger.grant_role(funded.operator, "REDEEMER_ROLE", funded.other.address)
    items = [(funded.enterprise.address, funded.enterprise.address, 3 * ONE_TOKEN)]
    supply = ledger.total_supply()

    tx = ledger._transact(funded.other, ledger.token.functions.redeemBatch(items))

    assert events(ledger.token.events.Transfer, tx) == [
        {"from": funded.enterprise.address, "to": ZERO_ADDRESS, "value": 3 * ONE_TOKEN}
    ]
    assert ledger.total_supply() == supply - 3 * ONE_TOKEN


def test_burn_emits_transfer_to_zero(ledger: Ledger, funded: Actors) -> None:
    supply = ledger.total_supply()

    tx = ledger.burn(funded.enterprise, 2 * ONE_TOKEN + 1)

    assert events(ledger.token.events.Transfer, tx) == [
        {"from": funded.enterprise.address, "to": ZERO_ADDRESS, "value": 2 * ONE_TOKEN + 1}
    ]
    assert ledger.balance_of(funded.enterprise.address) == 998 * ONE_TOKEN - 1
    assert ledger.total_supply() == supply - 2 * ONE_TOKEN - 1


def test_burn_from_spends_allowance(ledger: Ledger, funded: Actors) -> None:
    ledger.approve(funded.enterprise, funded.developer.address, 10 * ONE_TOKEN)

    tx = ledger.burn_from(funded.developer, funded.enterprise.address, 4 * ONE_TOKEN)

    assert events(ledger.token.events.Transfer, tx) == [
        {"from": funded.enterprise.address, "to": ZERO_ADDRESS, "value": 4 * ONE_TOKEN}
    ]
    assert ledger.allowance(funded.enterprise.address, funded.developer.address) == 6 * ONE_TOKEN
    with reverts(
        "ERC20InsufficientAllowance", spender=funded.developer.address, allowance=6 * ONE_TOKEN, needed=7 * ONE_TOKEN
    ):
        ledger.burn_from(funded.developer, funded.enterprise.address, 7 * ONE_TOKEN)
